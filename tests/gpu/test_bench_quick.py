"""Every bench/ script's smallest configuration (--quick) runs on the GPU, passes the check of every
version it times and prints their result lines: the kernel workshop cannot rot unnoticed."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common", "phase_parts"))
RUNS = [(s, []) for s in SCRIPTS] + [("phase_parts", ["--phase", str(n)]) for n in range(1, 6)]


@pytest.mark.parametrize("script,extra", RUNS, ids=[" ".join([s, *e]) for s, e in RUNS])
def test_quick_run_validates_and_prints_its_lines(gpu, capsys, script, extra):
    module = importlib.import_module(f"bench.{script}")
    code = module.main(["--quick", "--device", str(gpu.index), *extra])
    out = capsys.readouterr().out
    print(out)
    results = [line for line in out.splitlines() if line.startswith(("v", "phase")) and " | " in line]
    assert code == 0, out
    assert results and not any("FAIL" in line for line in results), out
    assert all(line.split("|")[1].strip() != "nan" for line in results), out
