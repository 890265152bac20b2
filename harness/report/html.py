"""summary.csv and a self-contained report.html from the JSON records of one or more runs.

The HTML needs no network: CSS is inline, the plots are PNGs embedded as base64 (see plots),
the tables are plain HTML. The frame and its speedups are in frame.

Kernel-level regressions are tracked apart from this report, by pytest-benchmark:
    pytest tests/bench --benchmark-save=NAME            # on the reference commit
    pytest tests/bench --benchmark-compare --benchmark-compare-fail=mean:5%
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd

from harness.report.frame import ReportError, fmt, load_records, records_frame, short_table, write_summary_csv
from harness.report.plots import (plot_copy_compute_timeline, plot_scaling, plot_speedups, plot_throughput,
                                  plot_timeseries, scaling_table)
from harness.report.records import SUMMARY_COLUMNS, VariantRecord

__all__ = ["ReportError", "render_html", "short_table", "write_report"]


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
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
"""


def _table_html(df: pd.DataFrame, columns: list[str]) -> str:
    shown = df[columns].copy()
    shown["valid"] = [("FAILED" if isinstance(e, str) and e else
                       "VALID" if v is True else "INVALID" if v is False else "not validated")
                      for v, e in zip(df["valid"], df["error"])]
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
    if r.greedy_first_divergence is not None:
        return (f"greedy tokens first differ from the reference's at step {r.greedy_first_divergence} of "
                f"{r.greedy_steps_checked}")
    err = f"max abs err {r.max_abs_err:.3g}, " if r.max_abs_err is not None else ""
    top = f"top-1 agreement {100 * (r.top1_agreement or 0):.1f}%" + (
        f", top-5 {100 * r.top5_agreement:.1f}%" if r.top5_agreement is not None else "")
    if r.gate and not r.gate.startswith("fp32"):  # bf16/fp16, calibrated on plain torch in that dtype
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


def render_html(df: pd.DataFrame, records: list[VariantRecord], merge: bool = False) -> str:
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
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>LFM2 harness report: {e(', '.join(runs))}</title><style>{CSS}</style></head><body>",
             f"<h1>LFM2-8B-A1B inference: {e(', '.join(runs))}</h1>",
             "<table class='facts'>" + "".join(f"<tr><td><b>{e(k)}</b></td><td>{e(v)}</td></tr>" for k, v in facts)
             + "</table>"]

    notes = []
    for r in records:
        label = f"{r.run_id}: {r.variant}" if len(runs) > 1 else r.variant
        if r.budget_hit or (r.samples_requested and r.samples < r.samples_requested and not r.error):
            notes.append(f"{label}: time budget ({r.budget_s:g} s) reached, reported over "
                         f"{r.samples} of {r.samples_requested} samples")
        if r.valid is False and not r.error:
            notes.append(f"{label}: outputs INVALID ({_invalid_detail(r)})")
    nvml_notes = sorted({str(n) for n in df["nvml_note"].dropna()})
    if notes or nvml_notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes)
                     + "".join(f"<li class='note'>NVML: {e(n)}</li>" for n in nvml_notes) + "</ul>")

    columns = ["variant"] + (["run_id"] if len(runs) > 1 else []) + SUMMARY_COLUMNS
    parts.append("<h2>Summary</h2><p class='note'>One row per variant. Throughput is over the samples that ran "
                 "and the timed region (between barriers, after a device sync; load and warm-up excluded). "
                 "Latency is per forward call (batch_used samples). Bytes are the engine's own counters; "
                 "NVML's PCIe rates beside them. tflops counts the model's useful FLOPs; pct_of_peak is "
                 "against the H100 ceiling of the engine's math mode (fp32 67, tf32 495, bf16 788 TFLOP/s) "
                 "times the GPUs used.</p>")
    parts.append("<div class='scroll'>" + _table_html(df, columns) + "</div>")
    parts.append("<h2>Data movement per sample</h2><p class='note'>From the engines' own counters over the timed "
                 "region: what crossed PCIe (weights, and the experts among them), device allocations, and "
                 "how outputs reached rank 0.</p><div class='scroll'>"
                 + _table_html(df, ["variant", "h2d_bytes_per_sample", "weight_h2d_bytes_per_sample",
                                    "expert_h2d_bytes_per_sample", "d2h_bytes_per_sample",
                                    "device_allocs_per_sample", "output_collective", "mpi_output_bytes"])
                 + "</div>")
    gen = df[df["workload"] == "generate"]
    if not gen.empty:
        parts.append("<h2>Generation</h2><p class='note'>Greedy prefill + decode. tokens_per_s above counts new "
                     "tokens. TTFT is one prefill call; inter-token latency is one decode step of a batch, timed "
                     "per decode_mode: per-step = one decode call to a device synchronize, streamed = the "
                     "spacing of token arrivals with one step queued ahead on the GPU; pct_of_decode_floor "
                     "compares the median step with the bytes it must read (weights the batch touches + "
                     "caches) at 3.0 TB/s.</p><div class='scroll'>"
                     + _table_html(gen, ["variant", "batch", "seq_len", "max_new_tokens", "decode_mode", "ttft_ms",
                                         "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "decode_tokens_per_s", "decode_gbps",
                                         "pct_of_decode_floor", "greedy_steps_checked", "greedy_first_divergence",
                                         "valid"]) + "</div>")
    if merge:
        parts.append(f"<p class='note'>Merged: the {len(runs)} runs above form one comparison (speedups "
                     "across runs within each seq_len and rank count); each row's run and commit are in "
                     "the table.</p>")
    elif len(runs) > 1:
        parts.append("<h2>Runs side by side (tokens/s)</h2><div class='scroll'>" + _side_by_side(df) + "</div>")

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
        parts.append("<h2>Where the time goes (one profiled forward)</h2><p class='note'>`--profile-ops`: rank 0 ran "
                     "one more forward of its first batch under torch.profiler after the timed region: GPU "
                     "kernels by GPU time, or CPU ops by self time. Shares are of the profiled total.</p>"
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
    return "\n".join(parts)


def _side_by_side(df: pd.DataFrame) -> str:
    key = ["engine", "dtype", "seq_len", "ranks", "batch"]
    pv = df.pivot_table(index=key, columns="run_id", values="tokens_per_s", aggfunc="median", dropna=False)
    runs = list(dict.fromkeys(df["run_id"]))
    pv = pv.reindex(columns=runs)
    if len(runs) == 2:
        pv[f"{runs[1]} / {runs[0]}"] = pv[runs[1]] / pv[runs[0]]
    return pv.reset_index().map(fmt).to_html(index=False, classes="summary", border=0, na_rep="")


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                 merge: bool = False) -> tuple[Path, Path, pd.DataFrame]:
    """Read the records of run_dirs, write out_dir/summary.csv and out_dir/report.html; with merge
    the runs are one comparison (see add_speedups)."""
    run_dirs = [Path(d) for d in run_dirs]
    out_dir = Path(out_dir) if out_dir else run_dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(run_dirs)
    df = records_frame(records, merge)
    csv_path = write_summary_csv(df, out_dir / "summary.csv")
    html_path = out_dir / "report.html"
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(render_html(df, records, merge), encoding="utf-8")
    tmp.replace(html_path)
    return csv_path, html_path, df
