"""The suite's parts meet the measurement minimums they promise, and `suite --help` says what each costs."""
from __future__ import annotations

import dataclasses

import pytest

from harness.__main__ import main as harness_main
from harness.engines.base import PHASE_ENGINES
from harness.measure.routing import SKEW_70
from harness.report.part_meta import PartMeta
from harness.run.variant import Variant
from harness.suite.parts import JOB_SAMPLES, PARTS, smoke
from harness.suite.runner import gpu_folder


def _variants(part):
    return [(g, s, Variant(g.engine, s.seq_len, g.ranks, s.batch, g.dtype, label=g.label).name)
            for g in part.groups for s in g.shapes]


@pytest.mark.parametrize("name", list(PARTS))
def test_every_variant_of_a_part_has_its_own_name_and_prompt_set(name):
    for part in (PARTS[name], smoke(PARTS[name])):
        names = [n for _, _, n in _variants(part)]
        assert len(names) == len(set(names)), names
    for g, s, _ in _variants(PARTS[name]):
        assert s.samples <= JOB_SAMPLES[s.seq_len] and s.batch >= 1


def test_the_ladders_run_every_phase_at_1_and_2_ranks_and_phase5_with_expert_parallelism():
    # 16 tokens: one part; 128 tokens: one part per rank count, each inside one part's 10 minutes
    for seq_len, names in ((16, ["ladder-16"]), (128, ["ladder-128-r1", "ladder-128-r2"])):
        groups = [g for name in names for g in PARTS[name].groups]
        plain = {(g.engine, g.ranks) for g in groups if not g.options}
        assert plain == {(e, r) for e in PHASE_ENGINES for r in (1, 2)}
        ep = [g for g in groups if g.options]
        assert [(g.engine, g.ranks, dict(g.options), g.label) for g in ep] == [("phase5", 2, {"expert_parallel": True},
                                                                                "ep")]
        for name in names:
            part = PARTS[name]
            assert all(s.seq_len == seq_len and g.dtype is None for g, s, _ in _variants(part))  # phases: fp32
            batches = {s.batch for _, s, _ in _variants(part)}
            assert len(batches) == 1  # one speedup group per (seq_len, ranks)


def test_phases_0_and_1_get_two_timed_samples_at_16_tokens_and_one_unwarmed_at_128():
    for g, s, _ in _variants(PARTS["ladder-16"]):
        if g.engine in PHASE_ENGINES[:2]:
            # ~10 s a sample at 16 tokens: the budget must let the second one start
            assert s.samples >= 2 and s.budget_s > 2 * 10 and s.warmup >= 1
    for name in ("ladder-128-r1", "ladder-128-r2"):
        for g, s, _ in _variants(PARTS[name]):
            if g.engine in PHASE_ENGINES[:2]:
                assert s.samples == g.ranks and s.warmup == 0


def test_prefill_shapes_and_their_minimum_of_10_s_or_256_samples():
    shapes = {(g.engine, g.dtype, s.batch, s.seq_len) for g, s, _ in _variants(PARTS["prefill"])}
    want = {(b, s, d) for d, b, s in [("bf16", 1, 16), ("bf16", 64, 16), ("bf16", 8, 512), ("bf16", 16, 512),
                                      ("fp32", 64, 16)]}
    for engine in ("optimized", "hf"):
        assert {(b, s, d) for e, d, b, s in shapes if e == engine} == want
    for part in ("prefill", "prefill-skew"):
        assert all(s.samples >= 256 or s.budget_s >= 10 for _, s, _ in _variants(PARTS[part]))
    assert PARTS["prefill-skew"].skew == SKEW_70
    assert {(s.batch, s.seq_len) for _, s, _ in _variants(PARTS["prefill-skew"])} == {(64, 16), (8, 512)}


@pytest.mark.parametrize("part", ["prefill", "decode"])
def test_the_headline_parts_profile_the_optimized_engine_so_their_reports_say_where_the_time_goes(part):
    from harness.suite.runner import _members
    groups = PARTS[part].groups
    assert {(g.engine, g.profile_ops) for g in groups} == {("optimized", True), ("hf", False)}
    job = dataclasses.make_dataclass("Job", [("samples", int)])(0)
    jobs = {(s.seq_len, g.workload): job for g in groups for s in g.shapes}
    for g in groups:
        settings = [m[2] for m in _members(g, jobs, part, "cpu")]
        assert len(settings) == len(g.shapes) and all(st.profile_ops == g.profile_ops for st in settings)


def test_decode_accuracy_and_sweep_cover_what_the_issue_asks():
    dec = _variants(PARTS["decode"])
    assert {(g.engine, s.batch) for g, s, _ in dec} == {(e, b) for e in ("optimized", "hf") for b in (1, 64)}
    assert all(g.workload == "generate" and g.max_new_tokens == 64 for g, _, _ in dec)
    acc = _variants(PARTS["accuracy"])
    assert PARTS["accuracy"].kind == "accuracy" and {g.engine for g, _, _ in acc} == {"optimized", "hf"}
    assert all(g.dtype == "bf16" and s.samples >= 128 for g, s, _ in acc)
    tokens = sorted({s.batch * s.seq_len for _, s, _ in _variants(PARTS["sweep"])})
    assert tokens[0] == 1 and tokens[-1] >= 16384 and len(tokens) >= 8
    for engine in ("optimized", "hf"):  # every shape for both engines, in bf16, within hf's max_batch of 64
        assert {(s.batch, s.seq_len) for g, s, _ in _variants(PARTS["sweep"]) if g.engine == engine} == \
            {(s.batch, s.seq_len) for _, s, _ in _variants(PARTS["sweep"])}
    assert all(g.dtype == "bf16" and s.batch <= 64 for g, s, _ in _variants(PARTS["sweep"]))


def test_smoke_stands_the_reference_in_with_few_samples():
    for part in PARTS.values():
        for g, s, name in _variants(smoke(part)):
            assert g.engine == "reference" and g.dtype is None and not g.options and s.samples <= 4
            assert g.label.startswith("as-")


@pytest.mark.parametrize("device, folder", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                            ("NVIDIA A100-SXM4-40GB", "a100"), ("NVIDIA L40S", "l40s"),
                                            ("cpu (AMD EPYC)", "cpu"), ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090")])
def test_device_folder_names(device, folder):
    assert gpu_folder(device) == folder


def test_help_lists_every_part_with_its_cost(capsys):
    with pytest.raises(SystemExit):
        harness_main(["suite", "--help"])
    out = capsys.readouterr().out
    for part in PARTS.values():
        line = next(x for x in out.splitlines() if x.strip().startswith(part.name + " "))
        assert "min" in line, line


def test_help_adds_the_time_a_part_took_where_results_hold_it(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "results" / "h100" / "ladder-16"
    folder.mkdir(parents=True)
    PartMeta("ladder-16", "the ladder", "python -m harness suite --part ladder-16", "0123456789ab", "2026-12-07 09:57 UTC",
             "NVIDIA H100 80GB HBM3", 378.5, "synthetic lfm2-8b-a1b (seed 0)").write(folder)
    current = tmp_path / "results" / "h100" / "prefill"  # measured with the part as it is defined now
    current.mkdir()
    PartMeta("prefill", PARTS["prefill"].what, "python -m harness suite --part prefill", "0123456789abcdef",
             "2026-12-07 16:20 UTC", "NVIDIA H100 80GB HBM3", 156.0, "synthetic lfm2-8b-a1b (seed 0)").write(current)
    (tmp_path / "results" / "h100" / "sweep").mkdir()
    (tmp_path / "results" / "h100" / "sweep" / "part.json").write_text("{not json")  # ignored, not fatal
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        harness_main(["suite", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "measured: 6.3 min on NVIDIA H100 80GB HBM3 at 0123456789ab" in out
    assert "measured: 2.6 min on NVIDIA H100 80GB HBM3 at 0123456789ab (results/h100/prefill)" in out
    assert out.count("measured: ") == 2
    # "the ladder" is not what ladder-16 measures now: the reader is told to re-run it, and only it
    assert out.count("definition has changed since") == 1
    assert "(results/h100/ladder-16; the part's definition has changed since, so re-run it)" in out


def test_a_parts_fingerprint_follows_what_it_measures_not_its_words():
    from dataclasses import replace

    from harness.suite.parts import fingerprint
    part = PARTS["decode"]
    assert fingerprint(replace(part, what="other words", cost="~1 h")) == fingerprint(part)
    fewer = replace(part, groups=tuple(replace(g, shapes=g.shapes[:1]) for g in part.groups))
    assert fingerprint(fewer) != fingerprint(part)
    assert fingerprint(replace(part, skew=0.5)) != fingerprint(part)


def test_help_tells_a_part_measured_under_another_definition_by_its_fingerprint(capsys, tmp_path, monkeypatch):
    from harness.suite.parts import fingerprint
    published = (("prefill", fingerprint(PARTS["prefill"]), "0123456789ab"), ("sweep", "0" * 12, None))
    for name, definition, commit in published:
        folder = tmp_path / "results" / "h100" / name
        folder.mkdir(parents=True)
        PartMeta(name, PARTS[name].what, f"python -m harness suite --part {name}", commit, "2026-12-07 16:20 UTC",
                 "NVIDIA H100 80GB HBM3", 60.0, "synthetic lfm2-8b-a1b (seed 0)", definition=definition).write(folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        harness_main(["suite", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(results/h100/prefill)" in out  # same fingerprint: nothing to say
    assert "(results/h100/sweep; the part's definition has changed since, so re-run it)" in out
    assert "at an unknown commit (results/h100/sweep;" in out  # a part measured outside a git checkout names no commit


def test_unknown_part_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        harness_main(["suite", "--part", "nope"])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
