"""The influence stage's JSON payload (``flows/influence_payload.py``): frames come back with
the same rows, order, dtypes, values and ``attrs``; a payload of other data is refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from infgate.errors import DatasetMismatchError, InfluenceRunError
from infgate.flows.influence_payload import (
    frame_from_payload,
    frame_to_payload,
    stage_from_payload,
    stage_to_payload,
)


def ranking_like(n: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "example_id": pd.Series([f"e{i}" for i in range(n)], dtype="str"),
            "score": rng.normal(size=n),
            "rank": np.arange(1, n + 1),
            "is_suspect": np.arange(n) < 3,
            "suggestion_confidence": np.append(rng.uniform(size=n - 1), np.nan),
        }
    )
    frame.attrs.update({"n_estimated_errors": np.int64(3), "damping": 1e-3})
    return frame


def test_frames_round_trip_through_json_exactly() -> None:
    frame = ranking_like()
    back = frame_from_payload(json.loads(json.dumps(frame_to_payload(frame))))
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert back.attrs == {"n_estimated_errors": 3, "damping": 1e-3}
    empty = frame.iloc[:0]
    pd.testing.assert_frame_equal(frame_from_payload(frame_to_payload(empty)), empty)


def test_stage_payload_checks_version_and_data() -> None:
    from infgate.scan.results import Analysis, CurvatureSummary

    frame = ranking_like()
    curvature = CurvatureSummary("exact", 1e-3, "config", 650, {"why": "small"}, 0.25)
    analysis = Analysis(frame, None, None, curvature, {"influence": 1.5})
    payload = json.loads(json.dumps(stage_to_payload(analysis, dataset_hash="abc")))
    back = stage_from_payload(payload, dataset_hash="abc")
    pd.testing.assert_frame_equal(back.ranking, frame)
    assert back.explanations is None and back.mismatch is None
    assert back.timings == {"influence": 1.5} and back.curvature == curvature
    with pytest.raises(DatasetMismatchError, match="hash abc"):
        stage_from_payload(payload, dataset_hash="def")
    with pytest.raises(InfluenceRunError, match="list"):
        stage_from_payload([{"example_id": "1"}], dataset_hash="abc")
