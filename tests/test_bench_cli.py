"""bench/ on the CPU: every script answers --help, refuses bad options the argparse way, says
clearly that it needs a GPU; the shared helpers (bench/common.py) and the scripts' torch
references compute what they claim. The scripts' own runs are tests/gpu/test_bench_quick.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import common

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common"))


def test_the_scripts_are_found():
    assert {"hbm_read", "gemv", "moe_gemm", "attention", "logits_download", "decode_step", "phase_parts",
            "dense_fp32"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_versions_and_the_command(script):
    run = subprocess.run([sys.executable, "-m", f"bench.{script}", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"python -m bench.{script}" in run.stdout
    assert "--quick" in run.stdout and "--versions" in run.stdout
    assert "phases" in run.stdout if script == "phase_parts" else "versions:" in run.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_says_it_needs_a_gpu(script, monkeypatch, capsys):
    import harness.gpu

    def no_gpu(*a, **k):
        raise harness.gpu.GPUUnavailable("no CUDA GPU is visible")
    monkeypatch.setattr(harness.gpu, "get_context", no_gpu)
    module = __import__(f"bench.{script}", fromlist=["main"])
    argv = ["--quick"] + (["--phase", "2"] if script == "phase_parts" else [])
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2
    assert "error: no GPU: no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--versions", "9"], "no version '9'; choose from 1 sdpa, 2 simt, 3 mma"),
    (["--shapes", "64by16"], "'64by16' is not BxS"),
    (["--trials", "0"], "--trials must be >= 1"),
])
def test_bad_options_exit_2_with_the_reason(argv, message, capsys):
    from bench import attention
    with pytest.raises(SystemExit) as e:
        attention.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_chosen_keeps_the_script_order_and_takes_numbers_or_names():
    ap = common.parser("doc", "prog")
    assert common.chosen(ap, ["a", "b", "c"], "all") == ["a", "b", "c"]
    assert common.chosen(ap, ["a", "b", "c"], "c,1") == ["a", "c"]
    with pytest.raises(SystemExit):
        common.chosen(ap, ["a", "b", "c"], "4")


def test_int_list_refuses_zero_and_words():
    ap = common.parser("doc", "prog")
    assert common.int_list(ap, "16, 64", "--tokens") == [16, 64]
    for bad in ("0", "x", ""):
        with pytest.raises(SystemExit):
            common.int_list(ap, bad, "--tokens")


def test_max_err_is_relative_to_the_largest_reference_value():
    want = torch.tensor([1.0, -4.0, 2.0])
    assert common.max_err(torch.tensor([1.0, -4.0, 2.2]), want) == pytest.approx(0.2 / 4)
    assert common.max_err(torch.tensor([1.0, float("nan"), 2.0]), want) == float("inf")
    assert common.mismatch(torch.tensor([1, 2, 3, 5]), torch.tensor([1, 2, 4, 5])) == 0.25


def test_poison_fills_what_no_kernel_writes():
    assert torch.isnan(common.poison(torch.zeros(3))).all()
    assert (common.poison(torch.zeros(3, dtype=torch.int32)) == -1).all()


def test_a_line_over_tolerance_fails_the_script(capsys):
    lines = common.Lines("title")
    lines.line("v1 ok", 0.5, nbytes=1e9, flops=2e9, err=1e-4, tol=1e-3)
    lines.line("v2 bad", 0.5, err=float("nan"), tol=1e-3)
    lines.line("v3 no check", 0.25)
    out = capsys.readouterr().out.splitlines()
    assert out[1].split("|")[0].strip() == "name"
    columns = [[c.strip() for c in line.split("|")] for line in out[2:]]
    assert columns[0] == ["v1 ok", "0.5000", "2000.0", "4.00", "1.0e-04"]  # 1 GB and 2 GFLOP in 0.5 ms
    assert columns[1][-1].startswith("nan FAIL")
    assert columns[2] == ["v3 no check", "0.2500", "-", "-", "-"]
    assert lines.exit_code() == 1 and lines.failed == ["v2 bad"]


def test_wall_ms_takes_turns_and_keeps_before_off_the_clock():
    calls = []
    ms = common.wall_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, lambda: None, trials=2,
                        warmup=1, before={"b": lambda: calls.append("before b")})
    assert calls == ["a", "before b", "b"] * 3
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())


def test_hbm_read_reference_is_the_xor_of_each_slice():
    from bench.hbm_read import xor_per_block
    words = torch.randint(-2**31, 2**31 - 1, (4 * 1024,), dtype=torch.int32)
    want = np.bitwise_xor.reduce(words.numpy().reshape(4, -1), axis=1)
    assert xor_per_block(words, 4).numpy().tolist() == want.tolist()


def test_attention_reference_is_causal_gqa_attention():
    from bench.attention import reference
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(reference(q, k, v), want)


def test_every_phase_part_is_a_method_of_both_engines():
    from bench.phase_parts import PARTS
    from harness.engines.base import PHASE_ENGINES, engine_class
    assert sorted(PARTS) == [1, 2, 3, 4, 5]
    for phase, parts in PARTS.items():
        for name in PHASE_ENGINES[phase - 1:phase + 1]:
            for part in parts:
                assert callable(getattr(engine_class(name), part, None)), f"{name} has no {part}"


def test_moe_gemm_versions_are_torch_then_the_engine_variants():
    from bench.moe_gemm import versions
    from optimized.kernels import MOE_VARIANTS
    assert versions() == ["torch", *MOE_VARIANTS]
