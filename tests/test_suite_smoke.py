"""`suite --smoke` end to end through a real mpiexec: the sweep part's two engine groups (the
reference standing in for optimized and hf on the tiny model), its folder, report and part.json,
the refusal to overwrite, and publish over the result."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from harness.__main__ import main as harness_main
from harness.suite.parts import PARTS, fingerprint
from harness.suite.publish import BEGIN, END, render

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(shutil.which("mpiexec") is None and shutil.which("mpirun") is None,
                                 reason="no mpiexec on PATH (pip install mpich)")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LFM2_CACHE", str(root / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        rc = harness_main(["suite", "--smoke", "--part", "sweep", "--out", str(root / "out")])
        yield rc, root / "out"


def test_a_part_lands_whole_in_its_device_folder(sweep):
    rc, out = sweep
    assert rc == 0
    folder = out / "cpu" / "sweep"
    assert sorted(p.name for p in out.iterdir()) == ["cpu"]  # no partial folder left beside it
    assert sorted(p.name for p in folder.iterdir()) == ["part.json", "records", "report.html", "summary.csv"]
    n = sum(len(g.shapes) for g in PARTS["sweep"].groups)
    assert len(list((folder / "records").glob("*.json"))) == n
    meta = json.loads((folder / "part.json").read_text())
    assert meta["command"] == "python -m harness suite --part sweep --smoke" and meta["smoke"] is True
    assert meta["device"].startswith("cpu") and meta["duration_s"] > 0 and meta["date"].endswith("UTC")
    assert meta["definition"] == fingerprint(PARTS["sweep"])  # the part as planned, not its smoke stand-in
    roles = {v["role"] for v in meta["roles"].values()}
    assert roles == {"optimized", "hf"} and len(meta["roles"]) == n
    df = pd.read_csv(folder / "summary.csv")
    assert len(df) == n and df["device"].str.startswith("cpu").all() and (df["valid"] == True).all()  # noqa: E712
    # one load per group: every shape of a group reports the same load
    assert df.groupby(df["variant"].str.contains("as-hf"))["load_s"].nunique().eq(1).all()


def test_the_report_opens_with_the_headline_and_the_roofline(sweep):
    _, out = sweep
    html = (out / "cpu" / "sweep" / "report.html").read_text()
    headline, roofline, summary = (html.index("<h2>Headline</h2>"), html.index("<h2>Roofline</h2>"),
                                   html.index("<h2>Summary</h2>"))
    assert headline < roofline < summary
    assert html.count("<td>Prefill</td>") == len(PARTS["sweep"].groups[0].shapes)
    assert "<details><summary>All columns</summary>" in html


def test_an_existing_part_is_kept_unless_forced(sweep, capsys):
    _, out = sweep
    folder = out / "cpu" / "sweep"
    before = (folder / "part.json").read_text()
    assert harness_main(["suite", "--smoke", "--part", "sweep", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (folder / "part.json").read_text() == before
    (folder / "records" / "stale.json").write_text("{}")  # a replaced folder goes whole, not merged
    assert harness_main(["suite", "--smoke", "--part", "sweep", "--out", str(out), "--force"]) == 0
    assert not (folder / "records" / "stale.json").exists() and (folder / "report.html").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["cpu"] and sorted(p.name for p in folder.parent.iterdir()) == [
        "sweep"]


def test_publish_over_a_smoke_tree(sweep, tmp_path):
    _, out = sweep
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    files = render(out, readme, allow_smoke=True)
    rows = [x for x in files[out / "README.md"].splitlines() if x.startswith("| sweep |")]
    assert len(rows) == len(PARTS["sweep"].groups[0].shapes)
    assert all("python -m harness suite --part sweep --smoke" not in r for r in rows)  # commands: parts table
    assert "`python -m harness suite --part sweep --smoke`" in files[out / "README.md"]
    assert files[readme].count("| sweep: bf16 ") == len(rows)
