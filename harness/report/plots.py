"""The report's plots as base64 PNGs (matplotlib on Agg: files only, no display): throughput per
variant, speedup bars, GPU utilization and PCIe traffic over time (NVML), the copy/compute
timeline, scaling efficiency versus ranks."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from harness.report.records import VariantRecord

DPI = 90
PALETTE = 128  # colours per plot PNG


def pyplot():
    """pyplot on the Agg backend: files only, no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def to_png(fig) -> str:
    """The figure as a base64 PNG of at most PALETTE colours: plots use a few dozen, and a palette
    image is about a quarter of the size of the RGBA one matplotlib writes."""
    from PIL import Image
    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    raw.seek(0)
    out = io.BytesIO()
    Image.open(raw).convert("RGB").quantize(PALETTE).save(out, format="png", optimize=True)
    return base64.b64encode(out.getvalue()).decode()


def _labels(df: pd.DataFrame) -> list[str]:
    several_runs = df["run_id"].nunique() > 1
    return [f"{r}: {v}" if several_runs else str(v) for r, v in zip(df["run_id"], df["variant"])]


def _colors(engines) -> dict:
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {e: cmap(i % 10) for i, e in enumerate(dict.fromkeys(engines))}


def plot_throughput(df: pd.DataFrame) -> str:
    plt = pyplot()
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
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c, label=e) for e, c in colors.items()], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), title="engine", title_fontsize=7)
    ax.grid(axis="x", which="both", alpha=0.3)
    return to_png(fig)


def plot_speedups(df: pd.DataFrame) -> str | None:
    plt = pyplot()
    sel = df[df["speedup_vs_phase0"].notna() | df["speedup_vs_prev"].notna()]
    if sel.empty:
        return None
    labels = _labels(sel)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.38 * len(sel) + 1.4), sharey=True)
    y = np.arange(len(sel))
    # vs phase 0 spans four decades (log); vs the previous phase is read as a ratio (linear)
    for ax, col, title, scale in ((axes[0], "speedup_vs_phase0", "Speedup vs phase 0", "log"),
                                  (axes[1], "speedup_vs_prev", "Speedup vs previous phase", "linear")):
        v = sel[col].astype(float).to_numpy()
        ok = np.isfinite(v)
        ax.barh(y[ok], v[ok], color=["seagreen" if x >= 1 else "indianred" for x in v[ok]])
        for yi, x in zip(y[ok], v[ok]):
            ax.text(x, yi, f" {x:.3g}x", va="center", fontsize=8)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale(scale)
        ax.set_title(f"{title} ({scale} scale)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.legend(handles=[plt.Rectangle((0, 0), 1, 1, color="seagreen", label="faster (> 1x)"),
                        plt.Rectangle((0, 0), 1, 1, color="indianred", label="slower (< 1x)"),
                        plt.Line2D([], [], color="black", lw=0.8, label="1x = no change")],
               loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    return to_png(fig)


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
    plt = pyplot()
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
    return to_png(fig)


def plot_copy_compute_timeline(records: list[VariantRecord]) -> str | None:
    """Engines that record CUDA-event spans (phase 4's `--option timeline=true`): rank 0's last
    forward call as lanes (ids up, compute, logits down), so overlapping copies are visible."""
    plt = pyplot()
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
    return to_png(fig)


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
    plt = pyplot()
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
    return to_png(fig)
