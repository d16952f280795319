"""Review page hardening: CSRF and origin checks, sign-in rate limit, constant-work sign-in,
token lookup before scrypt, server-side sessions, the UI secret, Secure cookies, big ids."""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from infgate.errors import ConfigError
from infgate.plugins.review_ui import create_app
from infgate.plugins.review_ui.security import UIOptions
from infgate.review import annotators as ann_mod
from infgate.review.annotators import (
    add_annotator,
    authenticate_password,
    authenticate_token,
    deactivate_annotator,
    revoke_annotator,
)
from infgate.review.queue import enqueue_scan
from infgate.settings import Settings
from infgate.store import Store
from infgate.store.models import Decision
from sqlalchemy import func, select

from tests.store.fixtures import make_record

COOKIE = "infgate_session"


def _decisions(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(Decision)) or 0)


def _app(store: Store, options: UIOptions | None = None, **settings: object) -> TestClient:
    return TestClient(create_app(store, Settings(**settings), options))  # type: ignore[arg-type]


@pytest.fixture
def queued(store: Store) -> Store:
    enqueue_scan(store, store.record_scan(make_record(5)))
    return store


def _sign_in(client: TestClient, token: str) -> str:
    """Sign in with ``token``; returns the session's CSRF token from the page."""
    assert client.post("/login", data={"token": token}).status_code == 200
    found = re.search(r'name=csrf_token value="([^"]+)"', client.get("/").text)
    assert found
    return found.group(1)


def _next_id(client: TestClient) -> int:
    found = re.search(r'name=item_id value="(\d+)"', client.get("/").text)
    assert found
    return int(found.group(1))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cross_origin_posts_are_refused(queued: Store, annotators: dict[str, str]) -> None:
    client = _app(queued)
    csrf = _sign_in(client, annotators["alice"])
    item = _next_id(client)
    form = {"item_id": str(item), "decision": "invalid", "csrf_token": csrf}
    for origin in ("http://testserver:8081", "null", "https://evil.example"):
        r = client.post("/decide", data=form, headers={"origin": origin})
        assert r.status_code == 403 and "cross-origin" in r.text, origin
    r = client.post("/decide", data=form, headers={"referer": "http://testserver:8081/attack"})
    assert r.status_code == 403
    r = client.post("/login", data={"token": annotators["bob"]}, headers={"origin": "null"})
    assert r.status_code == 403
    assert _decisions(queued) == 0
    ok = client.post("/decide", data=form, headers={"origin": "http://testserver"})
    assert ok.status_code == 200 and "Saved: item" in ok.text and _decisions(queued) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_csrf_token_is_required_with_a_session_cookie(
    queued: Store, annotators: dict[str, str]
) -> None:
    client = _app(queued)
    csrf = _sign_in(client, annotators["alice"])
    item = _next_id(client)
    # one character changed at position 0, which carries a full 6 bits of the
    # HMAC (the last character of a 32-byte urlsafe-base64 digest carries only
    # 4, so replacing it with "A" left the token unchanged 1 time in 16)
    tampered = ("B" if csrf[0] == "A" else "A") + csrf[1:]
    assert tampered != csrf
    for extra in ({}, {"csrf_token": "x" * 43}, {"csrf_token": tampered}):
        r = client.post("/decide", data={"item_id": str(item), "decision": "keep", **extra})
        assert r.status_code == 403 and "CSRF" in r.text
    body = {"item_id": item, "action": "keep"}
    assert client.post("/api/decisions", json=body).status_code == 403
    other = _app(queued)  # another session's token does not fit this one
    other_csrf = _sign_in(other, annotators["bob"])
    r = client.post("/api/decisions", json=body, headers={"X-CSRF-Token": other_csrf})
    assert r.status_code == 403
    assert _decisions(queued) == 0
    r = client.post("/api/decisions", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["counted"] is True
    # a bearer token is never attached by a browser on its own: no CSRF token needed
    api = _app(queued)
    auth = {"authorization": f"Bearer {annotators['carol']}"}
    nxt = api.get("/api/next", headers=auth).json()["item"]
    r = api.post("/api/decisions", headers=auth, json={"item_id": nxt["item_id"], "action": "keep"})
    assert r.status_code == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sign_in_is_rate_limited_per_name_and_per_client(queued: Store) -> None:
    add_annotator(queued, "dora", password="correct horse", with_token=False)
    add_annotator(queued, "eve", password="battery staple", with_token=False)
    options = UIOptions(max_user_failures=3, max_client_failures=5, window_seconds=2)
    client = _app(queued, options)
    for _ in range(3):
        assert client.post("/login", data={"name": "dora", "password": "nope"}).status_code == 401
    limited = client.post("/login", data={"name": "dora", "password": "correct horse"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert COOKIE not in client.cookies  # the right password is still refused while limited
    ok = client.post("/login", data={"name": "eve", "password": "battery staple"})
    assert ok.status_code == 200  # another name from the same client is not limited yet
    for name in ("x1", "x2"):  # 3 + 2 failures from this client: the client limit is hit
        assert client.post("/login", data={"name": name, "password": "nope"}).status_code == 401
    r = client.post("/login", data={"name": "eve", "password": "battery staple"})
    assert r.status_code == 429
    time.sleep(2.2)  # the window passes: the right password works again
    r = client.post("/login", data={"name": "dora", "password": "correct horse"})
    assert r.status_code == 200 and "id=who>dora<" in r.text


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every scrypt the credential checks run."""
    calls: list[int] = []
    real: Callable[..., bytes] = ann_mod._scrypt

    def counting(secret: str, salt: bytes, n: int) -> bytes:
        calls.append(n)
        return real(secret, salt, n)

    monkeypatch.setattr(ann_mod, "_scrypt", counting)
    return calls


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unknown_names_cost_the_same_scrypt_as_known_ones(
    store: Store, scrypt_calls: list[int]
) -> None:
    add_annotator(store, "dora", password="correct horse", with_token=False)
    add_annotator(store, "nopass", with_token=False)
    add_annotator(store, "gone", password="correct horse", with_token=False)
    deactivate_annotator(store, "gone")
    work = {}
    for name in ("dora", "nobody", "nopass", "gone"):
        scrypt_calls.clear()
        start = time.perf_counter()
        assert authenticate_password(store, name, "wrong password") is None
        work[name] = (len(scrypt_calls), time.perf_counter() - start)
    assert {k: calls for k, (calls, _) in work.items()} == {
        "dora": 1,
        "nobody": 1,
        "nopass": 1,
        "gone": 1,
    }
    assert scrypt_calls == [2**14]  # the dummy hash has the real cost
    # generous: an unknown name takes at least a third of a known one (was 1.4 vs 40.7 ms)
    assert work["nobody"][1] > work["dora"][1] / 3
    assert authenticate_password(store, "dora", "correct horse") is not None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_forged_bearer_tokens_run_no_scrypt(
    queued: Store, annotators: dict[str, str], scrypt_calls: list[int]
) -> None:
    client = _app(queued)
    real_id = annotators["alice"].split(".")[0]
    forged = [f"igt_{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}" for _ in range(50)]
    forged += ["igt_1_" + "a" * 43, "igt_" + "0" * 16, "x" * 300, f"{real_id}.short"]
    for token in forged:
        r = client.get("/api/stats", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401
    assert scrypt_calls == []
    ok = client.get("/api/stats", headers={"authorization": f"Bearer {annotators['alice']}"})
    assert ok.status_code == 200 and len(scrypt_calls) == 1
    # a wrong secret behind a real token id does cost one (it has to be checked)
    assert authenticate_token(queued, f"{real_id}.{secrets.token_urlsafe(32)}") is None
    assert len(scrypt_calls) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_logout_revoke_and_deactivate_end_sessions(
    queued: Store, annotators: dict[str, str]
) -> None:
    client = _app(queued)
    csrf = _sign_in(client, annotators["alice"])
    cookie = client.cookies[COOKIE]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 200
    stolen = _app(queued)
    stolen.cookies.set(COOKIE, cookie)
    assert stolen.get("/api/stats").status_code == 401  # the old cookie is dead server-side

    add_annotator(queued, "dora", password="correct horse", with_token=False)
    _sign_in(client, annotators["bob"])
    bob_cookie = client.cookies[COOKIE]
    assert revoke_annotator(queued, "bob") == 1
    stolen.cookies.set(COOKIE, bob_cookie)
    assert stolen.get("/api/stats").status_code == 401
    bearer = {"authorization": f"Bearer {annotators['bob']}"}
    assert stolen.get("/api/stats", headers=bearer).status_code == 401
    assert stolen.post("/login", data={"token": annotators["bob"]}).status_code == 401

    web = _app(queued)
    assert web.post("/login", data={"name": "dora", "password": "correct horse"}).status_code == 200
    doras = _next_id(web)  # dora claims an item
    decided = _decisions(queued)
    deactivate_annotator(queued, "dora")
    assert web.get("/api/stats").status_code == 401
    r = web.post("/login", data={"name": "dora", "password": "correct horse"})
    assert r.status_code == 401
    assert _decisions(queued) == decided  # data kept
    carol = _app(queued)
    auth = {"authorization": f"Bearer {annotators['carol']}"}
    seen = set()
    while (item := carol.get("/api/next", headers=auth).json()["item"]) is not None:
        seen.add(item["item_id"])
        carol.post(
            "/api/decisions", headers=auth, json={"item_id": item["item_id"], "action": "keep"}
        )
    assert doras in seen  # dora's claimed item was released to the others


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "weak", ["x", "0" * 64, "a" * 64, secrets.token_hex(16), "not base64 at all!" * 4]
)
def test_weak_ui_secret_is_refused(store: Store, weak: str) -> None:
    with pytest.raises(ConfigError, match="INFGATE_UI_SECRET"):
        create_app(store, Settings(ui_secret=weak))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_strong_ui_secrets_keep_sessions_across_restarts(
    queued: Store, annotators: dict[str, str]
) -> None:
    for strong in (secrets.token_urlsafe(32), base64.b64encode(secrets.token_bytes(48)).decode()):
        create_app(queued, Settings(ui_secret=strong))
    key = secrets.token_hex(32)
    first = _app(queued, ui_secret=key)
    _sign_in(first, annotators["alice"])
    restarted = _app(queued, ui_secret=key)
    restarted.cookies.set(COOKIE, first.cookies[COOKIE])
    assert restarted.get("/api/stats").status_code == 200
    other_key = _app(queued, ui_secret=secrets.token_hex(32))
    other_key.cookies.set(COOKIE, first.cookies[COOKIE])
    assert other_key.get("/api/stats").status_code == 401


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_secure_cookie_over_https(queued: Store, annotators: dict[str, str]) -> None:
    def cookie_header(client: TestClient) -> str:
        r = client.post("/login", data={"token": annotators["alice"]}, follow_redirects=False)
        assert r.status_code == 303
        return r.headers["set-cookie"].lower()

    app = create_app(queued, Settings())
    assert "; secure" in cookie_header(TestClient(app, base_url="https://testserver"))
    assert "; secure" not in cookie_header(TestClient(app, base_url="http://testserver"))
    forced = create_app(queued, Settings(), UIOptions(secure_cookies=True))
    assert "; secure" in cookie_header(TestClient(forced, base_url="http://testserver"))
    with pytest.raises(ConfigError, match="secure_cookies"):
        UIOptions(secure_cookies="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_out_of_range_ids_get_4xx(queued: Store, annotators: dict[str, str]) -> None:
    client = _app(queued)
    auth = {"authorization": f"Bearer {annotators['alice']}"}
    for item_id in (10**30, 2**63, 2**31, 0, -1, True):
        r = client.post("/api/decisions", headers=auth, json={"item_id": item_id, "action": "keep"})
        assert 400 <= r.status_code < 500, (item_id, r.status_code)
    assert (
        client.get("/api/next", params={"lease_seconds": 10**30}, headers=auth).status_code == 400
    )
    assert client.get("/api/next", params={"lease_seconds": 5}, headers=auth).status_code == 400
    assert _decisions(queued) == 0
