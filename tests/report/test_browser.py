"""``report.html`` in a real headless Chromium (Debian ``chromium``, driven by Playwright):
the verdict and every gate check are visible, every picture is inlined and decodes, the
page asks for nothing over the network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.report.conftest import FlowScan

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed"),
]


def test_report_shows_the_verdict_and_every_check(flow_scan: FlowScan, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    page_path = flow_scan.report_dir / "report.html"
    checks = json.loads((flow_scan.report_dir / "gate_verdict.json").read_text())["checks"]
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(page_path.as_uri())
            verdict = page.locator("#verdict")
            assert verdict.is_visible() and verdict.inner_text() == "gate BLOCKED"
            rows = page.locator("#checks tr")
            assert rows.count() == len(checks) + 1
            for i, check in enumerate(checks, start=1):
                row = rows.nth(i)
                assert row.is_visible()
                assert check["name"] in row.inner_text()
                assert ("held" if check["success"] else "failed") in row.inner_text()
            assert page.locator("#sign-note").is_visible()
            assert "supports" in page.locator("#sign-note").inner_text()
            broken = page.evaluate(
                "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length"
            )
            n_images = page.evaluate("document.images.length")
            # 3 figures + a picture per suspect row and per explained example
            assert n_images > 3 and broken == 0
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert requested == [page_path.as_uri()]  # self-contained: no other request
