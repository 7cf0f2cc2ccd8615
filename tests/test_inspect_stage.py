"""`inspect` and `report` as stages: a run grows by inspect sections (one per hook and feature
set), the hook's cards are those the library's `inspect_features` writes for the same calls
(byte for byte), the same command again is skipped and prints the stored cards, a driver
killed after its unit resumes without running it again, `saelab verify` finds nothing wrong
after two sections rewrote the same hook's files, and the report is a recorded unit that is
kept while the run is unchanged and rebuilt once it changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from saelab.atomic import file_digest
from saelab.errors import SaelabError
from saelab.inspect import inspect_features
from saelab.pipeline.driver import run_stage
from saelab.pipeline.executors import LocalExecutor
from saelab.pipeline.inspect import InspectConfig, InspectStage, compact, section_folder
from saelab.pipeline.report import ReportConfig, ReportStage, run_report
from saelab.pipeline.stage import Worker
from saelab.report import collect
from saelab.run import RunFolder
from saelab.verify import repair, verify_run
from tests.report_run import HOOK, small_run  # noqa: F401

CARDS = ("inspect", HOOK, "features.parquet"), ("inspect", HOOK, "contexts.parquet")


@pytest.fixture()
def run_copy(small_run, tmp_path) -> Path:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    return run


@pytest.fixture()
def local(smol) -> LocalExecutor:
    worker = Worker()
    worker.adopt(smol)
    return LocalExecutor(worker)


def _inspect(run: Path, executor, features: str, **kw) -> list:  # noqa: ANN001
    return run_stage(InspectStage(InspectConfig(run=str(run), hook=HOOK, features=features,
                                                quiet=True, **kw)), executor)  # fmt: skip


class NoUnits:
    """An executor that must not be asked to run anything (the units are done)."""

    name = "none"

    def run(self, stage, units):  # noqa: ANN001, ANN201
        assert not units, [u.key for u in units]
        return iter(())

    def close(self) -> None:
        pass


def test_sections_skip_and_verify_and_equal_the_library(run_copy, tmp_path, local, smol):
    lib = tmp_path / "lib"
    shutil.copytree(run_copy, lib)
    first = _inspect(run_copy, local, "3,40,45", top=5)
    files = [run_copy.joinpath(*c) for c in CARDS]
    assert [c.feature for c in first] == [3, 40, 45]
    st = RunFolder(run_copy).stage("inspect")
    section = f"{HOOK}:3,40,45"
    rec = st["units"][section]
    assert set(rec["files"]) == {f"{section_folder(section)}/features.parquet",
                                 f"{section_folder(section)}/contexts.parquet"}  # fmt: skip
    assert all(file_digest(run_copy / f) == h for f, h in rec["files"].items())
    assert st["files"] == {f.relative_to(run_copy).as_posix(): file_digest(f) for f in files}

    # the same command again: skipped (no unit runs, nothing is rewritten), the stored cards
    before = {f: f.stat().st_mtime_ns for f in files}
    again = _inspect(run_copy, NoUnits(), "3,40,45", top=5)
    assert [c.to_dict() for c in again] == [c.to_dict() for c in first]
    assert {f: f.stat().st_mtime_ns for f in files} == before

    # more features of the hook: a new section (not a changed configuration); 45 again
    second = _inspect(run_copy, local, "41-42,45", top=3)
    assert [c.feature for c in second] == [41, 42, 45]
    assert len([x for x in second[2].contexts if x["kind"] == "top"]) == 3  # 45 fires often
    units = RunFolder(run_copy).stage("inspect")["units"]
    assert set(units) == {section, f"{HOOK}:41-42,45"}
    assert RunFolder(run_copy).stage("inspect")["merged"] == [section, f"{HOOK}:41-42,45"]

    # the hook's cards are what the library writes for the same two calls, byte for byte
    inspect_features(lib, HOOK, [3, 40, 45], top=5, lm=smol, quiet=True)
    inspect_features(lib, HOOK, [41, 42, 45], top=3, lm=smol, quiet=True)
    for c in CARDS:
        assert run_copy.joinpath(*c).read_bytes() == lib.joinpath(*c).read_bytes(), c

    # two sections rewrote the hook's files: every record still holds
    report = verify_run(run_copy)
    assert report.ok, [(u.stage, u.unit, u.status, u.detail) for u in report.problems()]
    assert {u.unit for u in report.units if u.stage == "inspect"} == {
        section, f"{HOOK}:41-42,45", "(stage files)"}  # fmt: skip

    # a section's configuration is kept: another one is refused, --overwrite redoes it
    with pytest.raises(SaelabError, match="top: 5 -> 2"):
        _inspect(run_copy, local, "3,40,45", top=2)
    redone = _inspect(run_copy, local, "3,40,45", top=2, overwrite=True)
    assert all(len([x for x in c.contexts if x["kind"] == "top"]) <= 2 for c in redone)
    assert verify_run(run_copy).ok


class StopAfterUnits(LocalExecutor):
    """The driver killed once its units are recorded, before `finish`."""

    def run(self, stage, units):  # noqa: ANN001, ANN201
        yield from super().run(stage, units)
        raise KeyboardInterrupt


def test_a_driver_killed_after_its_unit_resumes_without_running_it(run_copy, local, tmp_path):
    whole = tmp_path / "whole"
    shutil.copytree(run_copy, whole)
    _inspect(whole, local, "5-6")
    with pytest.raises(KeyboardInterrupt):
        _inspect(run_copy, StopAfterUnits(local.worker), "5-6")
    assert not run_copy.joinpath(*CARDS[0]).exists()  # the hook's cards come with finish
    assert RunFolder(run_copy).stage("inspect")["complete"] is False
    cards = _inspect(run_copy, NoUnits(), "5-6")
    assert [c.feature for c in cards] == [5, 6]
    for c in CARDS:
        assert run_copy.joinpath(*c).read_bytes() == whole.joinpath(*c).read_bytes()
    assert RunFolder(run_copy).stage("inspect")["complete"] is True
    assert verify_run(run_copy).ok


def test_the_hooks_cards_come_back_from_the_sections_after_repair(  # noqa: F811
    run_copy, small_run, local, smol, tmp_path  # noqa: F811
):  # fmt: skip
    lib = tmp_path / "lib"
    shutil.copytree(run_copy, lib)
    _inspect(run_copy, local, "4,45", top=2)  # 45 again below: the later section's rows
    # another hook's cards (its SAE and texts given): a repair removes them too
    prompts = tmp_path / "p.txt"
    prompts.write_text("The committee has postponed the meeting.\nheads up, the meeting is off\n")
    other = dict(sae=str(small_run.parent / "saes" / HOOK), prompts=str(prompts))
    run_stage(InspectStage(InspectConfig(run=str(run_copy), hook="resid_post.3", features="1-2",
                                         quiet=True, **other)), local)  # fmt: skip
    hook3 = run_copy / "inspect" / "blocks.3.hook_resid_post"
    cards3 = [(hook3 / c[-1]).read_bytes() for c in CARDS]
    _inspect(run_copy, local, "3,45", top=1)
    run_copy.joinpath(*CARDS[0]).write_bytes(b"damaged")
    report = verify_run(run_copy)
    assert [(u.stage, u.unit) for u in report.problems()] == [("inspect", "(stage files)")]
    repair(run_copy, report)
    assert not run_copy.joinpath(*CARDS[0]).exists() and not (hook3 / CARDS[0][-1]).exists()
    _inspect(run_copy, local, "5")  # the hook's cards: both sections in their order, then 5
    for feats, top in (([4, 45], 2), ([3, 45], 1), ([5], 20)):
        inspect_features(lib, HOOK, feats, top=top, lm=smol, quiet=True)
    for c in CARDS:
        assert run_copy.joinpath(*c).read_bytes() == lib.joinpath(*c).read_bytes(), c
    assert [(hook3 / c[-1]).read_bytes() for c in CARDS] == cards3  # and the other hook's
    assert verify_run(run_copy).ok


def test_compact_feature_lists():
    assert compact([3, 4, 5, 7, 12, 13]) == "3-5,7,12-13"
    assert compact([1]) == "1"
    assert section_folder(f"{HOOK}:1-3") == f"inspect/{HOOK}/sections/1-3"
    long = ",".join(str(i) for i in range(0, 200, 2))
    name = section_folder(f"{HOOK}:{long}").rsplit("/", 1)[1]
    assert len(name) < 40 and name != section_folder(f"{HOOK}:{long},999").rsplit("/", 1)[1]


def test_the_report_is_a_recorded_unit_rebuilt_when_the_run_changes(run_copy, local, capsys):
    page = run_copy / "report" / "index.html"
    assert run_report(ReportConfig(run=str(run_copy), quiet=True)) == page
    st = RunFolder(run_copy).stage("report")
    assert st["complete"] and list(st["units"]) == ["index.html"]
    rec = st["units"]["index.html"]
    assert rec["files"] == {"report/index.html": file_digest(page)}
    assert rec["bytes"] == page.stat().st_size and rec["command"].startswith("saelab report")
    assert "wrote" in capsys.readouterr().out
    assert [s["stage"] for s in collect.stages(run_copy)] == [
        "extract",
        "encode",
        "contrast",
        "patch",
    ]  # the page lists what it shows, not itself

    # nothing it shows changed: kept, not rebuilt
    mtime, digest = page.stat().st_mtime_ns, file_digest(page)
    stage = ReportStage(ReportConfig(run=str(run_copy), quiet=True))
    assert run_stage(stage, NoUnits()) == page
    assert page.stat().st_mtime_ns == mtime

    # a new inspect section: the report is rebuilt (not refused) and shows the new card
    _inspect(run_copy, local, "7")
    run_report(ReportConfig(run=str(run_copy), quiet=True))
    assert page.stat().st_mtime_ns != mtime and file_digest(page) != digest
    rec = RunFolder(run_copy).stage("report")["units"]["index.html"]
    assert rec["files"] == {"report/index.html": file_digest(page)}
    report = verify_run(run_copy)
    assert report.ok and {u.stage for u in report.units} >= {"inspect", "report"}


def test_a_report_out_of_the_run_is_recorded_by_its_path(run_copy, tmp_path):
    out = tmp_path / "elsewhere" / "page.html"
    run_report(ReportConfig(run=str(run_copy), out=str(out), quiet=True))
    rec = RunFolder(run_copy).stage("report")["units"]["index.html"]
    assert rec["files"] == {Path(os.path.abspath(out)).as_posix(): file_digest(out)}
    assert verify_run(run_copy).ok
