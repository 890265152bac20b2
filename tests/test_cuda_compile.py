"""Every CUDA source in the project compiles for the H100 (sm_90), and compiled cubins are cached.
Needs nvcc only (no GPU); skipped where nvcc is absent."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.gpu import compile as gpu_compile

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"build", "dist", "__pycache__", "results", "node_modules"}


def project_cu_files() -> list[Path]:
    """*.cu under the repository, outside hidden folders (.git, .devwheels, ...) and build output."""
    found = []
    for path in sorted(ROOT.rglob("*.cu")):
        parts = path.relative_to(ROOT).parts[:-1]
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        found.append(path)
    return found


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def test_the_kernel_sources_are_found():
    found = set(project_cu_files())
    assert {ROOT / "baseline" / "kernels.cu", ROOT / "optimized" / "gemv.cu", ROOT / "optimized" / "router.cu",
            ROOT / "bench" / "hbm_read.cu"} <= found


@needs_nvcc
@pytest.mark.parametrize("cu", project_cu_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_for_sm90(cu, tmp_path):
    cmd = ["nvcc", "--cubin", "-arch=sm_90", "-O3", f"-I{cu.parent}", "-o", str(tmp_path / "k.cubin"), str(cu)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stderr}"
    assert (tmp_path / "k.cubin").stat().st_size > 0


@needs_nvcc
def test_wgmma_kernels_compile_for_sm90a_without_serialized_wgmma(tmp_path):
    """moe_wgmma.cu is built for sm_90a (kernels.py); ptxas must not serialize its wgmmas (warning
    C7518, e.g. after a branch around them), which would quietly cost most of their speed."""
    cu = ROOT / "optimized" / "moe_wgmma.cu"
    cmd = ["nvcc", "--cubin", "-arch=sm_90a", "-O3", f"-I{cu.parent}", "-o", str(tmp_path / "k.cubin"), str(cu)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stderr}"
    assert "C7518" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert b"moe_gateup_wg256_bf16" in (tmp_path / "k.cubin").read_bytes()


@needs_nvcc
def test_cubin_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("LFM2_CUBIN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void f(float* x) { x[threadIdx.x] = 1.0f; }\n')
    first = gpu_compile.compile_cubin(src, "sm_90")
    assert len(list((tmp_path / "cache").glob("*.cubin"))) == 1

    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(gpu_compile.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    assert gpu_compile.compile_cubin(src, "sm_90") == first
    assert calls == []  # served from the cache, nvcc not called

    (tmp_path / "extra.cuh").write_text("// a header beside the source changes the key\n")
    gpu_compile.compile_cubin(src, "sm_90")
    assert len(calls) == 1
    assert len(list((tmp_path / "cache").glob("*.cubin"))) == 2


@needs_nvcc
def test_compile_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LFM2_CUBIN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "broken.cu"
    src.write_text('extern "C" __global__ void f(float* x) { x[threadIdx.x] = undefined_name; }\n')
    with pytest.raises(gpu_compile.KernelCompileError, match="broken.cu"):
        gpu_compile.compile_cubin(src, "sm_90")
