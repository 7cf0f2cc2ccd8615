"""Full statistics exports and query results as JSON / npz: every tested feature round-trips
exactly against the contrast table of a small real run; refusals are one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from saelab.errors import SaelabError
from saelab.exports import export_stats, read_npz_table, read_stats, write_table
from saelab.exports.stats import COLUMNS
from saelab.pipeline.contrast import ContrastOptions, run_contrast
from saelab.pipeline.query import connect
from tests.report_run import HOOK, small_run  # noqa: F401


@pytest.fixture()
def run_copy(small_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    return run


@pytest.mark.parametrize("fmt", ["json", "npz"])
def test_every_tested_feature_round_trips(run_copy, fmt):
    path = export_stats(run_copy, fmt)
    assert path == run_copy / "stats" / f"contrast_stats.{fmt}"
    got = read_stats(path)
    t = pq.read_table(run_copy / "stats" / "contrast.parquet").to_pandas()
    tested = t[t["tested"] & (t["source"] == "codes")].sort_values(["hook", "feature"])
    assert got["n_exported"] == len(tested) > 0
    f = got["features"]
    assert set(f) == set(COLUMNS)
    for c in COLUMNS:
        if c == "layer":
            assert (f[c] == 7).all()
        elif c == "hook":
            assert f[c].tolist() == tested[c].tolist()
        else:
            np.testing.assert_array_equal(f[c].astype(tested[c].to_numpy().dtype), tested[c])
    (layer,) = got["layers"]
    assert layer["hook"] == HOOK and layer["layer"] == 7 and layer["n_features"] == 512
    assert layer["n_tested"] == len(tested) and (layer["n_a"], layer["n_b"]) == (40, 40)
    sig = tested[tested["significant"]].sort_values(["q", "feature"])
    assert (
        layer["n_significant"] == len(sig)
        and layer["significant_features"] == sig["feature"].tolist()
    )
    assert got["groups"] == {"a": "formal", "b": "casual", "n_a": 40, "n_b": 40}
    assert got["pool"] == "max" and got["source"] == "codes"


def test_significant_only_and_other_source(run_copy):
    d = read_stats(export_stats(run_copy, "npz", significant_only=True))
    assert d["significant_only"] and d["features"]["significant"].all()
    assert d["n_exported"] == d["layers"][0]["n_significant"]
    run_contrast(
        ContrastOptions(run=str(run_copy), groups="formal,casual", source="activations", quiet=True)
    )
    raw = read_stats(export_stats(run_copy, "json", source="activations", out=run_copy / "r.json"))
    assert raw["source"] == "activations" and raw["layers"][0]["n_features"] == 576
    assert json.loads((run_copy / "r.json").read_text())["format"] == "saelab.stats"


@pytest.mark.parametrize("suffix", [".json", ".npz", ".csv", ".parquet"])
def test_query_results_in_every_format(run_copy, tmp_path, suffix):
    con = connect(run_copy)
    rel = con.sql("SELECT hook, feature, q, significant, rate_test FROM contrast ORDER BY feature")
    want = rel.arrow()
    want = want.read_all() if hasattr(want, "read_all") else want
    out = tmp_path / f"q{suffix}"
    assert write_table(want, out) == want.num_rows == 512
    if suffix == ".json":
        rows = json.loads(out.read_text())
        assert [r["feature"] for r in rows] == want.column("feature").to_pylist()
        q = [r["q"] for r in rows]
        assert q == [None if v != v else v for v in want.column("q").to_pylist()]
    elif suffix == ".npz":
        z = read_npz_table(out)
        np.testing.assert_array_equal(z["q"], want.column("q").to_numpy())
        assert z["hook"].dtype.kind == "U" and z["significant"].dtype == bool
    elif suffix == ".parquet":
        assert pq.read_table(out).to_pandas().equals(want.to_pandas())  # NaN == NaN here
    else:
        assert out.read_text().splitlines()[0].replace('"', "").startswith("hook,feature,q")


def test_bad_input(run_copy, tmp_path):
    with pytest.raises(SaelabError, match="json, npz"):
        export_stats(run_copy, "xml")
    with pytest.raises(SaelabError, match="no 'other' rows"):
        export_stats(run_copy, "json", source="other")
    (tmp_path / "bare").mkdir()
    with pytest.raises(SaelabError, match="saelab contrast"):
        export_stats(tmp_path / "bare", "json")
    with pytest.raises(SaelabError, match=".csv, .parquet, .json, .npz"):
        write_table(connect(run_copy).sql("SELECT 1 AS x").arrow(), tmp_path / "x.txt")
