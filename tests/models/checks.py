"""What every family scan must show, read back from the store and the registry."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tests.models.conftest import Registered

#: What ``auto`` must pick: exact at or under 20,000 selected parameters, else EK-FAC.
EXPECTED_METHOD = {"mlp": "exact", "conv1d": "exact", "resnet": "ekfac", "transformer": "ekfac"}


def check_stored_scan(db_url: str, scan_id: int, r: Registered, verdict: str) -> Any:
    """The stored scan: completed, findings, the gate's verdict, the curvature choice and the
    damping from the training run's weight decay. Returns the ``ScanInfo``."""
    from infgate.store import Store

    store = Store.from_url(db_url)
    info = store.get_scan(scan_id)
    assert info.status == "completed" and info.n_rows == len(r.data.train)
    assert info.model_name == r.reg.name and info.model_version == r.reg.version
    findings = store.findings_frame(scan_id)
    label_errors = findings[findings["kind"] == "label_error"]
    assert len(label_errors) >= min(len(r.data.train), 100)
    assert info.gate is not None and info.gate.get("verdict", verdict) == verdict
    curvature = info.curvature or {}
    assert curvature["method"] == info.method == EXPECTED_METHOD[r.data.kind]
    assert curvature["damping"] == info.damping == r.options.weight_decay
    assert curvature["damping_source"] == "training run weight_decay"
    assert curvature["n_params"] == r.reg.n_params
    choice = curvature["choice"]
    assert choice["requested"] == "auto" and choice["method"] == info.method
    assert f"{r.reg.n_params:,} selected parameters" in choice["reason"]
    assert choice["left_out"] == {}  # every parameter is selected and trainable
    if info.method == "ekfac":
        own = choice["own_block"]
        assert own, "EK-FAC leaves norms/embeddings to its own diagonal block"
        assert set(choice["covered"]).isdisjoint(own)
        assert len(choice["covered"]) + len(own) == len([n for n in choice["covered"]] + list(own))
    else:
        assert len(choice["covered"]) > 0 and choice["own_block"] == {}
    tags = _version_tags(r)
    assert tags["infgate.gate"] == verdict and tags["infgate.scan_id"] == str(scan_id)
    return info


def _version_tags(r: Registered) -> dict[str, str]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=r.server.uri, registry_uri=r.server.uri)
    return dict(c.get_model_version(r.reg.name, r.reg.version).tags)


def average_precision(flipped: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ``scores`` (higher = more suspicious) at finding ``flipped``."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(flipped.astype(int), scores))


def stored_scores(db_url: str, scan_id: int) -> dict[str, float]:
    """The stored ranking: every suspect plus the top rows (``detect.store_top``)."""
    from infgate.store import Store

    findings = Store.from_url(db_url).findings_frame(scan_id)
    findings = findings[findings["kind"] == "label_error"]
    ids, scores = findings["example_id"].astype(str), findings["score"].astype(float)
    return dict(zip(ids, scores, strict=True))


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """``values`` with all but the ``k`` largest set below the smallest (ranked last)."""
    out = np.full(len(values), float(values.min()) - 1.0)
    top = np.argsort(-values, kind="stable")[:k]
    out[top] = values[top]
    return out


def average_precisions(db_url: str, scan_id: int, r: Registered) -> tuple[float, float]:
    """AP at finding the planted flips of the stored ranking and of the in-sample loss,
    both over the same number of top rows (the store keeps only its top rows, so the rest
    rank last for both)."""
    score = stored_scores(db_url, scan_id)
    ids = r.data.train["example_id"].astype(str)
    floor = min(score.values()) - 1.0
    ranking = np.array([score.get(i, floor) for i in ids])
    loss = _top_k(in_sample_loss(r), len(score))
    return average_precision(r.data.flipped, ranking), average_precision(r.data.flipped, loss)


def in_sample_loss(r: Registered) -> np.ndarray:
    """The registered model's cross-entropy on its (noisy) training labels, in frame order."""
    from infgate.registry import load_model, load_training_data, resolve_model_version

    mv = resolve_model_version(r.reg.uri, tracking_uri=r.server.uri)
    model = load_model(mv, tracking_uri=r.server.uri)
    data = load_training_data(mv, tracking_uri=r.server.uri).data
    x = torch.as_tensor(np.asarray(data.features))
    x = x.float() if x.is_floating_point() else x.long()
    with torch.no_grad():
        loss = F.cross_entropy(model(x), torch.as_tensor(data.labels), reduction="none")
    order = {str(e): i for i, e in enumerate(data.example_ids)}
    ids = r.data.train["example_id"].astype(str)
    return loss.numpy()[[order[i] for i in ids]].astype(np.float64)
