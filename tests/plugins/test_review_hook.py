"""Model-review hook: signature checks, routing, and an end-to-end run with real servers.

End to end: a real ``mlflow server`` with webhooks enabled, the receiver under uvicorn on
127.0.0.1, Prefect's test harness. Registering a model version with flipped labels must
end with the version tagged ``blocked`` and its findings in SQL and in the queue; forged,
stale and replayed deliveries start nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from infgate.errors import ConfigError
from infgate.plugins.review_hook import EmbeddedStarter, HookSettings, create_app, verify_signature
from infgate.plugins.review_hook.app import ScanRequest, route
from infgate.settings import Settings
from infgate.store import Store

from tests.services import MlflowServer, free_port, small_digits

STRONG = "Zq3-v8Kp_x1Lw9Yt2Rb7Nc4Hd6Jf0Gm5Ae"  # 34 characters, all different


def sign(secret: str, delivery_id: str, stamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{delivery_id}.{stamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def test_signature_matches_mlflow_implementation() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    secret, did, stamp, body = "s" * 32, "d-1", "1700000000", '{"a": 1}'
    header = _generate_hmac_signature(secret, did, stamp, body)
    assert verify_signature(secret, did, stamp, body.encode(), header)
    assert not verify_signature(secret, did, stamp, b'{"a": 2}', header)
    assert not verify_signature("t" * 32, did, stamp, body.encode(), header)
    assert not verify_signature(secret, did, "1700000001", body.encode(), header)
    assert not verify_signature(secret, did, stamp, body.encode(), header.replace("v1", "v2"))


def test_routing_ignores_own_tags_and_other_aliases() -> None:
    s = HookSettings(secret=STRONG)

    def ev(entity: str, action: str, **data: str) -> dict[str, object]:
        return {"entity": entity, "action": action, "data": {"name": "m", "version": "3", **data}}

    assert route(s, ev("model_version", "created"), "d").action == "scan"  # type: ignore[union-attr]
    assert route(s, ev("model_version_alias", "created", alias="candidate"), "d").action == "scan"  # type: ignore[union-attr]
    assert route(s, ev("model_version_alias", "created", alias="champion"), "d").action == "enforce"  # type: ignore[union-attr]
    assert route(s, ev("model_version_alias", "created", alias="other"), "d") is None
    assert route(s, ev("model_version_tag", "set", key="infgate.gate"), "d") is None
    assert route(s, ev("model_version_tag", "set", key="infgate.rescan"), "d").action == "scan"  # type: ignore[union-attr]
    assert route(s, ev("registered_model", "created"), "d") is None
    assert route(s, {"entity": "model_version", "action": "created", "data": [1]}, "d") is None


@pytest.mark.parametrize("weak", ["short", " " * 16, " " * 40, "s" * 32, "ab" * 16, "x"])
def test_weak_webhook_secrets_are_refused_at_start_up(weak: str) -> None:
    with pytest.raises(ConfigError, match="too weak") as err:
        HookSettings(secret=weak)
    assert weak.strip() == "" or weak not in str(err.value)  # the secret is never shown
    with pytest.raises(ConfigError, match="too weak"):
        HookSettings.from_env(Settings(webhook_secret=weak))


def test_settings_come_from_the_one_environment_reader(tmp_path: Path) -> None:
    env = {
        "INFGATE_WEBHOOK_SECRET": STRONG,
        "INFGATE_WEBHOOK_MAX_AGE": "42",
        "INFGATE_DEPLOYMENT_ALIAS": "prod",
        "INFGATE_REVIEW_ALIASES": "candidate, staging",
        "INFGATE_DB_URL": f"sqlite:///{tmp_path}/hook.db",
    }
    hook = HookSettings.from_env(Settings.from_env(env))
    assert (hook.secret, hook.max_age_seconds, hook.deployment_alias) == (STRONG, 42, "prod")
    assert hook.review_aliases == ("candidate", "staging")
    assert hook.db_url == env["INFGATE_DB_URL"]
    with pytest.raises(ConfigError, match="INFGATE_WEBHOOK_SECRET"):
        HookSettings.from_env(Settings.from_env({}))


class Recording:
    """A starter that only records what it was asked to start."""

    def __init__(self) -> None:
        self.requests: list[ScanRequest] = []

    def submit(self, request: ScanRequest) -> None:
        self.requests.append(request)


def _signed_headers(body: bytes, did: str | None = None) -> dict[str, str]:
    did = did or str(uuid.uuid4())
    stamp = str(int(time.time()))
    return {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": sign(STRONG, did, stamp, body),
    }


async def _asgi_post(app: object, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple:
    """POST /webhook straight to the ASGI app; counts how often the app reads the body."""
    reads = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal reads
        reads += 1
        chunk = next(chunks, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhook",
        "raw_path": b"/webhook",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)  # type: ignore[operator]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, reads


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_body_over_the_limit_is_refused_before_it_is_read(store: Store) -> None:
    import asyncio
    import itertools

    app = create_app(HookSettings(secret=STRONG), Recording(), store=store)
    huge = {**_signed_headers(b"{}"), "Content-Length": str(300 * 2**20)}
    status, reads = asyncio.run(_asgi_post(app, huge, iter(())))
    assert (status, reads) == (413, 0)  # answered from the header alone
    # no Content-Length (chunked): reading stops once the stream passes the 1 MiB limit
    endless = (b"x" * 65536 for _ in itertools.count())
    status, reads = asyncio.run(_asgi_post(app, _signed_headers(b"{}"), endless))
    assert status == 413 and reads <= 2**20 // 65536 + 2
    # and an unsigned delivery is refused before its body is read, whatever its size
    status, reads = asyncio.run(_asgi_post(app, {"Content-Length": "900"}, iter([b"{}"])))
    assert (status, reads) == (401, 0)


def test_replay_is_refused_after_a_receiver_restart(store: Store) -> None:
    from fastapi.testclient import TestClient

    body = _version_payload("m", "1")
    headers = _signed_headers(body)
    first, second = Recording(), Recording()
    with TestClient(create_app(HookSettings(secret=STRONG), first, store=store)) as http:
        assert http.post("/webhook", content=body, headers=headers).status_code == 202
    # a fresh process: a new app over a new connection to the same store
    again = Store.from_url(store.engine.url.render_as_string(hide_password=False))
    try:
        restarted = create_app(HookSettings(secret=STRONG), second, store=again)
        with TestClient(restarted) as http:
            r = http.post("/webhook", content=body, headers=headers)
        assert r.status_code == 409 and "replay" in r.json()["error"]
        other = _signed_headers(body)  # a new delivery of the same event is accepted
        with TestClient(restarted) as http:
            assert http.post("/webhook", content=body, headers=other).status_code == 202
    finally:
        again.dispose()
    assert len(first.requests) == 1 and len(second.requests) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_signed_json_that_is_not_an_object_gets_400(store: Store) -> None:
    from fastapi.testclient import TestClient

    starter = Recording()
    with TestClient(create_app(HookSettings(secret=STRONG), starter, store=store)) as http:
        for body in (b"[1, 2]", b'"model_version"', b"3", b"null", b"true", b"[" * 50_000):
            r = http.post("/webhook", content=body, headers=_signed_headers(body))
            assert r.status_code == 400, (body[:20], r.text)
        odd = json.dumps({"entity": "model_version", "action": "created", "data": 7}).encode()
        r = http.post("/webhook", content=odd, headers=_signed_headers(odd))
        assert r.status_code == 202 and r.json()["action"] == "ignored"
    assert starter.requests == []


@dataclass
class Receiver:
    url: str
    secret: str
    starter: EmbeddedStarter
    db_url: str


@pytest.fixture(scope="module")
def receiver(
    mlflow_server: MlflowServer, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Receiver]:
    import uvicorn
    from infgate.plugins.review_hook.register import register_webhook

    root = tmp_path_factory.mktemp("hook")
    secret = secrets.token_urlsafe(32)
    db_url = f"sqlite:///{root}/infgate.db"
    starter = EmbeddedStarter(
        db_url=db_url, tracking_uri=mlflow_server.uri, report_root=str(root / "reports")
    )
    app = create_app(HookSettings(secret=secret, max_age_seconds=120, db_url=db_url), starter)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/webhook"
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    register_webhook(url, tracking_uri=mlflow_server.uri, secret=secret)
    try:
        yield Receiver(url, secret, starter, db_url)
    finally:
        starter.wait_idle(120)
        starter.close()
        server.should_exit = True
        thread.join(timeout=10)


def _version_payload(name: str, version: str) -> bytes:
    return json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "now",
            "data": {
                "name": name,
                "version": version,
                "source": "",
                "run_id": None,
                "tags": {},
                "description": None,
            },
        }
    ).encode()


@dataclass
class Hooked:
    """The ``hooked`` version registered while the receiver listens, once it was handled."""

    version: str
    digits: object
    runs: list


@pytest.fixture(scope="module")
def hooked(
    receiver: Receiver, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Hooked:
    """Register ``hooked`` (flipped labels) and wait until the receiver's scan finished:
    every test that needs the registered, scanned version asks for this, in any order."""
    from infgate.examples.demo_registry import register_model_with_data

    digits = small_digits(n=500, noise=0.1, seed=1)
    reg = register_model_with_data(
        digits.data,  # type: ignore[arg-type]
        name="hooked",
        workdir=tmp_path_factory.mktemp("hooked"),
        tracking_uri=mlflow_server.uri,
        true_labels=digits.clean,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any(
        s.request.model_name == "hooked" for s in receiver.starter.started
    ):
        time.sleep(0.2)
    assert receiver.starter.wait_idle(240)
    runs = [s for s in receiver.starter.started if s.request.model_name == "hooked"]
    return Hooked(reg.version, digits, runs)


def test_registering_flipped_labels_blocks_the_version(
    hooked: Hooked, receiver: Receiver, mlflow_server: MlflowServer
) -> None:
    from infgate.review.annotators import ensure_annotator
    from infgate.review.queue import claim_next
    from infgate.store import Store
    from mlflow import MlflowClient

    digits: Any = hooked.digits
    runs = hooked.runs
    assert runs, "the webhook started no flow run"
    assert len(runs) == 1
    assert runs[0].request.event == "model_version.created"
    assert runs[0].outcome.get("verdict") == "blocked", runs[0].outcome
    tags = (
        MlflowClient(mlflow_server.uri, mlflow_server.uri)
        .get_model_version("hooked", hooked.version)
        .tags
    )
    assert tags["infgate.gate"] == "blocked"
    assert "suspected label-error rate" in tags["infgate.reason"]
    store = Store.from_url(receiver.db_url)
    info = store.latest_scan("hooked", hooked.version)
    assert info is not None and str(info.id) == tags["infgate.scan_id"]
    findings = store.findings_frame(info.id)
    suspects = set(findings.loc[findings["is_suspect"].astype(bool), "example_id"].astype(str))
    flipped_ids = {str(i) for i in range(500) if digits.flipped[i]}
    assert len(suspects & flipped_ids) >= 0.5 * len(flipped_ids)
    assert info.gate is not None and info.gate["verdict"] == "blocked"
    ensure_annotator(store, "tester")
    item = claim_next(store, "tester")
    assert item is not None and item.scan_id == info.id and item.example_id in suspects


def test_forged_stale_and_replayed_deliveries_start_nothing(receiver: Receiver) -> None:
    receiver.starter.wait_idle(240)
    before = len(receiver.starter.started)
    body = _version_payload("hooked", "1")
    now = str(int(time.time()))
    did = str(uuid.uuid4())
    forged = {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": now,
        "X-MLflow-Signature": sign("not-the-secret-" + "x" * 20, did, now, body),
    }
    r = httpx.post(receiver.url, content=body, headers=forged)
    assert r.status_code == 401 and "signature" in r.json()["error"]
    r = httpx.post(receiver.url, content=body, headers={"X-MLflow-Delivery-Id": did})
    assert r.status_code == 401
    old = str(int(time.time()) - 3600)
    stale = {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": old,
        "X-MLflow-Signature": sign(receiver.secret, did, old, body),
    }
    r = httpx.post(receiver.url, content=body, headers=stale)
    assert r.status_code == 401 and "stale" in r.json()["error"]
    # a valid rescan request for a tag event infgate ignores: accepted, starts nothing ...
    tag_body = json.dumps(
        {
            "entity": "model_version_tag",
            "action": "set",
            "data": {"name": "hooked", "version": "1", "key": "note", "value": "x"},
        }
    ).encode()
    good = {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": now,
        "X-MLflow-Signature": sign(receiver.secret, did, now, tag_body),
    }
    r = httpx.post(receiver.url, content=tag_body, headers=good)
    assert r.status_code == 202 and r.json()["action"] == "ignored"
    # ... and the same delivery again is a replay, even re-signed with a fresh body
    r = httpx.post(receiver.url, content=tag_body, headers=good)
    assert r.status_code == 409 and "replay" in r.json()["error"]
    body2 = _version_payload("hooked", "1")
    replay = {
        "X-MLflow-Delivery-Id": did,
        "X-MLflow-Timestamp": now,
        "X-MLflow-Signature": sign(receiver.secret, did, now, body2),
    }
    r = httpx.post(receiver.url, content=body2, headers=replay)
    assert r.status_code == 409
    time.sleep(1.0)
    assert len(receiver.starter.started) == before


def test_deployment_alias_on_a_blocked_version_is_withdrawn(
    hooked: Hooked, receiver: Receiver, mlflow_server: MlflowServer
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    mv = client.get_model_version("hooked", hooked.version)
    assert mv.tags.get("infgate.gate") == "blocked"
    before = len(receiver.starter.started)
    client.set_registered_model_alias("hooked", "champion", hooked.version)
    deadline = time.time() + 60
    while time.time() < deadline and len(receiver.starter.started) == before:
        time.sleep(0.1)
    assert receiver.starter.wait_idle(60)
    enforced = receiver.starter.started[before:]
    assert [s.request.action for s in enforced] == ["enforce"]
    assert enforced[0].outcome == {"alias_withdrawn": True}
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("hooked", "champion")
