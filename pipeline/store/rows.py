"""Turning a ScanRecord's findings frame into finding rows (labels as class names, the
example's features and its explanation kept so the review page can show them)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd
from infgate.errors import InvalidInputError
from infgate.store.records import ScanRecord

__all__ = ["explanation_map", "finding_values"]

_KNOWN = {
    "example_id",
    "kind",
    "score",
    "rank",
    "given_label",
    "predicted_label",
    "suggested_label",
    "suggestion_confidence",
    "is_suspect",
    "features",
    "supporting",
    "opposing",
}


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays / lists
        return False


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def explanation_map(frame: pd.DataFrame | None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``explain()`` output grouped by example: ``{example_id: {"supporting": [...], ...}}``."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {"supporting": [], "opposing": []}
    )
    if frame is None or len(frame) == 0:
        return {}
    need = {"example_id", "train_example_id", "influence", "role"}
    if not need <= set(frame.columns):
        raise InvalidInputError(
            f"ScanRecord.explanations needs columns {sorted(need)}, got {list(frame.columns)}"
        )
    for row in frame.to_dict("records"):
        role = str(row["role"])
        if role not in ("supporting", "opposing"):
            raise InvalidInputError(f"explanation role must be supporting/opposing, got {role!r}")
        out[str(row["example_id"])][role].append(
            {"train_example_id": str(row["train_example_id"]), "influence": float(row["influence"])}
        )
    return dict(out)


def _refs(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list | tuple | np.ndarray):
        return []
    refs = []
    for item in value:
        if isinstance(item, dict):
            refs.append(
                {
                    "train_example_id": str(item.get("train_example_id", item.get("example_id"))),
                    "influence": _json_value(item.get("influence")),
                }
            )
        else:
            refs.append({"train_example_id": str(item), "influence": None})
    return refs


def finding_values(
    record: ScanRecord, row: dict[str, Any], explained: dict[str, dict[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Column values of one ``findings`` row."""
    ex = str(row["example_id"])
    score = float(row["score"])
    values: dict[str, Any] = {
        "kind": str(row["kind"]),
        "example_id": ex,
        "score": score,
        "rank": int(row["rank"]),
        "given_label": record.class_name(
            None if _missing(row.get("given_label")) else row["given_label"]
        ),
        "predicted_label": record.class_name(
            None if _missing(row.get("predicted_label")) else row["predicted_label"]
        ),
        "suggested_label": record.class_name(
            None if _missing(row.get("suggested_label")) else row["suggested_label"]
        ),
        "suggestion_confidence": None
        if _missing(row.get("suggestion_confidence"))
        else float(row["suggestion_confidence"]),
        "is_suspect": True if _missing(row.get("is_suspect")) else bool(row["is_suspect"]),
    }
    feats = row.get("features")
    if isinstance(feats, list | tuple | np.ndarray):
        arr = np.asarray(feats, dtype=float).ravel()
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"features of example {ex!r} contain NaN or inf")
        values["features"] = [float(v) for v in arr]
    else:
        values["features"] = None
    expl = {
        "supporting": _refs(row.get("supporting")),
        "opposing": _refs(row.get("opposing")),
    }
    if ex in explained:
        expl["supporting"] += explained[ex]["supporting"]
        expl["opposing"] += explained[ex]["opposing"]
    values["explanation"] = expl if (expl["supporting"] or expl["opposing"]) else None
    extra = {k: _json_value(v) for k, v in row.items() if k not in _KNOWN and not _missing(v)}
    values["extra"] = extra or None
    return values
