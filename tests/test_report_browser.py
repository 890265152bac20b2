"""report.html in a real headless browser (Chromium from Debian's packages): it renders offline,
shows every variant, and every embedded plot decodes as an image.

The page under test is a copy of the report with a small script appended that records, after the
load event, how many <img> there are and how many decoded; `--dump-dom` returns the DOM after it.
"""
from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest

from harness.report.records import VariantRecord
from harness.report.html import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]
PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
         "document.body.dataset.images=i.length;"
         "document.body.dataset.decoded=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
         "const t=document.querySelector('#summary table');"
         "document.body.dataset.summaryRight=t?Math.ceil(t.getBoundingClientRect().right):0;});</script>")


def _chromium(tmp_path, *args) -> str:
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def rendered_dom(html_path, tmp_path) -> tuple[str, int, int]:
    dom, facts = rendered(html_path, tmp_path)
    return dom, facts["images"], facts["decoded"]


def rendered(html_path, tmp_path, width: int = 1400) -> tuple[str, dict]:
    """The DOM after load in a `width`-pixel window, and what the probe measured: images, decoded,
    summaryRight (the right edge of the summary table, px)."""
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(tmp_path, f"--window-size={width},1000", "--dump-dom", probe.as_uri())
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dom, {k: int(v) for k, v in re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1))}


def _nvml_series(seconds: float, util: float, rx: float, rng) -> dict:
    t = [round(0.1 * i, 2) for i in range(int(seconds / 0.1))]
    return {"available": True, "note": "", "device_index": 0, "device_name": "NVIDIA H100 80GB HBM3",
            "pci_bus_id": None, "t_s": t,
            "gpu_util_pct": [min(100.0, max(0.0, util + rng.uniform(-5, 5))) for _ in t],
            "mem_used_gb": [2.0 + 0.01 * i for i in range(len(t))],
            "pcie_rx_gbps": [max(0.0, rx + rng.uniform(-0.5, 0.5)) for _ in t],
            "pcie_tx_gbps": [0.1 for _ in t]}


def fake_gpu_run(folder, run_id: str, scale: float = 1.0) -> list[str]:
    """Records shaped like a GPU comparison (phases 0-5, optimized, hf; 1 and 2 ranks; one crash),
    so every plot of the report has data on a machine without a GPU."""
    rng = random.Random(run_id)
    names = []
    engines = [("baseline", 0, 0.3), ("phase1", 1, 0.5), ("phase2", 2, 6.0), ("phase3", 3, 9.0),
               ("phase4", 4, 60.0), ("phase5", 5, 400.0), ("optimized", None, 900.0), ("hf", None, 500.0)]
    for ranks in (1, 2):
        for engine, phase, sps in engines:
            name = f"{engine}-s16-r{ranks}-b16"
            names.append(name)
            rec = VariantRecord(engine=engine, phase=phase, dtype="fp32", device="NVIDIA H100 80GB HBM3",
                                ranks=ranks, seq_len=16, batch=16, run_id=run_id, variant=name, samples_requested=32,
                                model="synthetic lfm2-8b-a1b (seed 0)", git_commit="abc123", torch_version="2.11",
                                budget_s=60.0)
            if engine == "phase3" and ranks == 2:
                rec.valid, rec.error = False, "loading the engine failed on 1 of 2 rank(s): CUDA error: out of memory"
            else:
                thr = sps * scale * ranks * 0.9 ** (ranks - 1)
                rec.samples = 32 if sps > 1 else 18
                rec.budget_hit = rec.samples < 32
                rec.samples_per_s, rec.tokens_per_s = thr, thr * 16
                rec.latency_p50_ms = rec.latency_p90_ms = rec.latency_p99_ms = 1000.0 / sps
                rec.valid, rec.max_abs_err, rec.top1_agreement = engine != "hf", 1e-5, 1.0
                rec.nvml = [_nvml_series(min(5.0, rec.samples / thr) + 0.3, min(95.0, 5 + sps / 10), 11.0 / (1 + sps / 50),
                                         rng) for _ in range(ranks)]
                for i, s in enumerate(rec.nvml):
                    s["device_index"] = i
            rec.write(folder / "records" / f"{name}.json")
    return names


def test_report_renders_every_variant_and_plot(tmp_path):
    run = tmp_path / "gpu-run"
    names = fake_gpu_run(run, "gpu-run")
    _, html_path, df = write_report([run])
    assert df["speedup_vs_phase0"].notna().sum() == len(names) - 1  # all but the crash
    dom, images, decoded = rendered_dom(html_path, tmp_path)
    # the ladder, throughput, speedups, utilization/PCIe over time, scaling with ranks
    assert images == 5 and decoded == images
    for name in names:
        assert name in dom
    assert "out of memory" in dom and "18 of 32 samples" in dom
    # headline first: phase 5 vs phase 0 at each rank count, and optimized beside hf
    assert dom.index("Headline") < dom.index("Optimization ladder") < dom.index("Summary")
    assert "phase 5 400 vs phase 0 0.3 samples/s" in dom and "optimized 14,400 vs hf 8,000 tokens/s" in dom


def test_side_by_side_report_renders(tmp_path):
    a, b = tmp_path / "before", tmp_path / "after"
    names = fake_gpu_run(a, "before")
    fake_gpu_run(b, "after", scale=1.1)
    _, html_path, df = write_report([a, b], tmp_path / "both")
    assert len(df) == 2 * len(names)
    dom, images, decoded = rendered_dom(html_path, tmp_path)
    assert images == 5 and decoded == 5
    assert "Runs side by side" in dom and "after / before" in dom
    side = dom.split("Runs side by side")[1].split("<tbody>")[1].split("</tbody>")[0]
    assert side.count("<tr>") == len(names) and "not run" not in side  # one row per variant, none empty
    for name in names:
        assert f"before: {name}" in dom or name in dom


def test_screenshot_is_not_blank(tmp_path):
    import matplotlib.image as mpimg
    run = tmp_path / "gpu-run"
    fake_gpu_run(run, "gpu-run")
    _, html_path, _ = write_report([run])
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", html_path.as_uri())
    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # text, tables and plots, not a blank page


SWEEP = [(1, 1, 900, 20), (16, 1, 3_000, 400), (16, 4, 11_000, 1_600), (16, 16, 40_000, 6_000),
         (16, 64, 60_000, 24_000), (512, 8, 146_000, 67_000), (512, 32, 190_000, 80_000)]


def fake_suite_part(results, part: str, shapes, dtype: str = "bf16"):
    """A suite part folder (records + part.json) with optimized and hf at each (seq_len, batch)."""
    from harness.config import get_preset
    from harness.report.part_meta import PartMeta
    folder = results / "h100" / part
    rng = random.Random(part)
    for seq_len, batch, opt, hf in shapes:
        for engine, tps in (("optimized", opt), ("hf", hf)):
            name = f"{engine}-{dtype}-s{seq_len}-r1-b{batch}"
            rec = VariantRecord(engine=engine, dtype=dtype, device="NVIDIA H100 80GB HBM3", seq_len=seq_len, batch=batch,
                                batch_used=batch, samples=256, samples_requested=256, tokens_per_s=float(tps),
                                samples_per_s=tps / seq_len, latency_p50_ms=1e3 * batch * seq_len / tps, gpus=1,
                                valid=False, max_abs_err=0.1, top1_agreement=0.99, run_id=part, variant=name,
                                model="synthetic lfm2-8b-a1b (seed 0)", git_commit="abc123", budget_s=10.0)
            rec.nvml = [_nvml_series(1.0, 90.0, 0.2, rng)]
            rec.write(folder / "records" / f"{name}.json")
    PartMeta(part=part, what=f"{part} of the suite", command=f"python -m harness suite --part {part}", commit="abc123",
             date="2026-12-07 10:00 UTC", device="NVIDIA H100 80GB HBM3", duration_s=120.0,
             model="synthetic lfm2-8b-a1b (seed 0)", model_config=get_preset("lfm2-8b-a1b").to_hf_dict()).write(folder)
    return folder


@pytest.mark.parametrize("part, shapes", [("prefill", [(16, 1, 3_000, 400), (16, 64, 60_000, 24_000),
                                                       (512, 8, 146_000, 67_000), (512, 16, 170_000, 75_000)]),
                                          ("sweep", SWEEP)])
def test_suite_part_report_shows_headline_and_roofline_in_a_1400px_window(tmp_path, part, shapes):
    folder = fake_suite_part(tmp_path / "results", part, shapes)
    _, html_path, _ = write_report([folder])
    dom, facts = rendered(html_path, tmp_path, width=1400)
    assert facts["images"] == facts["decoded"] == 3  # roofline, throughput, NVML (no phases: no speedup bars)
    assert dom.index("Headline") < dom.index("Roofline") < dom.index("Summary")
    assert 'alt="roofline' in dom and "weight streaming" in dom
    assert "optimized 60,000 vs hf 24,000 tokens/s" in dom and "2.5x" in dom
    assert 0 < facts["summary-right"] <= 1400, "the summary table is wider than the window"
    shot = tmp_path / f"{part}.png"
    _chromium(tmp_path, "--window-size=1400,1400", f"--screenshot={shot}", html_path.as_uri())
    import matplotlib.image as mpimg
    top = mpimg.imread(shot)[:1400]
    assert top.std() > 0.05  # the headline table and the roofline fill the first screen


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None, reason="no mpiexec")
def test_end_to_end_compare_report_renders(tmp_path, monkeypatch):
    from harness.__main__ import main as harness_main
    monkeypatch.setenv("LFM2_CACHE", str(tmp_path / "cache"))
    assert harness_main(["compare", "--phases", "none", "--engines", "reference", "--preset", "tiny",
                         "--samples", "4", "--out", str(tmp_path), "--run-id", "e2e", "--no-progress"]) == 0
    dom, images, decoded = rendered_dom(tmp_path / "e2e" / "report.html", tmp_path)
    assert "reference-s16-r1-b1024" in dom and "VALID" in dom
    assert images >= 1 and decoded == images  # throughput plot; CPU runs have no NVML plot
