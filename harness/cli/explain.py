"""`explain`: why is a run INVALID? Per sample beyond tolerance, how close its routing came to a tie.

Two implementations that round differently choose a different k-th expert when two
biased router scores are within their rounding of each other, and that token's MoE output then
differs by a whole expert. Over thousands of prompts such near-ties happen, so an fp32 engine can
miss the job's 1e-3 on a few samples while being right. This command tells the two cases apart:
it recomputes the reference with the router margins (k-th minus (k+1)-th biased score of every
token in every MoE layer) for the samples beyond tolerance and, for contrast, as many that passed.
A broken engine fails samples whose routing is far from any tie.
"""
from __future__ import annotations

import argparse

import numpy as np

from harness.errors import UsageError

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
                        "outputs' rows are when a time budget cut the run short (default: rows 0..n-1)")
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


def _ran_indices(record_path: str, n: int) -> np.ndarray:
    import json
    from pathlib import Path
    try:
        ran = json.loads(Path(record_path).read_text()).get("ran_indices") or []
    except (OSError, ValueError) as e:
        raise UsageError(f"--record {record_path}: not a readable run record ({e})") from None
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
    ran = _ran_indices(args.record, n) if args.record else np.arange(n)  # job sample of each output row
    tokens, answers = tokens[ran], answers[ran]
    v = validate(outputs, answers, args.tol)
    print(v)
    if v.valid:
        print("nothing to explain")
        return 0
    bad = list(v.invalid_rows[:args.max_samples])
    good = [i for i in np.linspace(0, n - 1, num=min(n, 4 * len(bad) + 8)).astype(int) if i not in v.invalid_rows]
    rows = bad + good[:len(bad)]
    device = "cuda" if args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    if args.device == "gpu" and not torch.cuda.is_available():
        raise UsageError("--device gpu: torch sees no GPU; use --device cpu")
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
