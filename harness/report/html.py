"""summary.csv and a self-contained report.html from the JSON records of one or more runs.

The HTML needs no network: CSS is inline, the plots are PNGs embedded as base64 (see plots),
the tables are plain HTML. The frame and its speedups are in frame. The page reads top down as a
performance engineer asks: the headline (each shape's engine beside its peer, the ratio, % of the
floor: headline), the optimization ladder (ladder_chart), the roofline (roofline), then the
detail tables and plots. The summary table fits a 1,400 px window; every column is one click
further, in an expandable section. A suite part's folder holds part.json (the command, commit,
date, roles of the variants, model config for the floors), which the report reads when present.

Kernel-level regressions are tracked apart from this report, by pytest-benchmark:
    pytest tests/bench --benchmark-save=NAME            # on the reference commit
    pytest tests/bench --benchmark-compare --benchmark-compare-fail=mean:5%
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd

from harness.atomic import write_text_atomic
from harness.jobs.gate import low_precision
from harness.report.frame import (ReportError, fmt, load_records, outcome_labels, records_frame, short_table,
                                  write_summary_csv)
from harness.report.headline import floor_of, headline_rows, model_config_of, text_table, with_roles
from harness.report.ladder_chart import plot_ladder
from harness.report.part_meta import PartMeta, read_part_meta
from harness.report.plots import (plot_copy_compute_timeline, plot_scaling, plot_speedups, plot_throughput,
                                  plot_timeseries, scaling_table)
from harness.report.records import SUMMARY_COLUMNS, VariantRecord
from harness.report.roofline import plot_roofline

__all__ = ["ReportError", "render_html", "short_table", "write_report"]


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1360px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.scroll { overflow-x: auto; }
table.summary { border-collapse: collapse; font-size: 12px; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
table.summary th { background: #f0f0f0; position: sticky; top: 0; }
.facts td { padding: 1px 10px 1px 0; font-size: 13px; }
.bad { color: #b00020; } .ok { color: #1b7f3b; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
table.headline { border-collapse: collapse; font-size: 13px; }
table.headline th, table.headline td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
table.headline th { background: #eef3fb; }
details > summary { cursor: pointer; color: #1a4f9c; margin: 0.5em 0; }
"""

# The summary a 1,400 px window shows whole; the rest of the columns are in "All columns".
COMPACT_COLUMNS = ["variant", "dtype", "ranks", "seq_len", "batch_used", "samples", "tokens_per_s", "samples_per_s",
                   "latency_p50_ms", "speedup_vs_prev", "pct_of_floor", "gpu_util_mean", "valid"]


def _table_html(df: pd.DataFrame, columns: list[str]) -> str:
    shown = df[columns].copy()
    shown["valid"] = outcome_labels(df, "not validated")
    for c in shown.columns:
        shown[c] = shown[c].astype(object).map(fmt)
    return shown.to_html(index=False, na_rep="", classes="summary", border=0, escape=True)


def _img(b64: str | None, alt: str, missing: str) -> str:
    if b64 is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _invalid_detail(r) -> str:
    """What made a record INVALID: greedy tokens that left the reference's, or the verdict of the
    gate of its dtype (harness.jobs.gate) with the numbers it rests on."""
    low_precision = bool(r.gate) and not r.gate.startswith("fp32")
    if r.greedy_first_divergence is not None and not low_precision:  # bf16's greedy tokens are not judged
        return (f"greedy tokens first differ from the reference's at step {r.greedy_first_divergence} of "
                f"{r.greedy_steps_checked}")
    err = f"max abs err {r.max_abs_err:.3g}, " if r.max_abs_err is not None else ""
    top = f"top-1 agreement {100 * (r.top1_agreement or 0):.1f}%" + (
        f", top-5 {100 * r.top5_agreement:.1f}%" if r.top5_agreement is not None else "")
    if low_precision:  # bf16/fp16, calibrated on plain torch in that dtype
        if None in (r.kl_p50, r.kl_mean, r.kl_max, r.gate_limit):  # inf is stored as null: a logit was not finite
            return f"gate '{r.gate}': non-finite logits; {top}"
        return (f"gate '{r.gate}': median KL {r.kl_p50:.3g} nats > limit {r.gate_limit:.3g}, {r.invalid_samples} "
                f"of {r.samples} samples beyond it (KL mean {r.kl_mean:.3g}, max {r.kl_max:.3g}), {err}{top}; "
                "rounding and a few routing near-ties do not move the median sample that far from the "
                "answers: look for an engine bug")
    beyond = f"{r.invalid_samples} of {r.samples} samples beyond tolerance, " if r.invalid_samples is not None else ""
    gate = f"gate '{r.gate}': " if r.gate else ""  # records from before the gate name none
    return f"{gate}{beyond}{err}{top}; `python -m harness explain` says whether routing near-ties explain them"


def op_profile_tables(records: list[VariantRecord], top: int = 10) -> list[tuple[str, pd.DataFrame]]:
    """Per record with an op profile: (label with the total, its top ops with their share)."""
    out = []
    for r in records:
        if not r.op_profile:
            continue
        total = sum(op["us"] for op in r.op_profile) or 1.0
        t = pd.DataFrame([{"ms": round(op["us"] / 1e3, 4), "share %": round(100 * op["us"] / total, 1),
                           "calls": op["calls"], "op": op["name"][:100]} for op in r.op_profile[:top]])
        out.append((f"{r.variant}: {total / 1e3:.3f} ms profiled", t))
    return out


def _headline_html(df: pd.DataFrame, meta: PartMeta | None) -> str:
    rows = headline_rows(df, meta)
    if rows.empty:
        return ""
    what = {"prefill": "Prefill", "decode": "Decode", "ladder": "Optimization ladder", "accuracy": "Accuracy"}
    table = text_table(rows)
    table.insert(0, "what", [what.get(k, k) for k in rows["kind"]])
    return ("<h2>Headline</h2><p class='note'>Each shape: the engine beside its peer in the same run, the ratio "
            "(> 1: the engine is ahead; for latency hf / optimized), and the engine's share of the floor: the lower "
            "of the compute ceiling (788 TFLOP/s bf16, 67 fp32, over the model's FLOPs per token) and the "
            "weight-streaming ceiling (the bytes a forward of that many tokens must read, at 3.0 TB/s); for decode, "
            "the decode floor. Validity: engine / peer (bf16 against fp32 answers: see the gate or top-1).</p>"
            + table.to_html(index=False, classes="headline", border=0, escape=True))


def _accuracy_html(df: pd.DataFrame) -> str:
    cols = [c for c in ("kl_mean", "top5_agreement", "gate") if c in df.columns and df[c].notna().any()]
    if not cols:
        return ""
    show = ["variant", "dtype", "seq_len", "samples", "max_abs_err", "top1_agreement"] + cols + ["valid"]
    return ("<h2>Accuracy against the fp32 answers</h2><div class='scroll'>" + _table_html(df, show) + "</div>")


def _with_floor(df: pd.DataFrame, roles: pd.DataFrame, cfg) -> pd.DataFrame:
    """df plus pct_of_floor: prefill tokens/s over the floor of the row's dtype and tokens per forward
    (roles: df with its roles, headline.with_roles; cfg: the measured model's config)."""
    out = df.copy()
    out["pct_of_floor"] = [None if w == "generate" else floor_of(r, cfg, r["role_dtype"])[0]
                           for (_, r), w in zip(roles.iterrows(), roles["workload"])]
    return out


def render_html(df: pd.DataFrame, records: list[VariantRecord], merge: bool = False,
                meta: PartMeta | None = None) -> str:
    runs = list(dict.fromkeys(df["run_id"]))
    order = {(r, v): i for i, (r, v) in enumerate(zip(df["run_id"], df["variant"]))}
    records = sorted(records, key=lambda rec: order.get((rec.run_id, rec.variant), len(order)))
    e = html.escape

    def uniq(col):
        return ", ".join(sorted({str(v) for v in df[col].dropna()})) or "n/a"
    facts = [("runs", ", ".join(runs)), ("model", uniq("model")), ("device", uniq("device")),
             ("hosts", uniq("hosts")), ("git commit", uniq("git_commit")), ("torch", uniq("torch_version")),
             ("CUDA", uniq("cuda_version")), ("driver", uniq("driver_version")),
             ("variants", f"{len(df)} ({int(df['error'].notna().sum())} failed)"),
             ("generated", time.strftime("%Y-%m-%d %H:%M:%S"))]
    if meta is not None:
        facts = [("part", f"{meta.part}: {meta.what}"), ("command", meta.command),
                 ("measured", f"{meta.date}, {meta.duration_s / 60:.1f} min, commit {meta.commit or 'unknown'}")] + facts
        facts += [("notes", n) for n in meta.notes]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>LFM2 harness report: {e(', '.join(runs))}</title><style>{CSS}</style></head><body>",
             f"<h1>LFM2-8B-A1B inference: {e(', '.join(runs))}</h1>",
             "<table class='facts'>" + "".join(f"<tr><td><b>{e(k)}</b></td><td>{e(v)}</td></tr>" for k, v in facts)
             + "</table>"]

    roles = with_roles(df, meta)
    cfg = model_config_of(roles, meta)
    parts.append(_headline_html(df, meta))
    ladder = plot_ladder(roles)
    if ladder:
        parts.append("<h2>Optimization ladder</h2><p class='note'>Samples/s of each phase (log scale), the number on "
                     "each bar and below it the speedup over the previous phase at the same rank count (phase 5 with "
                     "a label, e.g. ep = expert parallelism: over phase 5 without it).</p>"
                     + _img(ladder, "optimization ladder: samples/s per phase", ""))
    roofline = plot_roofline(roles, cfg)
    if roofline:
        parts.append("<h2>Roofline</h2><p class='note'>Prefill tokens/s against tokens per forward (batch_used x "
                     "seq_len). Dashed: the compute floor; dotted: the weight-streaming floor (non-expert weights + "
                     "the experts that many tokens touch under uniform routing, at 3.0 TB/s); grey: the lower of "
                     "the two, which no engine can beat. Middle: the share of that floor reached (per point, with "
                     "the bytes the routing touched when the record counted them); right: optimized / hf.</p>"
                     + _img(roofline, "roofline: tokens/s against tokens per forward with the floors", ""))
    parts.append(_accuracy_html(df))

    notes, ungated_low_precision = [], []
    for r in records:
        label = f"{r.run_id}: {r.variant}" if len(runs) > 1 else r.variant
        if r.budget_hit or (r.samples_requested and r.samples < r.samples_requested and not r.error):
            notes.append(f"{label}: time budget ({r.budget_s:g} s) reached, reported over "
                         f"{r.samples} of {r.samples_requested} samples")
        if r.valid is False and not r.error:
            # Records from before the bf16 gate were held to fp32's 1e-3: that INVALID is expected. A record
            # its own gate judged INVALID is not, and gets the gate's verdict like any other.
            if r.gate is None and low_precision(r.dtype) and r.greedy_first_divergence is None:
                ungated_low_precision.append(r)
            else:
                notes.append(f"{label}: outputs INVALID ({_invalid_detail(r)})")
    if ungated_low_precision:  # one line, not one per variant: expected, and the same reason for each
        errs = [r.max_abs_err for r in ungated_low_precision if r.max_abs_err is not None]
        top1 = [r.top1_agreement for r in ungated_low_precision if r.top1_agreement is not None]
        notes.append(f"{len(ungated_low_precision)} bf16 variant(s) INVALID against the float32 answers, as expected (the 1e-3 "
                     "contract is float32's)" + (f": max abs err up to {max(errs):.3g}" if errs else "")
                     + (f", top-1 agreement at least {100 * min(top1):.1f}%" if top1 else ""))
    nvml_notes = sorted({str(n) for n in df["nvml_note"].dropna()})
    if notes or nvml_notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes)
                     + "".join(f"<li class='note'>NVML: {e(n)}</li>" for n in nvml_notes) + "</ul>")

    floored = _with_floor(df, roles, cfg)
    compact = (["variant"] + (["run_id"] if len(runs) > 1 else []) + COMPACT_COLUMNS[1:])
    columns = ["variant"] + (["run_id"] if len(runs) > 1 else []) + SUMMARY_COLUMNS
    parts.append("<h2>Summary</h2><p class='note'>One row per variant. Throughput is over the samples that ran "
                 "and the timed region (between barriers, after a device sync; load and warm-up excluded). "
                 "Latency is per forward call (batch_used samples). pct_of_floor: tokens/s over the prefill floor "
                 "at batch_used x seq_len tokens per forward (see Headline). device is the GPU's name.</p>")
    parts.append("<div class='scroll' id='summary'>" + _table_html(floored, compact) + "</div>")
    parts.append("<details><summary>All columns</summary><p class='note'>Bytes are the engine's own counters; "
                 "NVML's PCIe rates beside them. tflops counts the model's useful FLOPs; pct_of_peak is against the "
                 "H100 ceiling of the engine's math mode (fp32 67, tf32 495, bf16 788 TFLOP/s) times the GPUs "
                 "used.</p><div class='scroll'>" + _table_html(df, columns) + "</div></details>")
    parts.append("<details><summary>Data movement per sample</summary><p class='note'>From the engines' own counters "
                 "over the timed region: what crossed PCIe (weights, and the experts among them), device "
                 "allocations, and how outputs reached rank 0. A blank cell: the engine keeps no such counter "
                 "(hf, whose copies torch makes), not zero bytes.</p><div class='scroll'>"
                 + _table_html(df, ["variant", "h2d_bytes_per_sample", "weight_h2d_bytes_per_sample",
                                    "expert_h2d_bytes_per_sample", "d2h_bytes_per_sample",
                                    "device_allocs_per_sample", "output_collective", "mpi_output_bytes"])
                 + "</div></details>")
    gen = df[df["workload"] == "generate"]
    if not gen.empty:
        parts.append("<h2>Generation</h2><p class='note'>Greedy prefill + decode. tokens_per_s above counts new "
                     "tokens. TTFT is one prefill call, the median over the variant's generations (ttft_max_ms: "
                     "the slowest of them); inter-token latency is one decode step of a batch, timed "
                     "per decode_mode: per-step = one decode call to a device synchronize, streamed = the "
                     "spacing of token arrivals with one step queued ahead on the GPU; pct_of_decode_floor "
                     "compares the median step with the bytes it must read (weights the batch touches + "
                     "caches) at 3.0 TB/s.</p><div class='scroll'>"
                     + _table_html(gen, ["variant", "batch", "seq_len", "max_new_tokens", "decode_mode", "generations",
                                         "ttft_ms", "ttft_max_ms", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms",
                                         "decode_tokens_per_s", "decode_gbps", "pct_of_decode_floor",
                                         "greedy_steps_checked", "greedy_first_divergence", "valid"]) + "</div>")
    if merge:
        parts.append(f"<p class='note'>Merged: the {len(runs)} runs above form one comparison (speedups "
                     "across runs within each seq_len and rank count); each row's run and commit are in "
                     "the table.</p>")
    elif len(runs) > 1:
        parts.append("<h2>Runs side by side (tokens/s)</h2><p class='note'>One row per variant some run measured: "
                     "failed = it ran and failed there, not run = that run did not measure it.</p>"
                     "<div class='scroll'>" + _side_by_side(df) + "</div>")

    parts.append("<h2>Throughput</h2>" + _img(plot_throughput(df), "throughput per variant", ""))
    parts.append("<h2>Speedup</h2>" + _img(plot_speedups(df), "speedup bars",
                                            "No speedups: no phase 0 (or previous phase) ran in the same "
                                            "(seq_len, ranks, batch) group."))
    parts.append("<h2>GPU utilization and PCIe over time</h2>" + _img(
        plot_timeseries(records), "GPU utilization and PCIe over time",
        "No NVML samples in these runs (CPU engines or no NVML): " + "; ".join(nvml_notes or ["n/a"])))
    timeline = plot_copy_compute_timeline(records)
    if timeline:
        parts.append("<h2>Copies and compute (CUDA events)</h2><p class='note'>Rank 0's last forward call of "
                     "each engine that records a timeline: a copy drawn beside a compute span ran while "
                     "kernels did.</p>" + _img(timeline, "copy/compute timeline", ""))
    profiles = op_profile_tables(records)
    if profiles:
        parts.append("<h2>Where the time goes (one profiled forward or decode step)</h2><p class='note'>"
                     "`--profile-ops`: after the timed region rank 0 ran one more forward of its first batch "
                     "(prefill), or one decode step after that batch's prefill (generate), under "
                     "torch.profiler: GPU kernels by GPU time, or CPU ops by self time. Shares are of the "
                     "profiled total. The run is eager (an engine that replays CUDA graphs launches the same "
                     "kernels one by one), so its total can exceed the timed call's: read the shares. A kernel "
                     "launched with programmatic dependent launch starts before the one ahead of it ends, and "
                     "its time includes that wait.</p>"
                     + "".join(f"<h3>{e(label)}</h3>" + t.to_html(index=False, border=0) for label, t in profiles))
    sc = scaling_table(df)
    parts.append("<h2>Scaling with ranks</h2>" + _img(plot_scaling(sc), "scaling efficiency vs ranks",
                                                      "No scaling plot: no variant ran at 1 rank and at more."))
    if not sc.empty:
        parts.append("<div class='scroll'>" + sc.map(fmt).to_html(index=False, classes="summary", border=0)
                     + "</div>")

    failed = [r for r in records if r.error]
    if failed:
        parts.append("<h2>Failures</h2>")
        for r in failed:
            parts.append(f"<h3 class='bad'>{e(str(r.variant))}</h3><pre>{e(r.error)}</pre>")
    parts.append("<h2>Regressions</h2><p class='note'>Gate a later run on this one: <code>python -m harness "
                 "regress results/NEW --against results/THIS --max-drop 5%</code> (exit 1 on a larger drop in "
                 "tokens/s or a failed validation). Kernel microbenchmarks: <code>pytest tests/bench "
                 "--benchmark-compare --benchmark-compare-fail=mean:5%</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def _side_by_side(df: pd.DataFrame) -> str:
    """tokens/s per variant (rows that some run measured, nothing else) and run; with two runs their ratio."""
    key = ["engine", "dtype", "seq_len", "ranks", "batch"]
    runs = list(dict.fromkeys(df["run_id"]))
    seen = df.groupby(key + ["run_id"], dropna=False, sort=True)["tokens_per_s"].median().unstack("run_id")
    seen = seen.reindex(columns=runs)
    ran = df.assign(_ran=1).groupby(key + ["run_id"], dropna=False)["_ran"].sum().unstack("run_id")
    ran = ran.reindex(index=seen.index, columns=runs)
    shown = seen.astype(object).copy()
    for run in runs:
        shown[run] = [fmt(v) if v == v else ("failed" if n == n and n else "not run")
                      for v, n in zip(seen[run], ran[run])]
    if len(runs) == 2:
        shown[f"{runs[1]} / {runs[0]}"] = [fmt(x) for x in (seen[runs[1]] / seen[runs[0]])]
    return shown.reset_index().map(fmt).to_html(index=False, classes="summary", border=0, na_rep="")


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                 merge: bool = False) -> tuple[Path, Path, pd.DataFrame]:
    """Read the records of run_dirs, write out_dir/summary.csv and out_dir/report.html; with merge
    the runs are one comparison (see add_speedups). One suite part folder: its part.json too."""
    run_dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out_dir) if out_dir else run_dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(run_dirs)
    meta = read_part_meta(run_dirs[0]) if len(run_dirs) == 1 else None
    df = records_frame(records, merge)
    if meta is not None:  # a variant that failed before measuring still ran on the part's GPU
        df["device"] = df["device"].fillna(meta.device)
    csv_path = write_summary_csv(df, out_dir / "summary.csv")
    html_path = out_dir / "report.html"
    write_text_atomic(html_path, render_html(df, records, merge, meta))
    return csv_path, html_path, df
