"""Phase 3 end to end on a real GPU: full tiny models against the float64 reference, and the
counters showing exactly what phase 3 changes against phase 2 (per conv layer BCx no longer
comes down and y no longer goes up; the embedding is gathered on the device). Skipped without a GPU."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from harness.config import get_preset
from harness.jobs.files import validate
from harness.engines.reference import reference_logits
from harness.checkpoints.synthetic import synthetic_checkpoint

pytestmark = pytest.mark.gpu

PRESETS = ["tiny", "tiny-top3"]


@pytest.fixture(scope="module", params=PRESETS)
def ckpt(request):
    return synthetic_checkpoint(get_preset(request.param), seed=3)


@pytest.fixture(scope="module")
def engines(gpu, ckpt):
    from phases.phase2.engine import Phase2Engine
    from phases.phase3.engine import Phase3Engine
    built = {cls.name: cls(ckpt, device=gpu.index, progress=False, max_batch=3) for cls in (Phase2Engine, Phase3Engine)}
    yield built
    for eng in built.values():
        eng.close()


def test_registered_as_phase3():
    from harness.engines.base import engine_class
    from phases.phase2.engine import Phase2Engine
    cls = engine_class("phase3")
    assert cls.name == "phase3" and cls.phase == 3 and issubclass(cls, Phase2Engine)


@pytest.mark.parametrize("S", [1, 2, 3, 17])
def test_logits_match_reference(engines, ckpt, rng, S):
    eng = engines["phase3"]
    tokens = rng.integers(0, ckpt.config.vocab_size, size=(3, S), dtype=np.int32)
    got = eng.forward(tokens)
    want = reference_logits(ckpt, tokens, dtype=torch.float64)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err < 1e-4, f"max abs err {err:.3g}"
    v = validate(got, want)
    print(f"phase3 {ckpt.config.name} S={S}: max abs err {err:.3g} vs float64 reference; {v}")
    assert v.valid and v.top1_agreement == 1.0, str(v)
    assert eng.transfers.live_bytes == 0, "a forward leaves nothing allocated"


@pytest.mark.parametrize("S", [1, 17])
def test_counters_against_phase2(engines, ckpt, rng, S):
    """One sample of S tokens through phase 2 and phase 3: the differences are exactly the
    conv blocks' activation round trips and the embedding's table, ids and rows."""
    cfg = ckpt.config
    H, V, L, n_conv = cfg.hidden_size, cfg.vocab_size, cfg.conv_L_cache, len(cfg.conv_layers)
    tokens = rng.integers(0, V, size=(1, S), dtype=np.int32)
    seen = {}
    for name, eng in engines.items():
        eng.counters.reset()
        eng.forward(tokens)
        c = eng.counters
        expert = c.extra.get("expert_h2d_bytes", 0)  # routing may differ in the last bit: set aside
        seen[name] = dict(act_h2d=c.h2d_bytes - c.weight_h2d_bytes, d2h=c.d2h_bytes,
                          other_weights=c.weight_h2d_bytes - expert)
    p2, p3 = seen["phase2"], seen["phase3"]
    assert p2["act_h2d"] - p3["act_h2d"] == n_conv * S * H * 4 - S * 4  # y no longer up; int32 ids up
    assert p2["d2h"] - p3["d2h"] == n_conv * 3 * S * H * 4 - S * H * 4  # BCx no longer down; rows down
    assert p3["other_weights"] - p2["other_weights"] == n_conv * H * L * 4 + V * H * 4  # conv w; table


def test_bad_tokens_rejected(engines, ckpt):
    with pytest.raises(ValueError, match="vocabulary"):
        engines["phase3"].forward(np.array([[1, ckpt.config.vocab_size]], np.int32))
