"""Open an HTML file in a real headless Chromium (Debian's ``chromium``, driven by Playwright) and report what it drew.

The browser and Playwright are installed by ``.ci/run``; where either is missing the check skips, except under
``CI=true``, where it fails (a missing browser must not pass CI silently).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]  # offline machine: no background connections; WebGL in software

# per chart container: does it hold a plotly div that plotly laid out, with traces and drawn SVG layers?
_CHART_STATE = """(cls) => Array.from(document.querySelectorAll('.' + cls)).map(box => {
  const plot = box.querySelector('.plotly-graph-div');
  return {key: box.dataset.chart, laid_out: !!(plot && plot._fullLayout),
          traces: plot && plot._fullData ? plot._fullData.length : 0,
          svg_layers: plot ? plot.querySelectorAll('.main-svg').length : 0,
          height: plot ? plot.getBoundingClientRect().height : 0};
})"""


@dataclass
class PageReport:
    """What the browser saw: console errors, uncaught exceptions, requests that left the file, chart states."""
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict] = field(default_factory=list)


def chromium_path() -> str:
    """The Chromium binary (``VOLBENCH_CHROMIUM`` or ``chromium`` on PATH); skip, or fail under ``CI=true``."""
    path = os.environ.get("VOLBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("Debian's chromium package is not installed (apt-get install chromium)")
    return str(path)


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what}; CI must run the browser test")
    pytest.skip(what)


def open_in_chromium(page_path: Path, screenshot: Path, chart_class: str, settle_ms: int = 1500) -> PageReport:
    """Load ``page_path`` headless, wait for the charts, save a full-page screenshot, return a :class:`PageReport`."""
    binary = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    report = PageReport()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: report.errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: report.errors.append(f"uncaught: {exc}"))
            page.on("request", lambda req: None if req.url.startswith(("file:", "data:", "blob:", "about:"))
                    else report.requests.append(req.url))
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            page.wait_for_timeout(settle_ms)
            report.charts = page.evaluate(_CHART_STATE, chart_class)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return report
