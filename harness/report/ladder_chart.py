"""The optimization ladder as a chart: samples/s of each phase (log axis, one panel per prompt
length, a bar per rank count), with the speedup over the previous phase written on each bar."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness.engines.base import PHASE_ENGINES
from harness.report.plots import pyplot, to_png

RANK_COLORS = {1: "tab:blue", 2: "tab:orange", 4: "tab:green", 8: "tab:red"}


def ladder_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Phase rows of a frame with roles (headline.with_roles): step (x position), name, speedup
    over the previous step at the same (seq_len, ranks); phase 5 with a label (e.g. ep) is its own
    step after phase 5 and is compared with phase 5."""
    rows = df[df["role"].isin(PHASE_ENGINES) & (df["workload"] != "generate")].copy()
    if rows.empty:
        return rows
    rows["phase_no"] = [PHASE_ENGINES.index(r) for r in rows["role"]]
    rows["step"] = rows["phase_no"] + rows["label"].notna() * 1.0
    rows["step_name"] = [f"phase {p}" + (f"\n{lab}" if isinstance(lab, str) else "")
                         for p, lab in zip(rows["phase_no"], rows["label"])]
    rows["speedup"] = np.nan
    for _, g in rows.groupby(["run_id", "seq_len", "ranks"]):
        plain = g[g["label"].isna()].set_index("phase_no")["samples_per_s"]
        for i, r in g.iterrows():
            prev = r["phase_no"] if isinstance(r["label"], str) else r["phase_no"] - 1
            if prev in plain.index and plain[prev] and r["samples_per_s"] == r["samples_per_s"]:
                rows.at[i, "speedup"] = r["samples_per_s"] / plain[prev]
    return rows


def plot_ladder(df: pd.DataFrame) -> str | None:
    rows = ladder_frame(df)
    if rows.empty or rows["phase_no"].nunique() < 2:
        return None
    plt = pyplot()
    panels = list(rows.groupby(["run_id", "seq_len"], sort=False).groups)  # one per run and prompt length
    several_runs = rows["run_id"].nunique() > 1
    ranks = sorted(rows["ranks"].unique())
    steps = sorted(rows["step"].unique())
    names = {s: rows[rows["step"] == s]["step_name"].iloc[0] for s in steps}
    cols = min(2, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(6.2 * cols, 4.4 * -(-len(panels) // cols)),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    width = 0.8 / len(ranks)
    for ax, (run, seq_len) in zip(axes.flat, panels):
        g = rows[(rows["run_id"] == run) & (rows["seq_len"] == seq_len)]
        for j, rk in enumerate(ranks):
            sel = g[g["ranks"] == rk]
            x = np.array([steps.index(s) for s in sel["step"]]) + (j - (len(ranks) - 1) / 2) * width
            y = sel["samples_per_s"].astype(float).to_numpy()
            ok = np.isfinite(y) & (y > 0)
            ax.bar(x[ok], y[ok], width, color=RANK_COLORS.get(rk, "tab:gray"), label=f"{rk} rank{'s' if rk > 1 else ''}")
            for xi, yi, sp in zip(x[ok], y[ok], sel["speedup"].to_numpy()[ok]):
                ax.text(xi, yi * 1.15, f"{yi:.3g}" + (f"\n{sp:.3g}x" if sp == sp else ""), ha="center",
                        va="bottom", fontsize=7)
            for xi in x[~ok]:
                ax.text(xi, 1.0, "failed", ha="center", rotation=90, color="crimson", fontsize=7)
        ax.set_yscale("log")
        lo, hi = np.nanmin(g["samples_per_s"]), np.nanmax(g["samples_per_s"])
        if np.isfinite(lo) and np.isfinite(hi):
            ax.set_ylim(lo / 3, hi * 30)
        ax.set_xticks(range(len(steps)), [names[s] for s in steps], fontsize=8)
        ax.set_title((f"{run}: " if several_runs else "") + f"{seq_len}-token prompts (fp32): samples/s, and speedup "
                     "over the previous phase", fontsize=9)
        ax.set_ylabel("samples/s (log scale)")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return to_png(fig)
