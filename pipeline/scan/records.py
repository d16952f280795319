"""How a scan's outputs become store rows and loggable params (helpers of the stages)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from infgate.data.streamed import feature_rows

if TYPE_CHECKING:
    from infgate.scan.results import LoadedScan

__all__ = ["findings_to_store", "json_safe"]


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def findings_to_store(
    loaded: LoadedScan, ranking: pd.DataFrame, mismatch: dict[str, Any] | None, store_top: int
) -> pd.DataFrame:
    """The rows a scan stores: every suspect plus the top ``store_top`` of the ranking."""
    keep = ranking["is_suspect"].astype(bool) | (ranking["rank"] <= store_top)
    rows = ranking.loc[keep].copy()
    rows["kind"] = "label_error"
    pos = pd.Series(
        np.arange(len(loaded.train.data)), index=loaded.train.data.example_ids.astype(str)
    )
    idx = pos.loc[rows["example_id"].astype(str)].to_numpy()
    kept = feature_rows(loaded.train.data, idx)  # streamed data: one pass, these rows only
    rows["features"] = [r.tolist() for r in kept.reshape(len(idx), -1)]
    frames = [rows]
    examples = (mismatch or {}).get("examples") or []
    flagged = sorted((e for e in examples if e.get("flagged")), key=lambda e: -float(e["score"]))
    if flagged:
        frames.append(
            pd.DataFrame(
                {
                    "example_id": [str(e["example_id"]) for e in flagged],
                    "score": [float(e["score"]) for e in flagged],
                    "rank": np.arange(1, len(flagged) + 1),
                    "is_suspect": True,
                    "kind": "domain_mismatch",
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
