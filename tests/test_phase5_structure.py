"""Phase 5 on the CPU: registered, built on phase 4, and the layer math is phases 1-4's unchanged
(batching and the MPI work change how a forward is driven, not what a layer computes); expert
parallelism on by default exactly where the node's ranks use more than one GPU; its two ladder
rows (default, expert_parallel=true) are two variants with two names."""
from __future__ import annotations

import json

import pytest

from harness.engines.base import engine_class
from harness.run.variant import Variant
from phases.phase4.engine import Phase4Engine
from phases.phase5.engine import Phase5Engine
from phases.phase5.expert_parallel import expert_parallel_wanted


def test_registered_as_phase5_on_phase4():
    assert engine_class("phase5") is Phase5Engine
    assert issubclass(Phase5Engine, Phase4Engine)
    assert (Phase5Engine.name, Phase5Engine.phase, Phase5Engine.output_collective) == ("phase5", 5, "gather")


def test_layer_math_is_inherited_unchanged():
    for inherited in ("layer_dev", "attention_dev", "conv_dev", "dense_dev", "norm_dev", "route_dev", "group_dev",
                      "experts_dev", "head_dev", "gemm", "embedding_gather", "device_weight", "dalloc", "dfree"):
        assert getattr(Phase5Engine, inherited) is getattr(Phase4Engine, inherited), inherited


def test_what_phase5_changes():
    own = {name for cls in Phase5Engine.__mro__[:Phase5Engine.__mro__.index(Phase4Engine)]
           for name, value in vars(cls).items() if callable(value) and hasattr(Phase4Engine, name)}
    # forward/io (batching), moe_dev (expert parallel, phase 2's path when G = 1), loading, setup, close
    assert own == {"__init__", "setup_device", "load_weights", "io_buffers", "forward", "moe_dev", "close"}


@pytest.mark.parametrize("option,gpus,on", [(None, 1, False), (None, 2, True), ("auto", 8, True), (True, 1, True),
                                            (False, 4, False)])
def test_expert_parallel_default_follows_the_gpus_of_the_node(option, gpus, on):
    wanted, why = expert_parallel_wanted(option, gpus)
    assert wanted is on and why


def test_expert_parallel_option_must_be_a_choice():
    with pytest.raises(ValueError, match="choose true, false or auto"):
        expert_parallel_wanted("yes", 2)


def test_options_of_a_variant_name_it():
    default = Variant("phase5", 16, 2, 64)
    ep = Variant("phase5", 16, 2, 64, options=(("expert_parallel", True),))
    assert default.name == "phase5-s16-r2-b64"
    assert ep.name == "phase5-s16-r2-b64-expert_parallel=true"


def test_a_variants_options_reach_its_ranks_over_the_runs(tmp_path, monkeypatch):
    from harness.jobs.prepare import PreparedJob
    from harness.run import variant as variant_module
    from harness.run.launch import MPILaunchError

    def no_mpiexec(*args, **kwargs):
        raise MPILaunchError("not launched in this test")
    monkeypatch.setattr(variant_module, "launch_worker", no_mpiexec)
    job = PreparedJob("m", "m", tmp_path / "inputs.bin", None, 4, 16)
    settings = variant_module.RunSettings(run_id="t", options={"load": "each", "expert_parallel": False})
    ep = Variant("phase5", 16, 2, 64, options=(("expert_parallel", True),))
    rec = variant_module.run_variant(ep, job, tmp_path, settings)
    assert rec.options == {"load": "each", "expert_parallel": True}
    assert (tmp_path / "records" / f"{ep.name}.json").is_file()
    assert json.loads((tmp_path / "specs" / f"{ep.name}.json").read_text())["options"]["expert_parallel"] is True
