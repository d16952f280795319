"""Review page over HTTP: authentication, server-side validation, the JSON API."""

from __future__ import annotations

import dataclasses
import re

import pytest
from fastapi.testclient import TestClient
from infgate.plugins.review_ui import create_app
from infgate.review.annotators import add_annotator
from infgate.review.queue import enqueue_scan
from infgate.store import Store
from infgate.store.models import Decision
from sqlalchemy import func, select

from tests.store.fixtures import make_record


def csrf_of(client: TestClient) -> str:
    """The session's CSRF token, read from the review page like a browser would."""
    found = re.search(r'name=csrf_token value="([^"]+)"', client.get("/").text)
    assert found, "the review page carries no CSRF token"
    return found.group(1)


def _decisions(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(Decision)) or 0)


@pytest.fixture
def client(store: Store) -> TestClient:
    scan_id = store.record_scan(make_record(5))
    enqueue_scan(store, scan_id)
    return TestClient(create_app(store))


def test_requests_without_valid_credentials_get_401(
    client: TestClient, annotators: dict[str, str]
) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}  # liveness needs no credentials
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 401 and "Sign in" in page.text
    assert client.get("/api/next").status_code == 401
    assert (
        client.get("/api/stats", headers={"authorization": "Bearer igt_wrong"}).status_code == 401
    )
    client.cookies.set("infgate_session", "1.99999999999.forged")
    assert client.get("/api/stats").status_code == 401
    client.cookies.clear()
    bad = client.post("/login", data={"token": "igt_not-a-token"})
    assert bad.status_code == 401 and "Wrong token" in bad.text
    no_decision = client.post("/decide", data={"item_id": "1", "decision": "keep"})
    assert no_decision.status_code == 401


def test_token_and_password_sign_in(
    client: TestClient, store: Store, annotators: dict[str, str]
) -> None:
    ok = client.post("/login", data={"token": annotators["alice"]}, follow_redirects=False)
    assert ok.status_code == 303 and "infgate_session" in ok.headers["set-cookie"]
    assert "httponly" in ok.headers["set-cookie"].lower()
    page = client.get("/")
    assert page.status_code == 200 and "id=who>alice<" in page.text
    assert "data:image/png;base64," in page.text and 'data-key="k"' in page.text
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    add_annotator(store, "dora", password="correct horse")
    fresh = TestClient(client.app)
    wrong = fresh.post("/login", data={"name": "dora", "password": "wrong horse"})
    assert wrong.status_code == 401
    right = fresh.post("/login", data={"name": "dora", "password": "correct horse"})
    assert right.status_code == 200 and "id=who>dora<" in right.text


def test_form_input_is_validated_server_side(
    client: TestClient, store: Store, annotators: dict[str, str]
) -> None:
    client.post("/login", data={"token": annotators["bob"]})
    item_id = client.get("/api/next").json()["item"]["item_id"]
    csrf = {"csrf_token": csrf_of(client)}
    for data, code in [
        ({"item_id": str(item_id), "decision": "delete"}, 400),
        ({"item_id": str(item_id), "decision": "relabel:cat"}, 400),
        ({"item_id": str(item_id), "decision": "relabel:"}, 400),
        ({"item_id": "1; DROP TABLE decisions", "decision": "keep"}, 422),
        ({"item_id": "9999", "decision": "keep"}, 404),
        ({"item_id": str(10**30), "decision": "keep"}, 422),
        ({"item_id": str(2**63), "decision": "keep"}, 422),
        ({"item_id": "0", "decision": "keep"}, 422),
    ]:
        resp = client.post("/decide", data={**data, **csrf}, headers={"accept": "text/html"})
        assert resp.status_code == code, (data, resp.text)
    assert _decisions(store) == 0
    done = client.post("/decide", data={"item_id": str(item_id), "decision": "relabel:3", **csrf})
    assert done.status_code == 200 and "Saved: item" in done.text
    assert _decisions(store) == 1


def test_json_api_with_bearer_token(client: TestClient, annotators: dict[str, str]) -> None:
    auth = {"authorization": f"Bearer {annotators['carol']}"}
    item = client.get("/api/next", headers=auth).json()["item"]
    assert item["features"] is not None and item["image_shape"] == [8, 8]
    bad = client.post(
        "/api/decisions", headers=auth, json={"item_id": item["item_id"], "action": "zap"}
    )
    assert bad.status_code == 400
    body = {"item_id": item["item_id"], "action": "keep", "lease_token": item["lease_token"]}
    res = client.post("/api/decisions", headers=auth, json=body).json()
    assert res["counted"] is True and res["item_state"] == "done"
    stats = client.get("/api/stats", headers=auth).json()
    assert stats["done"] == 1 and stats["mine_today"] == 1 and stats["left"] == 4
    late = client.post("/api/decisions", headers=auth, json=body)
    assert late.status_code == 409 and "recorded" in late.json()["detail"]


def test_the_page_names_the_score_and_shows_self_influence_apart(
    store: Store, annotators: dict[str, str]
) -> None:
    record = make_record(5)
    findings = record.findings.assign(self_influence=[1189.1, 20.0, 3.0, 2.0, 1.0])
    scan_id = store.record_scan(dataclasses.replace(record, findings=findings))
    enqueue_scan(store, scan_id)
    client = TestClient(create_app(store))
    client.post("/login", data={"token": annotators["alice"]})
    page = client.get("/").text
    assert "Ranking score" in page and "Self-influence score" not in page
    assert "id=self-influence>1189" in page  # the example's own self-influence, apart
    # the explanation says what the sign of an influence means, with the roles named right
    assert "negative = it supports the given label" in page
    assert "support the given label" in page and "support the flag" not in page


def test_token_examples_show_their_ids_without_padding(
    store: Store, annotators: dict[str, str]
) -> None:
    """A scan of padded token sequences (its dataset version keeps the column plan): the
    page shows each example's ids in order with the padding id left out, not a table of
    numbered columns."""
    import numpy as np
    from infgate.store.models import DatasetVersion

    record = make_record(3, image=False)
    seqs = [[5, 9, 2], [7, 7, 1, 3, 4], [11]]
    feats = [np.array(s + [0] * (6 - len(s)), dtype=float) for s in seqs]
    plan = {"kind": "array", "dtype": "int64", "columns": ["tokens"], "pad_token_id": 0}
    record = dataclasses.replace(
        record,
        findings=record.findings.assign(features=feats),
        image_shape=None,
        feature_names=None,
        columns=plan,
    )
    scan_id = store.record_scan(record)
    with store.session() as s:
        dv = s.scalar(select(DatasetVersion))
        assert dv is not None and dv.columns == plan
    enqueue_scan(store, scan_id)
    client = TestClient(create_app(store))
    client.post("/login", data={"token": annotators["alice"]})
    page = client.get("/").text
    shown = re.search(r"<pre id=example class=tokens>([^<]*)</pre>", page)
    assert shown is not None, page[:2000]
    assert shown.group(1).split() in [[str(t) for t in s] for s in seqs]
    assert "(padding id 0 not shown)" in page and "<table id=example" not in page
