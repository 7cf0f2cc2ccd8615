"""`saelab demo --fast` end to end on the real default model: every artifact of every stage
is there and intact, the printed findings agree with the run's own tables and with counts
made here from the codes and the patch results, a second demo on the folder skips all done
work (bytes unchanged), the CLI's --run/--quiet work, and the report opens in headless
Chromium without console errors, showing the patch effects."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from scipy import stats

from saelab.pipeline.demo import FAST, HOOK, DemoConfig, run_demo
from saelab.report.browser import chromium_path, open_report
from saelab.sae import SAE
from saelab.store import ActivationStore, open_codes
from saelab.verify import verify_run

STAGES = ("plan", "extract", "train", "encode", "contrast", "patch", "inspect", "report")
_DONE: dict[str, object] = {}
LABELS = {"The": r"\bThe\b", "I": r"\bI\b"}  # the demo's outcomes: the first match wins


def label(text: str) -> str:
    return next((k for k, rx in LABELS.items() if re.search(rx, text)), "other")


@pytest.fixture()
def demo_run(smol, tmp_path_factory, capsys) -> tuple[Path, dict, str, str]:
    """The fast demo, run once per session (quiet, in this process, on the session's model)."""
    if "run" not in _DONE:
        run = tmp_path_factory.mktemp("demo") / "demo"
        out = run_demo(DemoConfig(run=str(run), fast=True, quiet=True), lm=smol)
        captured = capsys.readouterr()
        _DONE.update(run=run, out=out, stdout=captured.out, stderr=captured.err)
    return _DONE["run"], _DONE["out"], _DONE["stdout"], _DONE["stderr"]  # type: ignore[return-value]


def test_every_stage_leaves_its_artifacts(demo_run):
    run, out, stdout, stderr = demo_run
    assert stderr == ""  # --quiet: no progress
    lines = stdout.splitlines()
    for i, name in enumerate(STAGES, 1):  # one line per stage: what, how long, where
        line = next(x for x in lines if x.startswith(f"{i}/8 {name}"))
        assert re.search(r"\d+(\.\d+)? (ms|s|min) \(cpu ", line) and f" -> {run}" in line
    manifest = json.loads((run / "manifest.json").read_text())
    assert "extract" in manifest["plans"]
    for stage in ("extract", "train", "encode", "contrast", "patch"):
        assert manifest["stages"][stage]["complete"], stage
    report = verify_run(run)
    assert report.ok and report.files_hashed > 10, report.problems
    store = ActivationStore(run / "activations")
    assert store.hooks == [HOOK] and store.n_prompts == FAST.prompts
    sae = SAE.load(run / "saes" / HOOK)
    meta = json.loads((run / "saes" / HOOK / "cfg.json").read_text())["metadata"]
    assert sae.W_dec.shape == (FAST.d_sae, 576) and meta["trained_tokens"] == FAST.train_tokens
    assert 0 < meta["explained_variance"] < 1 and meta["l0"] == pytest.approx(32, abs=0.5)
    assert f"held-out EV {meta['explained_variance']:.3f}" in stdout
    codes = open_codes(run)[HOOK]
    assert codes.matrix().shape == (store.n_rows, FAST.d_sae)
    contrast = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    assert len(contrast) == FAST.d_sae and contrast["tested"].any()
    summary = pq.read_table(run / "patch" / "summary.parquet").to_pylist()
    results = pq.read_table(run / "patch" / "results.parquet").to_pandas()
    edits = {s["edit"] for s in summary} - {"baseline"}
    assert len(edits) == FAST.top and len(results) == (FAST.top + 1) * FAST.patch_prompts
    cards = list((run / "inspect" / HOOK).glob("*.parquet"))
    assert cards
    assert out["report"] == run / "report" / "index.html" and out["report"].stat().st_size > 1e5
    assert f"report: {out['report']}" in stdout


def test_findings_agree_with_codes_and_patch_results(demo_run):
    """Each finding's counts come from the contrast table; here they are counted again from
    the codes (max over each statement's tokens after BOS), and its patch effect is
    recomputed from the per-prompt results."""
    run, out, stdout, _ = demo_run
    assert len(out["findings"]) == FAST.top
    codes = open_codes(run)
    groups = codes.groups(HOOK)
    hook_codes = codes[HOOK]
    results = pq.read_table(run / "patch" / "results.parquet").to_pandas()
    base = results[results["edit"] == "baseline"].set_index("prompt_id")
    for text in out["findings"]:
        assert text in stdout
        m = re.match(r"feature (\d+) at layer 7 fires on (\d+)/(\d+) formal and (\d+)/(\d+)", text)
        assert m, text
        f, a, n_a, b, n_b = map(int, m.groups())
        fired = {"formal": 0, "casual": 0}
        for i, g in enumerate(groups):
            rows = hook_codes.prompt(i)[1:].toarray()
            fired[g] += bool((rows[:, f] > 0).any())
        assert (a, b) == (fired["formal"], fired["casual"])
        assert (n_a, n_b) == (groups.count("formal"), groups.count("casual"))
        m = re.search(r"steering it @1 in (\d+) (\w+) statements moves the next token toward"
                      r" ' (The|I)' .* by ([\d.]+) nats \(95% CI ([-+\d.]+) to ([-+\d.]+);",
                      text)  # fmt: skip
        assert m, text
        mine = results[(results["edit"] == f"{HOOK}:{f}@1") & (results["group"] == m.group(2))]
        d = mine["logp_diff"].to_numpy() - base.loc[mine["prompt_id"], "logp_diff"].to_numpy()
        assert len(d) == int(m.group(1))
        assert float(m.group(4)) == pytest.approx(abs(d.mean()), abs=0.006)
        assert (m.group(3) == "The") == (d.mean() >= 0)
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert float(m.group(5)) == pytest.approx(lo, abs=0.006)
        assert float(m.group(6)) == pytest.approx(hi, abs=0.006)
        assert f"mean KL {mine['kl'].mean():.2f} from the unpatched" in text
        m = re.search(r"(\d+)/(\d+) continuations say (?:'(The|I)'|(neither))", text)
        assert m, text
        lab = m.group(3) or "other"
        said = sum(label(t) == lab for t in mine["text"])
        unpatched = sum(label(t) == lab for t in base.loc[mine["prompt_id"], "text"])
        assert (int(m.group(1)), int(m.group(2))) == (said, len(d))
        k, n = said, len(d)
        p = stats.fisher_exact([[k, n - k], [unpatched, n - unpatched]])[1]
        assert f"vs {unpatched}/{n} unpatched (Fisher p = {p:.2g})" in text


def test_second_demo_skips_done_work_and_cli_flags(demo_run, tmp_path):
    run, _, _, _ = demo_run
    before = json.loads((run / "manifest.json").read_text())["stages"]
    weights = (run / "saes" / HOOK / "sae_weights.safetensors").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "saelab", "demo", "--fast", "--quiet", "--run", str(run)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for name in ("plan", "extract", "train", "encode", "contrast", "patch", "inspect"):
        line = next(x for x in proc.stdout.splitlines() if re.match(rf"\d/8 {name} ", x))
        assert "(done before: skipped)" in line, line
    after = json.loads((run / "manifest.json").read_text())["stages"]
    for stage, info in before.items():
        assert after[stage]["units"] == info["units"], stage
    assert (run / "saes" / HOOK / "sae_weights.safetensors").read_bytes() == weights
    assert "strongest findings:" in proc.stdout


@pytest.mark.skipif(chromium_path() is None, reason="needs the system Chromium")
def test_report_opens_and_shows_the_patch_effects(demo_run):
    pytest.importorskip("playwright")
    run, _, _, _ = demo_run
    summary = pq.read_table(run / "patch" / "summary.parquet").to_pylist()
    edits = sorted({s["edit"] for s in summary} - {"baseline"})
    with open_report(run / "report" / "index.html") as rep:
        page = rep.page
        assert page.locator("#fig-patch .main-svg").count() > 0  # plotly drew the effects
        table = page.locator("table.patch").inner_text()
        for edit in edits:
            assert edit in table
        for name in ("plan", "extract", "train", "encode", "contrast", "patch"):
            assert name in page.inner_text("body")
    assert rep.errors == [], rep.errors
