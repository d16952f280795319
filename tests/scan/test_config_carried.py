"""One ScanConfig reaches every stage unchanged (issue: params/loss dropped, a second
curvature fit for the mismatch test, damping=0.0 stored for the default damping)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def loaded() -> object:
    """A trained 2-layer MLP on digits with 10% flipped training labels (suspects to explain)
    and a clean evaluation split, as the load stage gives it."""
    from infgate.data import EvalData, TrainingData
    from infgate.data.training import flip_labels
    from infgate.examples.models import make_classifier, train_classifier
    from infgate.registry import ModelVersionRef, ResolvedData
    from infgate.scan import LoadedScan
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    noisy, _ = flip_labels(y[:300], 0.1, 10, np.random.default_rng(0))
    train = TrainingData(x[:300], noisy, name="digits")
    model = make_classifier(64, 10, hidden=(8,), generator=torch.Generator().manual_seed(0))
    train_classifier(model, torch.as_tensor(train.features), torch.as_tensor(train.labels))
    model.eval()
    mv = ModelVersionRef(name="digits-mlp", version="1")
    frame = train.to_frame()
    return LoadedScan(
        mv,
        model,
        ResolvedData(train, frame, "in-memory", "test", None, "label"),
        EvalData(x[300:400], y[300:400]),
        10,
        weight_decay=1e-3,
        subject="digits-mlp v1",
    )


def test_params_and_loss_reach_the_curvature_fit(loaded: object) -> None:
    from infgate.config import ScanConfig
    from infgate.errors import InvalidInputError
    from infgate.scan import fit_stage

    last = ScanConfig().with_overrides(**{"influence.method": "exact", "influence.params": ["2"]})
    scorer = fit_stage(loaded, last)  # type: ignore[arg-type]
    assert scorer.engine.n_params == 8 * 10 + 10  # only the last Linear ("2.weight", "2.bias")
    mse = ScanConfig().with_overrides(**{"influence.method": "exact", "influence.loss": "mse"})
    # the MSE objective is in force (dropped on the old path): class indices do not fit it
    with pytest.raises(InvalidInputError, match="targets of shape"):
        fit_stage(loaded, mse)  # type: ignore[arg-type]


def test_one_fit_and_one_sweep_serve_ranking_explanations_and_mismatch(
    loaded: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infgate.config import ScanConfig
    from infgate.detect import loo as loo_module
    from infgate.detect import mismatch as mismatch_module
    from infgate.influence import api
    from infgate.scan import analyse

    fits: list[int] = []
    original = api.InfluenceScorer.__init__

    def counting(self: object, *args: object, **kwargs: object) -> None:
        fits.append(1)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(api.InfluenceScorer, "__init__", counting)
    config = ScanConfig().with_overrides(
        **{"detect.explain_top": 2, "mismatch.n_permutations": 50, "mismatch.max_reference": 50}
    )
    sweeps: list[int] = []
    original_sweep = loo_module._sweep

    def counting_sweep(*args: object, **kwargs: object) -> object:
        sweeps.append(1)
        return original_sweep(*args, **kwargs)  # type: ignore[arg-type]

    given: list[object] = []
    original_detector = mismatch_module.MismatchDetector.__init__

    def capturing(self: object, *args: object, **kwargs: object) -> None:
        given.append(kwargs.get("loo"))
        original_detector(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loo_module, "_sweep", counting_sweep)
    monkeypatch.setattr(mismatch_module, "_sweep", counting_sweep)
    monkeypatch.setattr(mismatch_module.MismatchDetector, "__init__", capturing)
    analysis = analyse(loaded, config)  # type: ignore[arg-type]
    assert len(fits) == 1
    assert len(sweeps) == 1  # one leave-one-out sweep, shared by ranking and mismatch test
    (loo,) = given
    assert isinstance(loo, loo_module.LooOutputs) and len(loo.labels) == 300
    assert analysis.mismatch is not None and analysis.explanations is not None
    assert len(analysis.ranking) == 300
    assert "loo" in analysis.timings


def test_damping_used_and_its_source_are_reported_and_stored(
    loaded: object, tmp_path: Path
) -> None:
    from infgate.config import ScanConfig
    from infgate.scan import analyse, scan_identity, store_stage
    from infgate.store import Store

    config = ScanConfig().with_overrides(
        **{"influence.method": "exact", "mismatch.n_permutations": 50, "mismatch.max_reference": 50}
    )
    analysis = analyse(loaded, config)  # type: ignore[arg-type]
    cur = analysis.curvature
    assert cur.damping == pytest.approx(1e-3) and cur.damping_source == "training run weight_decay"
    store = Store.from_url(f"sqlite:///{tmp_path}/infgate.db")
    store.upgrade()
    scan_id = store_stage(store, loaded, config, analysis, scan_identity(config, loaded))  # type: ignore[arg-type]
    info = store.get_scan(scan_id)
    assert info.damping == pytest.approx(1e-3) and info.method == "exact"
    assert info.config["influence"]["method"] == "exact"  # the whole config is stored
    assert info.config["gate"] == config.gate.to_dict()
    # without a logged weight decay the back-end's rule applies, and the value used is stored
    explicit = config.with_overrides(**{"influence.damping_from_run": False})
    again = analyse(loaded, explicit)  # type: ignore[arg-type]
    assert again.curvature.damping > 0 and again.curvature.damping != pytest.approx(1e-3)
    assert again.curvature.damping_source != "config"


def test_scan_config_from_yaml_dict_and_overrides(tmp_path: Path) -> None:
    from infgate.config import ScanConfig
    from infgate.errors import ConfigError

    p = tmp_path / "scan.yaml"
    p.write_text("influence:\n  method: ekfac\n  params: [fc]\ngate:\n  max_suspect_rate: 0.1\n")
    cfg = ScanConfig.from_yaml(p)
    assert cfg.influence.method == "ekfac" and cfg.influence.params == ("fc",)
    assert cfg.gate.max_suspect_rate == 0.1
    assert ScanConfig.from_dict(cfg.to_dict()) == cfg
    over = cfg.with_overrides(**{"influence.damping": 0.01, "influence.batch_size": None})
    assert over.influence.damping == 0.01 and over.influence.batch_size == 256
    assert cfg.influence.damping is None  # the original is unchanged
    assert over.identity_hash() != cfg.identity_hash()
    assert (
        cfg.with_overrides(**{"gate.max_suspect_rate": 0.2}).identity_hash() == cfg.identity_hash()
    )
    with pytest.raises(ConfigError, match=r"influence option.*methd"):
        ScanConfig.from_dict({"influence": {"methd": "exact"}})
    with pytest.raises(ConfigError, match="damping"):
        ScanConfig.from_dict({"influence": {"damping": -1}})
    with pytest.raises(ConfigError, match="section"):
        ScanConfig.from_dict({"influenc": {}})
    with pytest.raises(ConfigError, match="does not exist"):
        ScanConfig.from_yaml(tmp_path / "nope.yaml")
    flat = cfg.flat_params()
    assert flat["influence.method"] == "ekfac" and flat["gate.max_suspect_rate"] == 0.1


def test_settings_is_the_one_reader_of_the_environment() -> None:
    from infgate.errors import ConfigError
    from infgate.settings import Settings, check_lease_seconds

    s = Settings.from_env(
        {
            "INFGATE_DB_URL": "sqlite:///x.db",
            "INFGATE_REVIEW_ALIASES": "a, b",
            "INFGATE_UI_SECRET": "k",
        }
    )
    assert s.db_url == "sqlite:///x.db" and s.review_aliases == ("a", "b")
    assert "s3cr3t-value" not in repr(s)  # secrets never in repr or logs
    assert Settings.from_env({}, db_url="postgresql://h/db").db_url == "postgresql://h/db"
    with pytest.raises(ConfigError, match="INFGATE_WEBHOOK_MAX_AGE"):
        Settings.from_env({"INFGATE_WEBHOOK_MAX_AGE": "soon"})
    with pytest.raises(ConfigError, match="lease_seconds"):
        check_lease_seconds(10**6)
