"""`explain`: why is a run INVALID? Per sample beyond tolerance, how close its routing came to a tie.

Two implementations that round differently choose a different k-th expert when two
biased router scores are within their rounding of each other, and that token's MoE output then
differs by a whole expert. Over thousands of prompts such near-ties happen, so an fp32 engine can
miss the job's 1e-3 on a few samples while being right. This command tells the two cases apart:
it recomputes the reference with the router margins (k-th minus (k+1)-th biased score of every
token in every MoE layer) for the samples beyond tolerance and, for contrast, as many that passed.
A broken engine fails samples whose routing is far from any tie.

bf16 and fp16 runs (the record's dtype, or --dtype) are judged by their own gate instead
(harness.jobs.gate: the median sample's KL against plain torch in that dtype). A run that passes
it has nothing to explain; one that fails it has more than half its samples past what rounding
and a few routing near-ties do to plain torch, so the per-sample near-tie analysis is not run.
"""
from __future__ import annotations

import argparse

import numpy as np

from harness.errors import UsageError
from harness.jobs.gate import judge, low_precision
from harness.jobs.prepare import gate_calibration

DEFAULT_NEAR_TIE = 1e-5


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="tell routing near-ties from engine bugs in an INVALID run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="the checkpoint folder the run used")
    p.add_argument("--data", required=True, metavar="INPUTS_BIN", help="the job's inputs.bin")
    p.add_argument("--answers", required=True, metavar="ANSWERS_BIN", help="the reference logits it was checked against")
    p.add_argument("--outputs", required=True, metavar="OUTPUTS_BIN",
                   help="the engine's logits (`run --outputs`); rows in sample order")
    p.add_argument("--record", metavar="RECORD_JSON",
                   help="the run's record (records/<variant>.json): its ran_indices say which samples the "
                        "outputs' rows are when a time budget cut the run short (default: rows 0..n-1), "
                        "its dtype which gate judges them")
    p.add_argument("--dtype", help="the engine dtype that wrote the outputs: bf16/fp16 are judged by the "
                                   "calibrated gate, others by --tol (default: the record's, else fp32)")
    p.add_argument("--tol", type=float, default=1e-3, help="validation tolerance (default: %(default)g)")
    p.add_argument("--near-tie", type=float, default=DEFAULT_NEAR_TIE,
                   help="a router margin below this counts as a near-tie (default: %(default)g)")
    p.add_argument("--max-samples", type=int, default=16,
                   help="invalid samples to examine, and as many valid ones for contrast (default: %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where the reference runs: fp32 on a GPU, fp64 on the CPU (default: auto)")
    p.set_defaults(func=main)


def sample_margins(ckpt, tokens: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt: the smallest router margin over every MoE layer and position, the same at the
    last position only, and the (layer, position) of the smallest."""
    import torch

    from harness.engines.reference import reference_forward
    dtype = torch.float32 if device == "cuda" else torch.float64
    out = reference_forward(ckpt, tokens, dtype=dtype, device=device, debug=True)
    layers = sorted(out.router_margins)
    m = torch.stack([out.router_margins[i] for i in layers], dim=1).double().cpu().numpy()  # [B, layers, S]
    flat = m.reshape(len(m), -1)
    where = flat.argmin(1)
    at = np.array([(layers[w // m.shape[2]], w % m.shape[2]) for w in where])
    return flat.min(1), m[:, :, -1].min(1), at


def _read_record(record_path: str) -> dict:
    import json
    from pathlib import Path
    try:
        return json.loads(Path(record_path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--record {record_path}: not a readable run record ({e})") from None


def _ran_indices(record: dict, n: int) -> np.ndarray:
    ran = record.get("ran_indices") or []
    if len(ran) != n:
        raise UsageError(f"--record lists {len(ran)} samples that ran, the outputs hold {n}: give the record of "
                         "the run that wrote them")
    return np.asarray(ran, dtype=np.int64)


def main(args: argparse.Namespace) -> int:
    import torch

    from harness.checkpoints.open import open_checkpoint
    from harness.jobs.files import read_inputs, read_logits, validate
    ckpt = open_checkpoint(args.model)
    tokens, answers, outputs = read_inputs(args.data), read_logits(args.answers), read_logits(args.outputs)
    if len(outputs) > len(tokens) or answers.shape[0] < len(outputs):
        raise UsageError(f"outputs hold {len(outputs)} samples, inputs {len(tokens)}, answers {len(answers)}: "
                         "give the files of one job")
    n = len(outputs)
    record = _read_record(args.record) if args.record else {}
    ran = _ran_indices(record, n) if args.record else np.arange(n)  # job sample of each output row
    tokens, answers = tokens[ran], answers[ran]
    if args.device == "gpu" and not torch.cuda.is_available():
        raise UsageError("--device gpu: torch sees no GPU; use --device cpu")
    device = "cuda" if args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    dtype = args.dtype or record.get("dtype") or "fp32"
    if low_precision(dtype):
        return _explain_low_precision(args, dtype, outputs, answers, ran, device)
    v = validate(outputs, answers, args.tol)
    print(v)
    if v.valid:
        print("nothing to explain")
        return 0
    bad = list(v.invalid_rows[:args.max_samples])
    good = [i for i in np.linspace(0, n - 1, num=min(n, 4 * len(bad) + 8)).astype(int) if i not in v.invalid_rows]
    rows = bad + good[:len(bad)]
    low, last, at = sample_margins(ckpt, tokens[rows], device)
    err = np.abs(outputs[rows].astype(np.float64) - answers[rows]).max(1)
    print(f"{'sample':>7} {'status':>8} {'max err':>9} {'top-1':>5} {'min margin':>11} {'at layer,pos':>12} "
          f"{'last pos':>10}")
    for j, r in enumerate(rows):
        same = outputs[r].argmax() == answers[r].argmax()
        print(f"{ran[r]:>7} {'INVALID' if r in v.invalid_rows else 'valid':>8} {err[j]:>9.2e} {'yes' if same else 'no':>5} "
              f"{low[j]:>11.2e} {f'{at[j][0]},{at[j][1]}':>12} {last[j]:>10.2e}")
    nb = len(bad)
    tied_bad = int((low[:nb] < args.near_tie).sum())
    tied_good = int((low[nb:] < args.near_tie).sum())
    print(f"near-ties (margin < {args.near_tie:g}): {tied_bad} of {nb} invalid samples, "
          f"{tied_good} of {len(rows) - nb} valid ones")
    if tied_bad == nb:
        print("every examined invalid sample has a routing near-tie: rounding, not a broken engine")
        return 0
    print(f"{nb - tied_bad} invalid sample(s) have no near-tie below {args.near_tie:g}: look for an engine bug there")
    return 1


def _explain_low_precision(args, dtype: str, outputs: np.ndarray, answers: np.ndarray, ran: np.ndarray,
                           device: str) -> int:
    """bf16/fp16 outputs: the gate's verdict and numbers; advice only for a run it fails."""
    calibration, note = gate_calibration(args.model, args.data, args.answers, dtype, device)
    v = judge(outputs, answers, dtype, calibration=calibration)
    print(f"{note}\n{v}")
    if v.valid:
        print("nothing to explain: a bf16/fp16 run misses the fp32 1e-3 contract by design, and this one is "
              f"within {v.gate!r}")
        return 0
    print("the median sample is further from the answers than rounding and a few routing near-ties take plain "
          f"torch in {dtype}: look for an engine bug (the samples furthest away: "
          f"{', '.join(str(ran[i]) for i in np.argsort(-v.stats.kl)[:8])})")
    return 1
