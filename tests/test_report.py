"""The HTML report of a small real run, opened from disk in headless Chromium (the system's
Debian package, driven by Playwright): no console errors and no network, the feature table
holds every contrast row and filters them, a click opens the feature's card with its top
contexts; a run with stages missing says which command makes the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from saelab.errors import SaelabError
from saelab.inspect import inspect_features, load_cards
from saelab.pipeline.extract import run_extract
from saelab.pipeline.extract_job import ExtractOptions
from saelab.report import build_report
from saelab.report.browser import chromium_path, open_report
from tests.report_run import HOOK, small_run  # noqa: F401

pytest.importorskip("playwright")
pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="needs the system Chromium (apt-get install chromium)"
)


@pytest.fixture()
def reported(small_run, smol, tmp_path) -> tuple[Path, Path]:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    t = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    strong = t[t["tested"]].sort_values("log10_p_t")["feature"].head(2).tolist()
    inspect_features(run, HOOK, strong, top=6, lm=smol, quiet=True)
    return run, build_report(run)


def test_report_opens_offline_and_its_table_opens_cards(reported, tmp_path):
    run, path = reported
    assert path == run / "report" / "index.html"
    contrast = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    cards = load_cards(run)[HOOK]
    with open_report(path) as rep:
        page = rep.page
        info = page.evaluate("saelabReport.table().page.info()")
        assert info["recordsTotal"] == len(contrast) == info["recordsDisplay"]
        page.check("#filter-sig")
        shown = page.evaluate("saelabReport.table().page.info().recordsDisplay")
        assert shown == int(contrast["significant"].sum()) > 0
        page.fill("#filter-d", "0.9")
        shown = page.evaluate("saelabReport.table().page.info().recordsDisplay")
        want = int((contrast["significant"] & (contrast["cohen_d"].abs() >= 0.9)).sum())
        assert shown == want
        page.fill("#filter-d", "")
        page.uncheck("#filter-sig")
        page.check("#filter-card")
        assert page.evaluate("saelabReport.table().page.info().recordsDisplay") == len(cards)
        row = page.locator("#features tbody tr").first
        feature = int(row.locator("td").nth(2).inner_text().split()[0])
        row.click()
        card = page.locator("#card")
        card.wait_for(state="visible")
        text = card.inner_text()
        assert f"feature {feature}" in text and "top contexts" in text
        top = [c for c in cards[feature]["contexts"] if c["kind"] == "top"]
        assert page.locator("#card table.contexts").first.locator("tr").count() == len(top)
        first_line = page.locator("#card table.contexts tr").first.inner_text()
        assert "".join(top[0]["tokens"]).split()[0] in first_line.replace("\u00a0", " ")
        assert page.locator("#card-hist .main-svg").count() > 0  # plotly drew the histogram
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        page.locator("#card .close").click()
        assert page.locator("#card").is_hidden()
        # the volcano's points, drawn by plotly as SVG: one per tested feature
        n_points = page.locator("#volcano .scatterlayer .point").count()
        assert n_points == int(contrast["tested"].sum())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert rep.errors == [], rep.errors
    # nothing fetched from a network: the page itself, and the DataTables module from a blob
    assert {u.split(":")[0] for u in rep.requests} <= {"file", "data", "blob"}, rep.requests


def test_a_run_with_stages_missing_shows_what_exists(smol, tmp_path):
    """Only generation traces: the report shows them and the commands for the rest."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["One.", "Two words."]))
    run = tmp_path / "partial"
    run_extract(
        ExtractOptions(
            prompts=str(prompts), hooks="resid_post.2", run=str(run), quiet=True, generate=3
        ),
        lm=smol,
    )
    path = build_report(run)
    html = path.read_text()
    assert 'id="traces"' in html and "blocks.2.hook_resid_post" in html
    for cmd in ("saelab train --run", "saelab encode --saes", "saelab contrast", "saelab inspect"):
        assert cmd in html
    assert "No contrast yet" in html and "No SAE in this run yet" in html
    with open_report(path) as rep:
        assert "extract" in rep.page.locator("#overview table").inner_text()
    assert rep.errors == [], rep.errors


def test_bad_run_folders_are_one_line_errors(tmp_path):
    with pytest.raises(SaelabError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaelabError, match="not a saelab run folder"):
        build_report(tmp_path / "empty")
