"""`contrast` and `query` on the real default model over the built-in two-style prompts:
pooling, labels, the statistics against scipy/statsmodels, BH across hooks, outputs, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats as ss

from saelab.cli import main
from saelab.errors import SaelabError
from saelab.pipeline.contrast import ContrastConfig, run_contrast
from saelab.pipeline.encode import EncodeConfig, run_encode
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.store import open_codes
from tests.cli_errors import cli, one_line
from tests.test_encode import random_sae

HOOKS = ["blocks.3.hook_resid_post", "blocks.7.hook_resid_post"]


@pytest.fixture(scope="module")
def styles_run(smol, tmp_path_factory) -> tuple[Path, Path]:
    """builtin:styles' first 40 pairs (40 formal + 40 casual statements) through two hooks,
    encoded with random JumpReLU SAEs: (run, folder of the SAEs)."""
    root = tmp_path_factory.mktemp("contrast")
    run = root / "run"
    opts = ExtractConfig(prompts="builtin:styles", hooks="resid_post.3,resid_post.7", limit=80,
                          run=str(run), quiet=True, store_dtype="float32")  # fmt: skip
    run_extract(opts, lm=smol)
    saes = root / "saes"
    for i, hook in enumerate(HOOKS):
        random_sae("jumprelu", hook, d_sae=512, seed=10 + i).save(saes / hook)
    run_encode(EncodeConfig(saes=str(saes), run=str(run), quiet=True))
    return run, saes


def fresh(styles_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(styles_run[0], run)
    return run


def pooled(run: Path, hook: str, how: str) -> np.ndarray:
    """Each prompt's stored token codes pooled in numpy (BOS left out of max and mean): the
    values the statistics must be computed on."""
    m = open_codes(run)[hook].matrix().toarray().astype(np.float64)
    offs = open_codes(run)[hook].row_offsets
    out = []
    for i in range(len(offs) - 1):
        f = m[offs[i] : offs[i + 1]]
        out.append(f[-1] if how == "last" else (f[1:].max(0) if how == "max" else f[1:].mean(0)))
    return np.stack(out)


@pytest.mark.parametrize("pool", ["max", "mean", "last"])
def test_statistics_equal_scipy_on_the_pooled_codes(styles_run, tmp_path, pool):
    run = fresh(styles_run, tmp_path)
    summary = run_contrast(ContrastConfig(run=str(run), groups="formal,casual", pool=pool,
                                           min_active=3, quiet=True))  # fmt: skip
    t = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    assert len(t) == 2 * 512 and set(t["hook"]) == set(HOOKS)
    groups = np.array(["formal" if i.startswith("formal") else "casual" for i in _ids(run)])
    a, b = groups == "formal", groups == "casual"
    p_all = []
    for hook in HOOKS:
        x = pooled(run, hook, pool)
        rows = t[t["hook"] == hook].sort_values("feature")
        active = (x != 0).sum(0)
        const = x.max(0) == x.min(0)
        want_tested = (active >= 3) & ~const
        assert (rows["tested"].to_numpy() == want_tested).all()
        tested = rows[rows["tested"]]
        f = tested["feature"].to_numpy()
        ref = ss.ttest_ind(x[a][:, f], x[b][:, f], equal_var=False)
        np.testing.assert_allclose(tested["t"], ref.statistic, rtol=1e-9)
        np.testing.assert_allclose(tested["p_t"], ref.pvalue, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(tested["mean_a"], x[a][:, f].mean(0), rtol=1e-9)
        assert rows[~rows["tested"]]["p_t"].isna().all()
        p_all.append(tested["p_t"].to_numpy())
    from statsmodels.stats.multitest import multipletests

    q = multipletests(np.concatenate(p_all), method="fdr_bh")[1]
    got = np.concatenate(
        [t[(t["hook"] == h) & t["tested"]].sort_values("feature")["q"] for h in HOOKS]
    )
    np.testing.assert_allclose(got, q, rtol=1e-9)
    assert summary["groups"] == {"formal": 40, "casual": 40}
    s = json.loads((run / "stats" / "contrast_summary.json").read_text())
    h = s["hooks"][HOOKS[1]]
    assert h["features"] == 512 and h["tested"] + h["untested"] == 512
    assert h["top"] and h["top"][0]["hook"] == HOOKS[1]


def _ids(run: Path) -> list[str]:
    return pq.read_table(run / "prompts.parquet").column("id").to_pylist()


def test_raw_activations_separate_the_styles_and_query_lists_them(styles_run, tmp_path, capsys):
    run = fresh(styles_run, tmp_path)
    s = run_contrast(ContrastConfig(run=str(run), groups="formal,casual", pool="mean",
                                     source="activations", quiet=True))  # fmt: skip
    assert s["significant"] > 0 and s["hooks"][HOOKS[0]]["features"] == 576
    # the SAE result lands beside the raw-activation baseline, not over it
    run_contrast(ContrastConfig(run=str(run), groups="formal,casual", quiet=True))
    both = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    assert both.groupby("source").size().to_dict() == {"activations": 2 * 576, "codes": 2 * 512}
    assert (run / "stats" / "contrast_summary_activations.json").is_file()
    capsys.readouterr()
    main(
        [
            "query",
            "--run",
            str(run),
            "SELECT hook, feature, q FROM contrast WHERE significant ORDER BY q",
        ]
    )
    out = capsys.readouterr().out
    assert "blocks." in out and "feature" in out
    csv = tmp_path / "sig.csv"
    main(
        [
            "query",
            "--run",
            str(run),
            "SELECT p.id, p.group FROM prompts p LIMIT 3",
            "--out",
            str(csv),
        ]
    )
    lines = csv.read_text().splitlines()
    assert lines[0] == "id,group" and lines[1].startswith("formal-00")


def test_bad_input_is_one_line(styles_run, tmp_path, capsys):
    run = fresh(styles_run, tmp_path)
    cases = [
        (["--groups", "formal,nope"], ["'nope'", "formal (40)"]),
        (["--groups", "formal"], ["--groups"]),
        (["--groups", "formal,formal"], ["--groups"]),
        (["--groups", "formal,casual", "--pool", "median"], ["--pool", "median"]),
        (["--groups", "formal,casual", "--source", "logits"], ["--source"]),
        (["--groups", "formal,casual", "--alpha", "2"], ["--alpha"]),
        (["--groups", "formal,casual", "--hooks", "resid_post.9"], ["blocks.9"]),
    ]
    for extra, fragments in cases:
        code, err = cli(capsys, "contrast", "--run", str(run), "--quiet", *extra)
        one_line(code, err, *fragments)
    assert not (run / "stats").exists()
    code, err = cli(capsys, "query", "--run", str(run), "SELECT nope FROM prompts")
    assert code != 0 and "query failed" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SaelabError, match="needs codes of every token"):
        last = tmp_path / "last"
        shutil.copytree(styles_run[0], last)
        shutil.rmtree(last / "codes")
        run_encode(EncodeConfig(saes=str(styles_run[1]), run=str(last), positions="last",
                                 overwrite=True, quiet=True))  # fmt: skip
        run_contrast(ContrastConfig(run=str(last), groups="formal,casual", pool="max", quiet=True))


def test_prompts_without_groups_say_where_groups_come_from(styles_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from saelab.pipeline.contrast_data import read_labels

    run = tmp_path / "nogroups"
    shutil.copytree(styles_run[0], run)
    table = pq.read_table(run / "prompts.parquet")
    i = table.column_names.index("group")
    table = table.set_column(i, "group", pa.nulls(len(table), pa.string()))
    pq.write_table(table, run / "prompts.parquet")
    with pytest.raises(SaelabError, match="no values in column 'group'.*--group-column"):
        read_labels(run, "formal,casual")
