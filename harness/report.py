"""summary.csv and a self-contained report.html from the JSON records of one or more runs.

The HTML needs no network: CSS is inline, the plots are PNGs (matplotlib, Agg) embedded as
base64, the table is plain HTML. Plots: throughput per variant (log scale), speedup bars, GPU
utilization and PCIe traffic over time per variant (NVML, GPU runs only), scaling efficiency
versus ranks (when a variant ran at several rank counts next to 1 rank).

Speedups are computed here, not in the worker, because they relate rows: within one
(run_id, seq_len, ranks, batch) group, `speedup_vs_phase0` divides by phase 0's samples/s and
`speedup_vs_prev` by the previous phase present (phases 0..5, then `optimized` after phase 5);
the peers (`hf`, `reference`) get only the first. Failed variants get neither. With `merge`
(several runs read as one comparison, e.g. slow phases measured in separate device calls) the
group is (seq_len, ranks) across runs, and each engine may appear once per group.

Kernel-level regressions are tracked apart from this report, by pytest-benchmark:
    pytest tests/bench --benchmark-save=NAME            # on the reference commit
    pytest tests/bench --benchmark-compare --benchmark-compare-fail=mean:5%
"""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .records import EXTRA_COLUMNS, SUMMARY_COLUMNS, VariantRecord

GROUP = ["run_id", "seq_len", "ranks", "batch"]
MERGED_GROUP = ["seq_len", "ranks"]  # --merge: one comparison across runs (and their batch sizes)
OPTIMIZED_ORDER = 6  # `optimized` follows phase 5 in the speedup_vs_prev chain


class ReportError(ValueError):
    """A folder with no records, or records that cannot be read."""


# ---- loading ---------------------------------------------------------------------------------
def load_records(run_dirs: list[str | Path]) -> list[VariantRecord]:
    records = []
    for d in run_dirs:
        d = Path(d)
        folder = d / "records"
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            raise ReportError(f"{d}: no records/*.json; give a run folder made by `python -m harness run` or "
                              "`compare` (results/<run-id>)")
        for f in files:
            try:
                rec = VariantRecord.read(f)
            except (ValueError, TypeError) as e:
                raise ReportError(f"{f}: not a harness record ({e})") from None
            rec.run_id = rec.run_id or d.name
            records.append(rec)
    return records


def records_frame(records: list[VariantRecord], merge: bool = False) -> pd.DataFrame:
    df = pd.DataFrame([r.summary_row() for r in records], columns=SUMMARY_COLUMNS + EXTRA_COLUMNS)
    for c in ("phase", "batch_used"):  # whole numbers with gaps, not floats
        df[c] = df[c].astype("Int64")
    if merge:
        _check_mergeable(df)
    df = add_speedups(df, MERGED_GROUP if merge else GROUP)
    runs = {r: i for i, r in enumerate(dict.fromkeys(df["run_id"]))}  # the order the runs were given
    df["_run"] = df["run_id"].map(runs)
    order = ["seq_len", "ranks", "_order", "engine"] if merge else ["_run", "seq_len", "ranks", "batch", "_order", "engine"]
    return df.sort_values(order, na_position="last", kind="stable").drop(columns=["_order", "_run"]).reset_index(drop=True)


def _check_mergeable(df: pd.DataFrame) -> None:
    """Merged runs form one comparison only on one model, and if no engine ran twice at the same
    (seq_len, ranks) (not even at two batch sizes: which would phase 0 be divided by?)."""
    models = sorted(df["model"].dropna().astype(str).unique())
    if len(models) > 1:
        raise ReportError(f"--merge: the runs measured different models ({'; '.join(models)}); speedups "
                          "across them mean nothing: report them side by side without --merge")
    key = ["engine", "dtype", "seq_len", "ranks", "workload"]
    dup = df[df.duplicated(key, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        runs = ", ".join(dup[(dup[key] == first[key]).all(axis=1)]["run_id"].astype(str))
        raise ReportError(f"--merge: {first['engine']} ({first['dtype']}) at seq_len {first['seq_len']} and "
                          f"{first['ranks']} rank(s) is in more than one run ({runs}); merge runs that measured "
                          "different variants, or report them side by side without --merge")


def _order(engine: str, phase) -> float:
    if phase is not None and not pd.isna(phase):
        return float(phase)
    return float(OPTIMIZED_ORDER) if engine == "optimized" else np.nan


def add_speedups(df: pd.DataFrame, group: list[str] = GROUP) -> pd.DataFrame:
    df = df.copy()
    df["_order"] = [_order(e, p) for e, p in zip(df["engine"], df["phase"])]
    ok = df["error"].isna() & df["samples_per_s"].notna()
    df["speedup_vs_phase0"] = np.nan
    df["speedup_vs_prev"] = np.nan
    for _, g in df.groupby(group, dropna=False):
        good = g[ok.loc[g.index]]
        base = good[good["_order"] == 0]["samples_per_s"]
        chain = good[good["_order"].notna()].sort_values("_order")
        for i in good.index:
            thr = df.at[i, "samples_per_s"]
            if len(base):
                df.at[i, "speedup_vs_phase0"] = thr / base.iloc[0]
            o = df.at[i, "_order"]
            prev = chain[chain["_order"] < o]
            if not np.isnan(o) and len(prev):
                df.at[i, "speedup_vs_prev"] = thr / prev["samples_per_s"].iloc[-1]
    return df


def write_summary_csv(df: pd.DataFrame, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


# ---- plots -----------------------------------------------------------------------------------
def _pyplot():
    """pyplot on the Agg backend: files only, no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _labels(df: pd.DataFrame) -> list[str]:
    several_runs = df["run_id"].nunique() > 1
    return [f"{r}: {v}" if several_runs else str(v) for r, v in zip(df["run_id"], df["variant"])]


def _colors(engines) -> dict:
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {e: cmap(i % 10) for i, e in enumerate(dict.fromkeys(engines))}


def plot_throughput(df: pd.DataFrame) -> str:
    plt = _pyplot()
    labels = _labels(df)
    colors = _colors(df["engine"])
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(df) + 1.4))
    y = np.arange(len(df))
    thr = df["tokens_per_s"].astype(float).to_numpy()
    good = np.isfinite(thr) & (thr > 0)
    ax.barh(y[good], thr[good], color=[colors[e] for e in df["engine"][good]])
    for yi, t, ok in zip(y, thr, good):
        if ok:
            ax.text(t, yi, f" {t:.3g}", va="center", fontsize=8)
    lo = thr[good].min() if good.any() else 1.0
    for yi in y[~good]:
        ax.text(lo, yi, " failed", va="center", color="crimson", fontsize=8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (log scale)")
    ax.set_title("Throughput per variant")
    ax.grid(axis="x", which="both", alpha=0.3)
    return _png(fig)


def plot_speedups(df: pd.DataFrame) -> str | None:
    plt = _pyplot()
    sel = df[df["speedup_vs_phase0"].notna() | df["speedup_vs_prev"].notna()]
    if sel.empty:
        return None
    labels = _labels(sel)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.38 * len(sel) + 1.4), sharey=True)
    y = np.arange(len(sel))
    for ax, col, title in ((axes[0], "speedup_vs_phase0", "Speedup vs phase 0"),
                           (axes[1], "speedup_vs_prev", "Speedup vs previous phase")):
        v = sel[col].astype(float).to_numpy()
        ok = np.isfinite(v)
        ax.barh(y[ok], v[ok], color=["seagreen" if x >= 1 else "indianred" for x in v[ok]])
        for yi, x in zip(y[ok], v[ok]):
            ax.text(x, yi, f" {x:.3g}x", va="center", fontsize=8)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(title + " (log scale)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    return _png(fig)


def _sampled_gpus(records: list[VariantRecord]):
    """(label, [series per GPU]) for each variant NVML sampled; ranks sharing a GPU count once."""
    several_runs = len({r.run_id for r in records}) > 1
    out = []
    for r in records:
        per_gpu, seen = [], set()
        for s in r.nvml:
            key = s.get("pci_bus_id") or s.get("device_index")
            if s.get("available") and s.get("t_s") and key not in seen:
                seen.add(key)
                per_gpu.append(s)
        if per_gpu:
            out.append((f"{r.run_id}: {r.variant}" if several_runs else str(r.variant), per_gpu))
    return out


def _floats(xs) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in xs], float)


def plot_timeseries(records: list[VariantRecord], max_panels: int = 60) -> str | None:
    """One small panel per variant: GPU utilization (left axis, per GPU) and NVML PCIe RX/TX
    summed over its GPUs (right axis), over the timed region."""
    plt = _pyplot()
    variants = _sampled_gpus(records)[:max_panels]
    if not variants:
        return None
    cols = min(3, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat[len(variants):]:
        ax.axis("off")
    for ax, (label, gpus) in zip(axes.flat, variants):
        pcie = ax.twinx()
        for g in gpus:
            ax.plot(g["t_s"], g["gpu_util_pct"], color="tab:blue", lw=1.1, alpha=0.9)
        n = min(len(g["t_s"]) for g in gpus)
        t = gpus[0]["t_s"][:n]
        rx = np.nansum([_floats(g["pcie_rx_gbps"][:n]) for g in gpus], axis=0)
        tx = np.nansum([_floats(g["pcie_tx_gbps"][:n]) for g in gpus], axis=0)
        pcie.plot(t, rx, color="tab:orange", lw=1.1)
        pcie.plot(t, tx, color="tab:green", lw=1.0, ls="--")
        ax.set_ylim(0, 105)
        pcie.set_ylim(0, max(1.0, float(np.nanmax(np.concatenate([rx, tx]))) * 1.15))
        ax.set_title(label + (f" ({len(gpus)} GPUs)" if len(gpus) > 1 else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        pcie.tick_params(labelsize=7, colors="tab:orange")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("GPU util %", color="tab:blue", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("s into the timed region", fontsize=8)
    fig.legend(handles=[plt.Line2D([], [], color="tab:blue", label="GPU utilization % (left)"),
                        plt.Line2D([], [], color="tab:orange", label="PCIe RX, host to GPU, GB/s (right)"),
                        plt.Line2D([], [], color="tab:green", ls="--", label="PCIe TX, GPU to host, GB/s (right)")],
               loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    return _png(fig)


def plot_copy_compute_timeline(records: list[VariantRecord]) -> str | None:
    """Engines that record CUDA-event spans (phase 4's `--option timeline=true`): rank 0's last
    forward call as lanes (ids up, compute, logits down), so overlapping copies are visible."""
    plt = _pyplot()
    found = [(r.variant, (r.per_rank[0].get("counters") or {}).get("timeline"))
             for r in records if r.per_rank]
    found = [(label, spans) for label, spans in found if spans]
    if not found:
        return None
    lanes = ["h2d", "compute", "d2h"]
    colors = {"h2d": "tab:orange", "compute": "tab:blue", "d2h": "tab:green"}
    fig, axes = plt.subplots(len(found), 1, figsize=(10, 1.3 + 0.9 * len(found)), squeeze=False)
    for ax, (label, spans) in zip(axes[:, 0], found):
        for sp in spans:
            y = lanes.index(sp["lane"]) if sp["lane"] in lanes else len(lanes)
            ax.barh(y, sp["end_ms"] - sp["start_ms"], left=sp["start_ms"], height=0.6,
                    color=colors.get(sp["lane"], "tab:gray"), edgecolor="black", linewidth=0.3)
        ax.set_yticks(range(len(lanes)), lanes, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("ms from the start of the forward call (CUDA events)", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run, engine, dtype, seq_len, batch) with a 1-rank row and others: throughput and
    efficiency = samples/s at R ranks / (R x samples/s at 1 rank)."""
    ok = df[df["error"].isna() & df["samples_per_s"].notna()]
    rows = []
    for key, g in ok.groupby(["run_id", "engine", "dtype", "seq_len", "batch"], dropna=False):
        if g["ranks"].nunique() < 2 or not (g["ranks"] == 1).any():
            continue
        one = g[g["ranks"] == 1]["samples_per_s"].iloc[0]
        for _, r in g.sort_values("ranks").iterrows():
            rows.append({"run_id": key[0], "engine": key[1], "dtype": key[2], "seq_len": key[3], "batch": key[4],
                         "ranks": r["ranks"], "samples_per_s": r["samples_per_s"],
                         "efficiency": r["samples_per_s"] / (r["ranks"] * one)})
    return pd.DataFrame(rows)


def plot_scaling(sc: pd.DataFrame) -> str | None:
    plt = _pyplot()
    if sc.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    several = sc["run_id"].nunique() > 1
    for key, g in sc.groupby(["run_id", "engine", "dtype", "seq_len", "batch"], dropna=False):
        label = f"{key[1]} {key[2]} s{key[3]} b{key[4]}" + (f" ({key[0]})" if several else "")
        a1.plot(g["ranks"], g["samples_per_s"], marker="o", label=label)
        a2.plot(g["ranks"], g["efficiency"], marker="o", label=label)
    a1.set_xlabel("ranks")
    a1.set_ylabel("samples/s")
    a1.set_title("Throughput vs ranks")
    a2.axhline(1.0, color="black", lw=0.8)
    a2.set_xlabel("ranks")
    a2.set_ylabel("efficiency (1 = linear)")
    a2.set_title("Scaling efficiency vs ranks")
    a2.set_ylim(0, max(1.1, float(sc["efficiency"].max()) * 1.1))
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.set_xticks(sorted(sc["ranks"].unique()))
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


# ---- HTML ------------------------------------------------------------------------------------
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


def _fmt(x):
    if x is None or x is pd.NA:
        return ""
    if isinstance(x, float):
        return "" if np.isnan(x) else f"{x:.4g}"
    return x


def _table_html(df: pd.DataFrame, columns: list[str]) -> str:
    shown = df[columns].copy()
    shown["valid"] = [("FAILED" if isinstance(e, str) and e else
                       "VALID" if v is True else "INVALID" if v is False else "not validated")
                      for v, e in zip(df["valid"], df["error"])]
    for c in shown.columns:
        shown[c] = shown[c].astype(object).map(_fmt)
    return shown.to_html(index=False, na_rep="", classes="summary", border=0, escape=True)


def _img(b64: str | None, alt: str, missing: str) -> str:
    if b64 is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _invalid_detail(r) -> str:
    """What made a record INVALID: greedy tokens that left the reference's, or logits beyond tolerance."""
    if r.greedy_first_divergence is not None:
        return (f"greedy tokens first differ from the reference's at step {r.greedy_first_divergence} of "
                f"{r.greedy_steps_checked}")
    beyond = f"{r.invalid_samples} of {r.samples} samples beyond tolerance, " if r.invalid_samples is not None else ""
    err = f"max abs err {r.max_abs_err:.3g}, " if r.max_abs_err is not None else ""
    top1 = f"top-1 agreement {100 * (r.top1_agreement or 0):.1f}%"
    if r.dtype in ("bf16", "fp16"):  # expected: the job's 1e-3 is a float32 contract
        return f"{r.dtype} against float32 answers, the 1e-3 contract is float32's: {beyond}{err}{top1}"
    return f"{beyond}{err}{top1}; `python -m harness explain` says whether routing near-ties explain them"


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
        parts.append("<div class='scroll'>" + sc.map(_fmt).to_html(index=False, classes="summary", border=0)
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
    return pv.reset_index().map(_fmt).to_html(index=False, classes="summary", border=0, na_rep="")


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


def short_table(df: pd.DataFrame) -> str:
    """The few columns a terminal has room for."""
    cols = ["variant", "samples", "samples_per_s", "tokens_per_s", "latency_p50_ms", "speedup_vs_phase0",
            "gpu_util_mean", "valid"]
    t = df[cols].copy()
    t["valid"] = [("FAILED" if isinstance(e, str) and e else "VALID" if v is True else
                   "INVALID" if v is False else "-") for v, e in zip(df["valid"], df["error"])]
    return t.map(_fmt).to_string(index=False, na_rep="")
