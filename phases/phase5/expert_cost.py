"""What a shard's experts cost in one MoE layer, in seconds: the model the placement balances.

The expert-parallel path runs phase 2's experts_dev on the rows a shard receives: for each of
its experts that has rows, two GEMMs [rows, H] x [H, I], the SwiGLU and a GEMM [rows, I] x [I, H].
That is a part per active expert (four launches, and the expert's 3 x H x I weights read from
memory whatever the row count: 44 MB in fp32 for the real model, ~15 us at 3 TB/s) and a part
per row (the GEMMs' 6 H I FLOPs). So one expert with r > 0 rows costs

    fixed_s + per_row_s * r          (0 when r = 0: an expert without rows launches nothing)

and a shard's layer time is fixed_s * (its experts with rows) + per_row_s * (its rows).

Where the two numbers come from: during calibration every rank times its experts_dev call of each
MoE layer with two CUDA events on the compute stream (one pair per layer, read after the stream
sync the exchange does anyway, so nothing waits for them), giving points (experts with rows,
rows, seconds); fit_cost_model solves the least squares for (fixed_s, per_row_s), both kept
>= 0. Timing each expert alone would need an event pair and a sync per expert, which is the
intrusion this avoids; the per-layer points differ in both row count and active experts (routing
varies by layer and by batch), which is what separates the two terms. Where they cannot be told
apart (one distinct point), the cost is taken as proportional to rows. With ranks sharing a GPU
the events also count time the other rank's kernels held the GPU: the seconds are inflated (on
every rank alike, roughly) and noisier, which the record's measured-vs-predicted numbers show.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class ExpertCostModel:
    fixed_s: float  # per expert with rows in a layer
    per_row_s: float  # per routed (token, expert) row
    points: int = 0  # measured (active experts, rows, seconds) points it was fitted to; 0: not measured
    residual: float | None = None  # relative RMS error of the fit on its points

    @classmethod
    def rows_only(cls) -> "ExpertCostModel":
        """Before any measurement: cost = rows (in row units, one 'second' per row)."""
        return cls(fixed_s=0.0, per_row_s=1.0)

    @property
    def measured(self) -> bool:
        return self.points > 0

    def expert_seconds(self, rows) -> np.ndarray:
        """Expected seconds of each expert running `rows` [E] rows (0 for an expert with none)."""
        rows = np.asarray(rows, np.float64)
        return np.where(rows > 0, self.fixed_s + self.per_row_s * rows, 0.0)

    def shard_seconds(self, active_experts, rows) -> np.ndarray:
        """Expected seconds of shards running `active_experts` experts over `rows` rows in a layer."""
        return self.fixed_s * np.asarray(active_experts, np.float64) + self.per_row_s * np.asarray(rows, np.float64)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_cost_model(points) -> ExpertCostModel:
    """Least squares of seconds = fixed_s * active + per_row_s * rows over measured points
    [(active experts, rows, seconds), ...], both coefficients >= 0 (a negative one is set to 0 and
    the other refitted alone). Points with no rows carry no information and are skipped."""
    pts = np.array([p for p in points if p[1] > 0], np.float64).reshape(-1, 3)
    if not len(pts):
        return ExpertCostModel.rows_only()
    X, y = pts[:, :2], pts[:, 2]
    if np.linalg.matrix_rank(X) < 2:
        fixed, per_row = 0.0, float(y @ X[:, 1] / (X[:, 1] @ X[:, 1]))
    else:
        fixed, per_row = (float(v) for v in np.linalg.lstsq(X, y, rcond=None)[0])
        if fixed < 0:
            fixed, per_row = 0.0, float(y @ X[:, 1] / (X[:, 1] @ X[:, 1]))
        elif per_row < 0:
            fixed, per_row = float(y @ X[:, 0] / (X[:, 0] @ X[:, 0])), 0.0
    model = ExpertCostModel(max(fixed, 0.0), max(per_row, 0.0), points=len(pts))
    predicted = model.shard_seconds(X[:, 0], X[:, 1])
    scale = float(np.sqrt(np.mean(y ** 2))) or 1.0
    return replace(model, residual=float(np.sqrt(np.mean((predicted - y) ** 2)) / scale))
