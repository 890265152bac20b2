"""Phase 5's placement by measured load, on the CPU: the cost model fitted to measured points
(expert_cost.py), the plan and the drift decision (load_plan.py), and the engine's calibration and
drift checks (measured_placement.py) driven by a stand-in for the GPU and the group.

The test the roadmap's claim rests on: on the routing of a skewed synthetic model (what `--skew`
builds; read from the reference forward), the placement made from measured load puts the busiest
shard within 10 % of the even share while the contiguous placement is over 1.5x. It fails when
balancing does nothing, since doing nothing IS the contiguous placement."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness.checkpoints.synthetic import synthetic_checkpoint
from harness.config import get_preset
from harness.engines.reference import reference_forward
from harness.jobs.files import synthetic_prompts
from phases.phase5.expert_cost import ExpertCostModel, fit_cost_model
from phases.phase5.load_plan import drift_decision, measured_imbalance, plan_placement
from phases.phase5.measured_placement import MeasuredPlacement
from phases.phase5.placement import contiguous_placement, shard_loads

# The real model's expert on the phase-0 GEMM (~5.5 TFLOP/s): 6 x 2048 x 1792 FLOPs per row ~ 4 us;
# its 44 MB of weights read once per launch ~ 15 us.
TRUE_COST = ExpertCostModel(fixed_s=15e-6, per_row_s=4e-6)
SKEW, SHARDS = 0.5, 4


def measured_points(rows_by_layer: dict, placement: dict, shards: int, seed: int, noise: float = 0.05):
    """What the shards' CUDA events would report under `placement`: (experts with rows, rows,
    seconds) per shard and layer, the true cost with multiplicative noise."""
    rng = np.random.default_rng(seed)
    points = []
    for layer, rows in rows_by_layer.items():
        for s in range(shards):
            mine = rows[placement[layer] == s]
            active, n = int((mine > 0).sum()), int(mine.sum())
            points.append((active, n, float(TRUE_COST.shard_seconds(active, n)) * rng.normal(1.0, noise)))
    return points


@pytest.fixture(scope="module")
def skewed_routing():
    """Rows per expert per MoE layer: 64 prompts x 16 tokens through a synthetic model of 32
    experts, top-4, with expert_bias skewed by 0.5 (`--skew 0.5`), small widths."""
    cfg = dataclasses.replace(get_preset("tiny"), num_experts=32, num_experts_per_tok=4, name="tiny-32x4")
    ckpt = synthetic_checkpoint(cfg, seed=0, skew=SKEW)
    tokens = synthetic_prompts(cfg.vocab_size, 64, 16, seed=0)
    out = reference_forward(ckpt, tokens, dtype=torch.float32, debug=True)
    return {layer: np.bincount(out.router_indices[layer].reshape(-1).numpy(), minlength=32)
            for layer in cfg.moe_layers}


def per_layer_busiest_over_even(rows_by_layer, placement, shards) -> float:
    """Per layer the busiest shard's true seconds, summed, over the even share."""
    secs = {l: TRUE_COST.expert_seconds(r) for l, r in rows_by_layer.items()}
    busiest = sum(shard_loads(secs[l], placement[l], shards).max() for l in secs)
    return busiest / (sum(s.sum() for s in secs.values()) / shards)


def test_skewed_routing_measured_placement_within_10pct_contiguous_over_1_5x(skewed_routing, capsys):
    contiguous = {l: contiguous_placement(32, SHARDS) for l in skewed_routing}
    model = fit_cost_model(measured_points(skewed_routing, contiguous, SHARDS, seed=1))
    placed, report = plan_placement(skewed_routing, model, contiguous, SHARDS)
    before = per_layer_busiest_over_even(skewed_routing, contiguous, SHARDS)
    after = per_layer_busiest_over_even(skewed_routing, placed, SHARDS)
    totals = sum(shard_loads(TRUE_COST.expert_seconds(r), placed[l], SHARDS) for l, r in skewed_routing.items())
    with capsys.disabled():
        print(f"\nskew {SKEW}, {SHARDS} shards: busiest shard per layer over the even share, contiguous {before:.2f}x "
              f"-> measured-load placement {after:.2f}x; fitted cost {model.fixed_s * 1e6:.1f} us + "
              f"{model.per_row_s * 1e6:.2f} us/row; {report['experts_moved']} experts moved")
    assert before > 1.5
    assert after <= 1.10
    assert totals.max() <= 1.10 * totals.mean()  # each rank's total over the layers too
    assert report["imbalance_before"] > 1.5 and report["imbalance_after"] <= 1.10  # what the record says


def test_cost_model_fit_recovers_fixed_and_per_row(skewed_routing):
    contiguous = {l: contiguous_placement(32, SHARDS) for l in skewed_routing}
    points = measured_points(skewed_routing, contiguous, SHARDS, seed=2, noise=0.02)
    points += measured_points(skewed_routing, {l: np.arange(32) % SHARDS for l in skewed_routing}, SHARDS, seed=3,
                              noise=0.02)
    model = fit_cost_model(points)
    assert model.points == sum(1 for p in points if p[1] > 0) and model.measured  # shards without rows say nothing
    assert model.per_row_s == pytest.approx(TRUE_COST.per_row_s, rel=0.05)
    # The fixed part (15 us) is small next to hundreds of rows x 4 us, so the fit pins it loosely;
    # what matters is the time it predicts for an expert's typical load.
    for rows in (50, 300, 1000):
        assert model.expert_seconds([rows])[0] == pytest.approx(TRUE_COST.expert_seconds([rows])[0], rel=0.1)
    assert model.residual < 0.05


def test_cost_model_without_distinct_points_is_proportional_to_rows():
    model = fit_cost_model([(2, 100, 1e-3), (2, 100, 1e-3), (0, 0, 0.0)])
    assert model.fixed_s == 0.0 and model.per_row_s == pytest.approx(1e-5)
    assert fit_cost_model([]) == ExpertCostModel.rows_only()
    negative = fit_cost_model([(1, 10, 1.0), (2, 20, 1.0), (3, 10, 1.2)])  # more experts, fewer rows: slower
    assert negative.fixed_s >= 0 and negative.per_row_s >= 0
    assert TRUE_COST.expert_seconds([0, 1, 10]).tolist() == [0.0, pytest.approx(19e-6), pytest.approx(55e-6)]


def test_plan_report_adds_up(skewed_routing):
    contiguous = {l: contiguous_placement(32, SHARDS) for l in skewed_routing}
    placed, report = plan_placement(skewed_routing, TRUE_COST, contiguous, SHARDS)
    total = int(sum(r.sum() for r in skewed_routing.values()))
    assert report["rows"] == sum(report["shard_rows_before"]) == sum(report["shard_rows_after"]) == total
    assert sum(report["shard_seconds_before"]) == pytest.approx(sum(report["shard_seconds_after"]))
    assert report["critical_seconds_after"] < report["critical_seconds_before"]
    assert report["experts_moved"] == sum(int((placed[l] != contiguous[l]).sum()) for l in placed)
    assert set(report["layers"]) == {str(l) for l in skewed_routing}
    for l in placed:
        assert np.bincount(placed[l], minlength=SHARDS).tolist() == [8] * SHARDS  # memory stays even


def test_measured_imbalance_is_per_layer_busiest_over_even():
    assert measured_imbalance([[1.0, 1.0], [1.0, 1.0]]) == 1.0
    # rank 0 slow in layer 0, rank 1 in layer 1: totals are even, the layers are not
    assert measured_imbalance([[3.0, 1.0], [1.0, 3.0]]) == pytest.approx(6.0 / 4.0)
    assert measured_imbalance(np.zeros((2, 3))) == 1.0


def test_drift_decision():
    rows = {1: np.array([400, 400, 10, 10, 10, 10, 10, 10])}
    hot_together = {1: np.array([0, 0, 0, 0, 1, 1, 1, 1])}
    steady = drift_decision(rows, TRUE_COST, hot_together, 2, [[1.0], [1.05]], threshold=0.1)
    assert steady == {"measured_imbalance": pytest.approx(1.05 / 1.025), "replace": False}
    drifted = drift_decision(rows, TRUE_COST, hot_together, 2, [[3.0], [0.2]], threshold=0.1)
    assert drifted["replace"] and drifted["predicted_gain"] > 1.5
    assert sorted(drifted["placement"][1][:2].tolist()) == [0, 1]  # the two hot experts apart
    one_hot = {1: np.array([1000, 10, 10, 10, 10, 10, 10, 10])}  # no placement can even this out
    unfixable = drift_decision(one_hot, TRUE_COST, {1: np.array([0, 1, 1, 1, 0, 0, 0, 1])}, 2, [[3.0], [0.2]], 0.1)
    assert unfixable["measured_imbalance"] > 1.1 and not unfixable["replace"]


# ----- the engine mixin, driven without a GPU -----------------------------------------------------
class GroupOfTwoAsRankZero:
    """The node's group as its rank 0 sees it; the other rank's numbers come from the stand-in engine."""
    is_root, size, rank = True, 2, 0

    def __init__(self, engine):
        self.engine = engine

    def allreduce_max(self, value):
        return value

    def gather_object(self, obj):
        return [obj, self.engine.other_points]

    def bcast_object(self, obj):
        return obj

    def allgather_floats(self, values):
        return np.stack([np.asarray(values, np.float64), [self.engine.other_seconds[l] for l in sorted(self.engine.other_seconds)]])


class ForwardHooks:
    def after_forward(self):
        pass


class StandIn(MeasuredPlacement, ForwardHooks):
    """What moe_ep_dev reports for two ranks, with routing drawn from `traffic` (per layer, the
    probability of each expert) and seconds from TRUE_COST under the current placement."""

    def __init__(self, traffic: dict, **options):
        self.config = dataclasses.replace(get_preset("tiny"), num_experts=8, num_experts_per_tok=2)
        self.options, self.traffic, self.rng = options, traffic, np.random.default_rng(0)
        self.counters = type("C", (), {"extra": {}})()
        self.ep_size, self.ep_rank = 2, 0
        self.group = GroupOfTwoAsRankZero(self)
        self.placement = {l: contiguous_placement(8, 2) for l in self.config.moe_layers}
        self.moves = []
        self.other_points = []
        self.setup_measured_placement()

    def placement_lists(self):
        return {str(l): p.tolist() for l, p in self.placement.items()}

    def _window_reset(self):
        super()._window_reset()
        self.other_seconds = {l: 0.0 for l in self.config.moe_layers}

    def move_experts(self, new):
        moved = int(sum((new[l] != self.placement[l]).sum() for l in new))
        self.placement = {l: np.asarray(p).copy() for l, p in new.items()}
        self.moves.append(moved)
        return moved

    def forward(self, tokens):
        for layer in self.config.moe_layers:
            rows = self.rng.multinomial(len(tokens) * 16 * 2, self.traffic[layer]) if len(tokens) else np.zeros(8, int)
            for shard in (0, 1):
                mine = rows[self.placement[layer] == shard]
                active, n = int((mine > 0).sum()), int(mine.sum())
                seconds = float(TRUE_COST.shard_seconds(active, n))
                if shard == 0:
                    self.observe_layer(layer, rows, active, n, seconds)
                else:
                    self.other_seconds[layer] += seconds
                    if self._points is not None:
                        self.other_points.append((active, n, seconds))
        self.after_forward()


def hot(first: int, second: int) -> np.ndarray:
    p = np.full(8, 0.02)
    p[[first, second]] = 0.44
    return p / p.sum()


def test_calibration_places_by_measured_load_and_records_it():
    eng = StandIn({l: hot(0, 1) for l in (1, 2, 3)})  # experts 0 and 1 both on shard 0 when contiguous
    tokens = np.zeros((40, 16), np.int32)
    eng.calibrate(tokens, batch=8)
    cal = eng.counters.extra["ep_balance"]
    assert cal["calibration_forwards"] == 2 and cal["calibration_samples_per_rank"] == 16
    assert cal["imbalance_before"] > 1.5 and cal["imbalance_after"] < 1.1
    assert eng.cost_model.measured and eng.cost_model.per_row_s == pytest.approx(4e-6, rel=1e-6)
    for l in (1, 2, 3):
        assert eng.placement[l][0] != eng.placement[l][1]  # the two hot experts apart
    assert eng.counters.extra["ep_placement_source"].startswith("measured: calibration over the first 2 batch")
    eng.counters.extra = {k: v for k, v in eng.counters.extra.items() if k.startswith("ep_balance")}  # the reset
    for _ in range(8):
        eng.forward(tokens[:8])
    assert eng.moves == [cal["experts_moved"]]  # steady traffic: drift checks move nothing
    assert eng.counters.extra["ep_drift_checks"] == 2
    info = [{"host": "n0", "counters": {**eng.counters.extra, "ep_rank": 0}},
            {"host": "n0", "counters": {**eng.counters.extra, "ep_rank": 1}}]
    fields = eng.record_fields(info)
    assert fields["expert_shards"] == 2 and fields["ep_replacements"] == 0
    assert fields["ep_imbalance_predicted"] == pytest.approx(1.0)  # both ranks reported rank 0's counters here
    node = fields["expert_placement"]["n0"]
    assert node["calibration"] is cal and node["per_rank"][0]["rows_served"] > 0
    assert node["per_rank"][0]["predicted_s"] == pytest.approx(node["per_rank"][0]["measured_s"])


def test_drift_moves_experts_once_the_traffic_changes():
    traffic = {l: hot(0, 4) for l in (1, 2, 3)}  # one hot expert per shard: the contiguous layout is fine
    eng = StandIn(traffic, rebalance_window=2)
    tokens = np.zeros((16, 16), np.int32)
    eng.calibrate(tokens, batch=8)
    calibrated = list(eng.moves)
    eng.forward(tokens[:8])
    eng.forward(tokens[:8])
    assert eng.moves == calibrated and "ep_replacements" not in eng.counters.extra
    assert eng.counters.extra["ep_drift_checks"] == 1
    for l in (1, 2, 3):  # now expert 0 and another expert of its shard take the rows
        partner = next(e for e in range(1, 8) if eng.placement[l][e] == eng.placement[l][0])
        traffic[l][:] = hot(0, partner)
    eng.forward(tokens[:8])
    eng.forward(tokens[:8])
    (event,) = eng.counters.extra["ep_replacements"]
    assert event["measured_imbalance"] > 1.5 and event["predicted_gain"] > 1.5 and event["experts_moved"] > 0
    assert len(eng.moves) == len(calibrated) + 1
    for l in (1, 2, 3):
        assert eng.placement[l][0] != eng.placement[l][np.argmax(traffic[l][1:]) + 1]  # apart again


@pytest.mark.parametrize("rebalance,moves", [("once", 1), ("never", 0)])
def test_once_and_never(rebalance, moves):
    traffic = {l: hot(0, 1) for l in (1, 2, 3)}
    eng = StandIn(traffic, rebalance=rebalance, rebalance_window=1)
    eng.calibrate(np.zeros((16, 16), np.int32), batch=8)
    for _ in range(3):
        eng.forward(np.zeros((8, 16), np.int32))
    assert sum(1 for m in eng.moves if m) == moves and "ep_drift_checks" not in eng.counters.extra
    assert eng.counters.extra["ep_balance"]["applied"] is (rebalance != "never")
    assert eng.counters.extra["ep_balance"]["imbalance_before"] > 1.5  # measured either way


def test_bad_options_say_what_to_do():
    with pytest.raises(ValueError, match="choose 'drift'"):
        StandIn({}, rebalance="first")
    with pytest.raises(ValueError, match="rebalance_window"):
        StandIn({}, rebalance_window=0)
