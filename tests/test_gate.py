"""The Great Expectations gate: each check blocks on its own, with its observed value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from infgate.config import GateConfig
from infgate.errors import InvalidInputError
from infgate.gate import DEFAULTS_PATH, GateCheck, GateInputs, load_gate_config, run_gate

N = 200


def _frame(n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((n, 3)), columns=["a", "b", "c"])
    df.insert(0, "example_id", [f"x{i}" for i in range(n)])
    df["label"] = rng.integers(0, 3, n)
    return df


def _findings(n_suspects: int, confidence: float = 0.6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "example_id": [f"x{i}" for i in range(n_suspects + 5)],
            "is_suspect": [True] * n_suspects + [False] * 5,
            "suggestion_confidence": [confidence] * (n_suspects + 5),
        }
    )


def _inputs(**kw: object) -> GateInputs:
    base: dict[str, object] = dict(
        frame=_frame(),
        label_column="label",
        feature_columns=["a", "b", "c"],
        n_classes=3,
        findings=_findings(4),
        registered_rows=N,
    )
    base.update(kw)
    return GateInputs(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def config() -> GateConfig:
    return load_gate_config()


def failed(verdict: object) -> dict[str, GateCheck]:
    return {r.name: r for r in verdict.reasons}  # type: ignore[attr-defined]


def test_clean_scan_passes_every_check(config: GateConfig) -> None:
    v = run_gate(_inputs(mismatch_p_value=0.4, mismatch_alpha=0.05), config)
    assert v.verdict == "passed" and v.reasons == ()
    assert {c.name for c in v.checks} == {
        "labels_in_range",
        "unique_ids",
        "missing_features",
        "row_count",
        "suspect_rate",
        "high_confidence_suspects",
        "mismatch",
    }


def test_suspect_rate_blocks_with_observed_rate_and_reviews_unblock(config: GateConfig) -> None:
    sink: list[str] = []
    v = run_gate(_inputs(findings=_findings(20)), config, sink=lambda x: sink.append(x.verdict))
    assert sink == ["blocked"]  # the checkpoint action saw the verdict once
    r = failed(v)["suspect_rate"]
    assert r.observed == pytest.approx(20 / N)
    assert r.threshold["max"] == config.max_suspect_rate
    assert r.allowed == f">= 0, <= {config.max_suspect_rate:.4g}"
    # 11 of the 20 suspects reviewed -> 9 / 200 = 4.5% <= 5%
    reviewed = frozenset(f"x{i}" for i in range(11))
    assert run_gate(_inputs(findings=_findings(20), reviewed_ids=reviewed), config).passed


def test_unreviewed_high_confidence_suspects_block(config: GateConfig) -> None:
    v = run_gate(_inputs(findings=_findings(3, confidence=0.99)), config)
    assert set(failed(v)) == {"high_confidence_suspects"}
    assert failed(v)["high_confidence_suspects"].observed == 3


def test_mismatch_blocks_below_the_tests_own_alpha(config: GateConfig) -> None:
    v = run_gate(_inputs(mismatch_p_value=0.001, mismatch_alpha=0.05), config)
    r = failed(v)["mismatch"]
    assert r.observed == pytest.approx(0.001) and "mismatch" in r.message
    # the level is the scan's mismatch.alpha (one place), not a second gate setting
    assert run_gate(_inputs(mismatch_p_value=0.001, mismatch_alpha=0.0005), config).passed


def test_training_data_checks(config: GateConfig) -> None:
    df = _frame()
    df.loc[3, "label"] = 7
    df.loc[5, "example_id"] = "x4"
    df.loc[[1, 2], "b"] = np.nan
    v = run_gate(_inputs(frame=df, registered_rows=N + 1), config)
    reasons = failed(v)
    assert reasons["labels_in_range"].unexpected_examples == (7,)
    assert reasons["unique_ids"].observed == 2
    missing = reasons["missing_features"]
    assert missing.column == "missing_features" and missing.observed == 2  # rows
    assert missing.details["null_columns"] == {"b": 2} and "b: 2" in missing.message
    assert reasons["row_count"].observed == N
    assert v.summary().count(";") == len(v.reasons) - 1


def test_config_file_overrides_and_bad_values(tmp_path: Path) -> None:
    p = tmp_path / "gate.yaml"
    p.write_text("max_suspect_rate: 0.2\n")
    cfg = load_gate_config(p)
    assert cfg.max_suspect_rate == 0.2
    assert cfg.high_confidence == 0.95  # untouched default
    p.write_text("deployment_alias: prod\n")  # a setting now (INFGATE_DEPLOYMENT_ALIAS)
    with pytest.raises(InvalidInputError, match="deployment_alias"):
        load_gate_config(p)
    p.write_text("max_suspect_rat: 0.2\n")
    with pytest.raises(InvalidInputError, match="max_suspect_rat"):
        load_gate_config(p)
    with pytest.raises(InvalidInputError, match=r"1\.5"):
        GateConfig(max_suspect_rate=1.5)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_gate_config(tmp_path / "missing.yaml")


def test_packaged_defaults_yaml_equals_the_dataclass_defaults() -> None:
    import yaml

    assert yaml.safe_load(DEFAULTS_PATH.read_text()) == GateConfig().to_dict()
