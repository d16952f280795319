"""The review page in a real headless Chromium (Debian `chromium`, driven by Playwright):
sign in, label three items with the keyboard, find the decisions in the store."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from infgate.plugins.review_ui import create_app
from infgate.review.queue import enqueue_scan
from infgate.store import Store
from infgate.store.models import Annotator, Decision, QueueItem
from sqlalchemy import select

from tests.store.fixtures import make_record

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed"),
]


@pytest.fixture
def served(store: Store) -> Iterator[str]:
    """The review page on a free loopback port, served by uvicorn in a thread."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sign_in_and_label_three_items_with_the_keyboard(
    store: Store, served: str, annotators: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    scan_id = store.record_scan(make_record(6))
    enqueue_scan(store, scan_id)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            first = page.goto(served + "/")
            assert first is not None and first.status == 401  # no credentials yet
            page.fill("#token", annotators["alice"])
            page.click("form.login button[type=submit]")
            expect(page.locator("#who")).to_have_text("alice")
            expect(page.locator("#example")).to_be_visible()
            natural = page.eval_on_selector("#example", "img => img.naturalWidth")
            assert natural == 8 * 24  # the 8x8 digit, drawn as a picture
            done: list[tuple[int, str, str | None]] = []
            for key in ("k", "s", "x"):
                item_id = int(str(page.get_attribute("article.item", "data-item")))
                suggested = page.inner_text("#suggested")
                page.keyboard.press(key)
                page.wait_for_selector(f"article.item:not([data-item='{item_id}']), #empty")
                expected = {
                    "k": ("keep", None),
                    "s": ("relabel", suggested),
                    "x": ("invalid", None),
                }
                done.append((item_id, *expected[key]))
            expect(page.locator("#mine-today")).to_have_text("3")
            expect(page.locator("#left")).to_have_text("3")
            shot = Path(os.environ.get("INFGATE_UI_SCREENSHOT", tmp_path / "review.png"))
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with store.session() as s:
        rows = s.execute(
            select(Decision.queue_item_id, Decision.action, Decision.label_after, Decision.source)
            .join(Annotator, Decision.annotator_id == Annotator.id)
            .where(Annotator.name == "alice")
            .order_by(Decision.id)
        ).all()
        states = dict(s.execute(select(QueueItem.id, QueueItem.state)).all())
    assert [(r.queue_item_id, r.action) for r in rows] == [(i, a) for i, a, _ in done]
    assert rows[1].label_after == done[1][2]
    assert {r.source for r in rows} == {"ui"}
    assert all(states[i] == "done" for i, _, _ in done)
