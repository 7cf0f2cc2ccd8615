"""`saelab patch` end to end on the real default model: a sweep over contrast's strongest
features, results and summary tables, resume per edit set, and refusals."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from saelab.pipeline.contrast import ContrastOptions, run_contrast
from saelab.pipeline.patch import PatchOptions, run_patch
from tests.cli_errors import cli, one_line
from tests.test_contrast import styles_run  # noqa: F401


@pytest.fixture()
def patch_run(styles_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(styles_run[0], run)
    run_contrast(ContrastOptions(run=str(run), groups="formal,casual", min_active=3, quiet=True))
    prompts = tmp_path / "few.jsonl"
    few = [("f0", "The committee has postponed the meeting.", "formal"),
           ("c0", "heads up, the meeting is off lol", "casual"),
           ("f1", "Residents are advised to conserve water.", "formal"),
           ("c1", "pls go easy on the water guys", "casual")]  # fmt: skip
    prompts.write_text(
        "".join(json.dumps({"id": i, "text": t, "group": g}) + "\n" for i, t, g in few)
    )
    return run, prompts, styles_run[1]


def test_sweep_results_summary_and_resume(patch_run):
    run, prompts, saes = patch_run
    opts = dict(run=str(run), sweep="top:2", values="0,@4,@200", saes=str(saes),
                prompts=str(prompts), generate=3, targets=" the, a", outcome=["comma=,"],
                quiet=True)  # fmt: skip
    out = run_patch(PatchOptions(**opts))
    res = pq.read_table(run / "patch" / "results.parquet").to_pandas()
    assert len(res) == (2 * 3 + 1) * 4 and set(res["group"]) == {"formal", "casual"}
    base = res[res["edit"] == "baseline"]
    assert (base["kl"].abs() < 1e-6).all() and (base["applied"] == 0).all()
    # every edited row was edited where asked: the last prompt token and the 2 tokens fed back
    assert (res[res["edit"] != "baseline"]["applied"] == 3).all()
    steer = res[res["edit"].str.contains("@4")]
    assert steer["kl"].mean() > res[res["edit"].str.endswith("=0")]["kl"].mean()
    # a strong steer moves every row's first answer distribution, in every batch of the sweep
    assert (res[res["edit"].str.contains("@200")]["kl"] > 0.1).all()
    summ = pq.read_table(run / "patch" / "summary.parquet").to_pandas()
    assert {"all", "formal", "casual"} <= set(summ["group"])
    assert "delta_logp_diff" in summ and "fisher_p[comma]" in summ
    # killed after some edit sets: the missing ones are redone, the rest reused
    parts = sorted((run / "patch" / "parts").glob("*.json"))
    assert len(parts) == 6
    parts[0].unlink()
    again = run_patch(PatchOptions(**opts))
    assert [r["text"] for r in again["results"]] == [r["text"] for r in out["results"]]


def test_bad_input_is_one_line(styles_run, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(styles_run[0], run)
    saes = str(styles_run[1])
    cases = [
        (["--sweep", "top:3"], ["saelab contrast"]),
        (["--edits", "resid_post.7:5=1", "--sweep", "top:3"], ["either"]),
        (["--edits", "resid_post.7:99999=1"], ["99999"]),
        (["--edits", "resid_post.7/5=1"], ["HOOK:FEATURE"]),
        (["--edits", "resid_post.7:5=1", "--edits", "resid_post.7:5=2"], ["conflict"]),
        (["--edits", "resid_post.9:5=1"], ["blocks.9"]),
        (["--edits", "resid_post.7:5=1", "--outcome", "bad=("], ["--outcome", "compile"]),
        (["--sweep", "best:3"], ["top:N"]),
    ]
    for extra, fragments in cases:
        code, err = cli(capsys, "patch", str(run), "--saes", saes, "--quiet", *extra)
        one_line(code, err, *fragments, lower=True)
    assert not (run / "patch").exists()
