"""Regenerate the README's report screenshot from a run (default runs/demo).

Builds the run's report (inspecting its three strongest contrast features first when it has
no feature cards yet), opens it in the system's headless Chromium, opens the strongest
feature's card beside the volcano and feature table, and saves a PNG (default
docs/report.png). Fails on any console error.

    .venv/bin/python scripts/screenshot_report.py [RUN] [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from saelab.errors import SaelabError  # noqa: E402
from saelab.inspect import inspect_features, load_cards  # noqa: E402
from saelab.report import build_report  # noqa: E402
from saelab.report.browser import open_report  # noqa: E402


def strongest(run: Path, n: int = 3) -> tuple[str, list[int]]:
    import pyarrow.parquet as pq

    t = pq.read_table(run / "stats" / "contrast.parquet").to_pandas()
    t = t[t["tested"] & (t["source"] == "codes")].sort_values(["log10_p_t", "feature"])
    if t.empty:
        raise SaelabError(f"{run}: contrast tested no feature; nothing to show")
    hook = str(t["hook"].iloc[0])
    return hook, [int(f) for f in t[t["hook"] == hook]["feature"].head(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/demo")
    ap.add_argument("--out", default=str(REPO / "docs" / "report.png"))
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "stats" / "contrast.parquet").is_file():
        print(f"{run} has no contrast results: run ./scripts/demo.sh first", file=sys.stderr)
        return 2
    hook, feats = strongest(run)
    if not load_cards(run).get(hook):
        inspect_features(run, hook, feats, top=12, quiet=True)
    page_path = build_report(run)
    with open_report(page_path, width=1600, height=1000) as rep:
        page = rep.page
        page.check("#filter-card")
        page.locator("#features tbody tr").first.click()
        page.locator("#card").wait_for(state="visible")
        page.wait_for_timeout(400)  # plotly's histogram transition
        page.locator("#contrast").scroll_into_view_if_needed()
        page.evaluate("document.getElementById('contrast').scrollIntoView()")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    if rep.errors:
        print("console errors:\n  " + "\n  ".join(rep.errors), file=sys.stderr)
        return 1
    print(f"wrote {out} from {page_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SaelabError as e:
        print(f"screenshot_report: error: {e}", file=sys.stderr)
        sys.exit(2)
