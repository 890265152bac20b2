"""The engines' roofline: prefill tokens/s against tokens per forward (batch_used x seq_len), with
the compute floor and the weight-streaming floor (measure.floors) on the same axes; beside it, on
linear axes where ratios are read, each engine's % of the floor and optimized / hf."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.measure.floors import PEAK_FLOPS, compute_ceiling_tokens_per_s, streaming_ceiling_tokens_per_s
from harness.report.headline import cell, floor_of
from harness.report.plots import pyplot, to_png

ENGINE_STYLE = {"optimized": ("tab:green", "o"), "hf": ("tab:purple", "s")}


def roofline_points(df: pd.DataFrame, cfg) -> pd.DataFrame:
    """Prefill rows of optimized and hf that ran (a frame with roles): tokens per forward,
    tokens/s and % of the floor, per role and dtype."""
    ok = df[df["role"].isin(list(ENGINE_STYLE)) & (df["workload"] != "generate") & df["error"].isna()
            & df["tokens_per_s"].notna()]
    rows = []
    for _, r in ok.iterrows():
        per_call = int(cell(r, "batch_used") or r["batch"])
        dtype = r["role_dtype"]
        pct = floor_of(r, cfg, dtype)[0]  # the summary's pct_of_floor
        rows.append({"role": r["role"], "dtype": dtype, "seq_len": int(r["seq_len"]), "tokens": per_call * int(r["seq_len"]),
                     "tokens_per_s": float(r["tokens_per_s"]), "pct_floor": pct})
    return pd.DataFrame(rows, columns=["role", "dtype", "seq_len", "tokens", "tokens_per_s", "pct_floor"])


def plot_roofline(df: pd.DataFrame, cfg) -> str | None:
    """None unless some dtype has at least two token counts per forward (nothing to draw a line of)."""
    pts = roofline_points(df, cfg)
    spread = pts.groupby("dtype")["tokens"].nunique() if not pts.empty else pd.Series(dtype=int)
    if spread.empty or spread.max() < 2:
        return None
    dtype = "bf16" if spread.get("bf16", 0) >= 2 else spread.idxmax()
    pts = pts[pts["dtype"] == dtype].sort_values("tokens")
    plt = pyplot()
    fig, (ax, pct_ax, ratio_ax) = plt.subplots(1, 3, figsize=(15, 4.4), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    for role, g in pts.groupby("role"):
        color, marker = ENGINE_STYLE[role]
        ax.plot(g["tokens"], g["tokens_per_s"], marker=marker, color=color, label=f"{role} ({dtype})")
        if g["pct_floor"].notna().any():
            pct_ax.plot(g["tokens"], g["pct_floor"], marker=marker, color=color, label=role)
    t_max = int(pts["tokens"].max())
    if cfg is not None and dtype in PEAK_FLOPS:
        t = np.unique(np.geomspace(1, max(2, t_max) * 2, 200).astype(int))
        seq = int(pts["seq_len"].min())
        compute = compute_ceiling_tokens_per_s(cfg, dtype, seq)
        stream = np.array([streaming_ceiling_tokens_per_s(cfg, dtype, int(x)) for x in t])
        ax.plot(t, np.full(len(t), compute), color="black", ls="--", lw=1,
                label=f"compute floor ({PEAK_FLOPS[dtype] / 1e12:.0f} TFLOP/s)")
        ax.plot(t, stream, color="tab:red", ls=":", lw=1.2, label="weight-streaming floor (3.0 TB/s)")
        ax.plot(t, np.minimum(stream, compute), color="black", lw=2.2, alpha=0.25, label="roofline (the lower)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per forward (batch x seq_len, log)")
    ax.set_ylabel("tokens/s (log)")
    ax.set_title(f"Prefill roofline, {dtype}", fontsize=10)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    pct_ax.axhline(100, color="black", lw=0.8)
    pct_ax.set_xscale("log")
    pct_ax.set_ylim(0, max(105.0, float(pts["pct_floor"].max() or 0) * 1.1) if pts["pct_floor"].notna().any() else 105)
    pct_ax.set_xlabel("tokens per forward (log)")
    pct_ax.set_ylabel("% of the floor (linear)")
    pct_ax.set_title("Share of the floor reached", fontsize=10)
    pct_ax.grid(alpha=0.3)
    if pct_ax.get_legend_handles_labels()[0]:
        pct_ax.legend(fontsize=7)
    wide = pts.pivot_table(index="tokens", columns="role", values="tokens_per_s", aggfunc="median")
    if {"optimized", "hf"} <= set(wide.columns):
        ratio = (wide["optimized"] / wide["hf"]).dropna()
        ratio_ax.plot(ratio.index, ratio.to_numpy(), marker="o", color="tab:green", label="optimized / hf")
        for x, y in ratio.items():
            ratio_ax.annotate(f"{y:.2f}x", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ratio_ax.set_ylim(0, max(1.2, float(ratio.max()) * 1.2) if len(ratio) else 2)
    ratio_ax.axhline(1.0, color="black", lw=0.8, label="parity")
    ratio_ax.set_xscale("log")
    ratio_ax.set_xlabel("tokens per forward (log)")
    ratio_ax.set_ylabel("throughput ratio (linear)")
    ratio_ax.set_title("optimized / hf", fontsize=10)
    ratio_ax.grid(alpha=0.3)
    ratio_ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)
