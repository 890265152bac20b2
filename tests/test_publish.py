"""publish: results/README.md and the README block from part folders, the headline rows behind
them, and the guard that the committed files are what publish makes of the committed results/."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from harness.__main__ import main as harness_main
from harness.config import get_preset
from harness.errors import UsageError
from harness.report.frame import records_frame
from harness.report.headline import headline_rows, text_table
from harness.report.part_meta import PartMeta
from harness.report.records import VariantRecord
from harness.suite.publish import BEGIN, END, render, with_block

ROOT = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"
FULL = get_preset("lfm2-8b-a1b")


def rec(engine, variant, **kw) -> VariantRecord:
    base = dict(dtype="bf16", device=H100, ranks=1, seq_len=16, batch=64, batch_used=64, samples=256,
                samples_requested=256, valid=False, max_abs_err=0.2, top1_agreement=0.99, gpus=1, run_id="x",
                model="synthetic lfm2-8b-a1b (seed 0)", git_commit="abc123def456")
    base.update(kw)
    if base.get("samples_per_s") and not base.get("tokens_per_s"):
        base["tokens_per_s"] = base["samples_per_s"] * base["seq_len"]
    return VariantRecord(engine=engine, variant=variant, **base)


def fake_part(results: Path, part: str, records: list[VariantRecord], kind: str = "throughput",
              smoke: bool = False, date: str = "2026-12-07 10:00 UTC", commit: str = "abc123def456") -> Path:
    folder = results / "h100" / part
    for r in records:
        r.run_id = part
        r.write(folder / "records" / f"{r.variant}.json")
    PartMeta(part=part, what=f"what {part} measures", command=f"python -m harness suite --part {part}",
             commit=commit, date=date, device=H100, duration_s=150.0, model="synthetic lfm2-8b-a1b (seed 0)",
             model_config=FULL.to_hf_dict(), kind=kind, smoke=smoke).write(folder)
    return folder


def prefill_records():
    return [rec("optimized", "optimized-bf16-s16-r1-b64", tokens_per_s=60_000.0),
            rec("hf", "hf-bf16-s16-r1-b64", tokens_per_s=24_000.0),
            rec("optimized", "optimized-bf16-s512-r1-b8", seq_len=512, batch=8, batch_used=8, tokens_per_s=146_000.0),
            rec("hf", "hf-bf16-s512-r1-b8", seq_len=512, batch=8, batch_used=8, error="mpiexec exited with status 1")]


def ladder_records():
    sps = [0.1, 0.1, 0.25, 0.2, 4.5, 124.5]
    out = [rec(f"phase{p}" if p else "baseline", f"p{p}-r1", phase=p, dtype="fp32", batch=1024, batch_used=1 if p < 4 else 8,
               samples_per_s=v, valid=True) for p, v in enumerate(sps)]
    out.append(rec("phase5", "p5-r2", phase=5, dtype="fp32", ranks=2, batch=1024, batch_used=128, samples_per_s=110.0,
                   valid=True))
    out.append(rec("phase5", "p5-r2-ep", phase=5, dtype="fp32", ranks=2, batch=1024, batch_used=128, samples_per_s=165.0,
                   valid=True))
    return out


@pytest.fixture
def tree(tmp_path):
    results = tmp_path / "results"
    fake_part(results, "prefill", prefill_records())
    fake_part(results, "decode", [
        rec("optimized", "optimized-bf16-s16-r1-b1", batch=1, workload="generate", max_new_tokens=64, itl_p50_ms=1.5,
            pct_of_decode_floor=70.7, greedy_steps_checked=32, valid=True),
        rec("hf", "hf-bf16-s16-r1-b1", batch=1, workload="generate", max_new_tokens=64, itl_p50_ms=101.0,
            greedy_steps_checked=32, greedy_first_divergence=12, valid=False)])
    # the ladder part names its phase-5 expert-parallel run through part.json's roles
    folder = fake_part(results, "ladder-16", ladder_records())
    meta = PartMeta.read(folder)
    meta.roles = {"p5-r2-ep": {"role": "phase5", "dtype": "fp32", "label": "ep"}}
    meta.write(folder)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    return results, readme


def test_results_readme_has_one_row_per_measurement_with_its_provenance(tree):
    results, readme = tree
    text = render(results, readme)[results / "README.md"]
    assert "| [prefill](h100/prefill/report.html) | what prefill measures | `python -m harness suite --part prefill` |" \
        in text
    rows = [line for line in text.splitlines() if line.startswith("| prefill |")]
    assert len(rows) == 2
    # 60,000 vs 24,000 tokens/s; 1,024 tokens per forward: weight-streaming floor 184,174 tokens/s
    assert ("| prefill | bf16 64x16 | optimized 60,000 vs hf 24,000 tokens/s | 2.5x | 33 % (weight streaming) | "
            f"INVALID / INVALID | {H100} | abc123def456 | 2026-12-07 10:00 UTC |") in rows
    assert "optimized 146,000 vs hf n/a tokens/s | n/a |" in text and "INVALID / FAILED" in text
    # decode: latency ratio is hf / optimized; validity is the record's verdict
    assert "optimized 1.5 vs hf 101 ms inter-token p50 | 67.3x | 71 % (decode floor) | VALID / INVALID" in text
    ladder = [line for line in text.splitlines() if line.startswith("| ladder-16 |")]
    assert any("phase 5 124 vs phase 0 0.1 samples/s | 1,245x" in x for x in ladder)
    assert any("phase 5 ep 165 vs phase 5 110 samples/s | 1.5x" in x and "2 ranks" in x for x in ladder)
    assert text.index("| ladder-16 |") < text.index("| prefill |") < text.index("| decode |")  # the suite's order


def test_readme_block_is_the_compact_rows_and_nothing_outside_the_markers_changes(tree):
    results, readme = tree
    new = render(results, readme)[readme]
    assert new.startswith("# Project\n\nintro\n\n" + BEGIN + "\n") and new.endswith(END + "\n\nafter\n")
    block = new.split(BEGIN)[1].split(END)[0]
    assert "old table" not in block
    assert "| prefill: bf16 64x16 | optimized 60,000 vs hf 24,000 tokens/s | 2.5x |" in block
    assert "phase 5 124 vs phase 0" in block and "phase 4 4.5 vs phase 3" not in block  # per-phase rows: results only
    assert f"Measured on {H100}, commit abc123def456" in block and "(results/README.md)" in block


def test_parts_measured_on_different_commits_say_which_ran_where(tree):
    results, readme = tree
    fake_part(results, "accuracy", [rec("optimized", "optimized-bf16-s16-r1-b64", valid=True)], commit="fedcba987654")
    block = render(results, readme)[readme].split(BEGIN)[1].split(END)[0]
    assert (f"Measured on {H100}, commit abc123def456 (ladder-16, prefill, decode); {H100}, commit fedcba987654 "
            "(accuracy)") in block


def test_a_whole_hash_prints_as_the_short_commit_and_joins_its_group(tree):
    """LFM2_GIT_COMMIT may carry the whole hash: the tables print its first 12 characters, as
    `git rev-parse --short=12` gives them, so the same commit reads (and groups) the same either way."""
    results, readme = tree
    fake_part(results, "accuracy", [rec("optimized", "optimized-bf16-s16-r1-b64", valid=True)],
              commit="abc123def456" + "0" * 28)
    out = render(results, readme)
    block = out[readme].split(BEGIN)[1].split(END)[0]
    assert f"Measured on {H100}, commit abc123def456." in block
    assert "0" * 28 not in out[results / "README.md"]


def test_publish_writes_then_check_passes_and_catches_an_edit(tree, capsys):
    results, readme = tree
    args = ["publish", "--results", str(results), "--readme", str(readme)]
    assert harness_main(args + ["--check"]) == 1
    assert harness_main(args) == 0
    assert harness_main(args + ["--check"]) == 0
    readme.write_text(readme.read_text().replace("2.5x", "2.6x"))
    assert harness_main(args + ["--check"]) == 1
    assert "README.md differs" in capsys.readouterr().err


def test_markers_missing_or_a_smoke_part_are_usage_errors(tree, capsys):
    results, readme = tree
    with pytest.raises(UsageError, match="suite-table:begin"):
        with_block("no markers here\n", "x", readme)
    with pytest.raises(UsageError, match="in that order"):
        with_block(f"{END}\n{BEGIN}\n", "x", readme)
    fake_part(results, "sweep", prefill_records(), smoke=True)
    assert harness_main(["publish", "--results", str(results), "--readme", str(readme)]) == 2
    assert "--smoke run" in capsys.readouterr().err


def test_no_parts_says_how_to_measure(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    out = render(tmp_path / "results", readme)
    assert "No part has been measured yet" in out[tmp_path / "results" / "README.md"]
    assert "No suite results yet" in out[readme] and "](results/README.md)" in out[readme]


def test_accuracy_rows_read_the_accuracy_columns_when_records_have_them():
    df = records_frame([rec("optimized", "o", samples=256), rec("hf", "h", samples=256, max_abs_err=0.5)])
    meta = PartMeta("accuracy", "w", "c", "abc", "d", H100, 1.0, "m", FULL.to_hf_dict(), kind="accuracy")
    plain = text_table(headline_rows(df, meta))
    assert plain["engine vs peer"].iloc[0] == "optimized: max err 0.2, top-1 99.0%; hf: max err 0.5, top-1 99.0%"
    df = df.assign(kl_mean=[1e-4, 3e-4], top5_agreement=[1.0, 0.998], gate=["bf16 vs torch-bf16 x 4"] * 2,
                   valid=[True, True])
    rows = headline_rows(df, meta)
    t = text_table(rows)
    assert "KL 0.0001, top-1 99.0%, top-5 100.0%" in t["engine vs peer"].iloc[0]
    assert t["ratio"].iloc[0] == "KL hf/optimized 3x" and t["validity"].iloc[0] == "VALID / VALID"
    assert "256 prompts" in t["shape"].iloc[0]


def test_committed_results_and_readme_are_what_publish_makes_of_them():
    """Edit results/ only with `suite`, and the tables only with `publish`."""
    out = render(ROOT / "results", ROOT / "README.md")
    for path, text in out.items():
        assert path.read_text() == text, f"{path} is stale: run `python -m harness publish`"


def test_committed_results_hold_only_suite_output():
    files = [p for p in (ROOT / "results").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3e6
    assert not [p for p in files if p.suffix in (".patch", ".sh", ".py", ".cu")]
    for p in files:
        rel = p.relative_to(ROOT / "results").parts
        assert rel == ("README.md",) or (len(rel) >= 3 and (ROOT / "results" / rel[0] / rel[1] / "part.json").is_file()), \
            f"results/{'/'.join(rel)} is not in a suite part folder"


def test_side_by_side_shows_only_variants_some_run_measured(tmp_path):
    from harness.report.html import _side_by_side
    a = records_frame([rec("optimized", "o16", tokens_per_s=1.0, run_id="a"),
                       rec("hf", "h512", seq_len=512, tokens_per_s=2.0, run_id="a")])
    b = records_frame([rec("optimized", "o16", tokens_per_s=1.5, run_id="b"),
                       rec("hf", "h512", seq_len=512, error="boom", run_id="b")])
    html = _side_by_side(pd.concat([a, b], ignore_index=True))
    body = html.split("<tbody>")[1]
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in body.split("<tr>")[1:]]
    assert len(cells) == 2  # (optimized, 16) and (hf, 512): no (optimized, 512) or (hf, 16)
    assert {c[6] for c in cells} == {"1.5", "failed"} and "nan" not in html.lower()
