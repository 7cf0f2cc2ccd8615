"""Open a report in the system's headless Chromium (Debian's `chromium` package), driven by
Playwright: for the report's tests, its benchmark and the README screenshot.

Never a downloaded browser build: Playwright launches the executable given here (default
/usr/bin/chromium or $SAELAB_CHROMIUM), with networking features off, so a report that
reached for the network would show it as console errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.errors import SaelabError

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The system Chromium, or None when it is not installed."""
    env = os.environ.get("SAELAB_CHROMIUM")
    for cand in (env, "/usr/bin/chromium", shutil.which("chromium")):
        if cand and Path(cand).is_file():
            return cand
    return None


@dataclass
class OpenReport:
    page: Any
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed requests."""
        return [t for kind, t in self.console if kind in ("error", "pageerror")] + [
            f"request failed: {u}" for u in self.failed_requests
        ]


@contextlib.contextmanager
def open_report(
    path: Path | str,
    *,
    width: int = 1400,
    height: int = 1000,
    timeout_ms: int = 60_000,
    wait_ready: bool = True,
) -> Iterator[OpenReport]:
    """Open `path` from disk (file://) and wait until the page says it is ready (with
    `wait_ready=False`, only until navigation commits: for timing pages that are not
    reports)."""
    exe = chromium_path()
    if exe is None:
        raise SaelabError("no Chromium found: apt-get install chromium (or set SAELAB_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise SaelabError("opening a report needs playwright: pip install playwright") from e
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            rep = OpenReport(page)
            page.on("console", lambda m: rep.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: rep.console.append(("pageerror", str(e))))
            page.on("requestfailed", lambda r: rep.failed_requests.append(r.url))
            page.on("request", lambda r: rep.requests.append(r.url))
            page.goto(
                Path(path).resolve().as_uri(),
                timeout=timeout_ms,
                wait_until="load" if wait_ready else "commit",
            )
            if wait_ready:
                page.wait_for_selector("body[data-ready='1']", timeout=timeout_ms, state="attached")
            yield rep
        finally:
            browser.close()
