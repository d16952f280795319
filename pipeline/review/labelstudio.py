"""Label Studio round trip: export the queue as Label Studio import JSON, import a Label
Studio JSON export back as decisions.

Export: one task per queue item, ``data`` (the example as an image data URI or a table,
plus its ids), ``meta`` with the finding id, and ``predictions`` carrying the suggested
label (``score`` = the finding's score; higher = more suspicious). The labeling config has
one single-choice ``Choices`` control named ``label`` holding every class plus
``Not sure`` and ``Not a valid example``.

Import: ``annotations[].result[].value.choices`` of each task, matched by
``meta.finding_id`` (or ``data.finding_id``). The whole file is checked first and written
in one transaction: an unknown finding, an unknown label or a malformed file changes nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from infgate.errors import InvalidInputError
from infgate.review.annotators import check_name
from infgate.review.decisions import check_id, check_label, record_decision
from infgate.review.queue import get_item
from infgate.review.render import png_data_uri
from infgate.store import Store
from infgate.store.models import Annotator, DatasetVersion, Finding, QueueItem, Scan
from sqlalchemy import select

__all__ = [
    "INVALID_CHOICE",
    "NOT_SURE_CHOICE",
    "ImportSummary",
    "export_tasks",
    "import_annotations",
    "labeling_config",
]

log = logging.getLogger(__name__)
NOT_SURE_CHOICE = "Not sure"
INVALID_CHOICE = "Not a valid example"
_FROM = "label"


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_annotations` wrote."""

    tasks: int
    decisions: int
    counted: int
    skipped_cancelled: int


def _scan_classes(store: Store, scan_id: int | None) -> tuple[list[str], bool]:
    with store.session() as s:
        stmt = select(DatasetVersion.classes, DatasetVersion.image_shape).join(
            Scan, Scan.dataset_version_id == DatasetVersion.id
        )
        if scan_id is not None:
            stmt = stmt.where(Scan.id == scan_id)
        row = s.execute(stmt.order_by(Scan.id.desc()).limit(1)).one_or_none()
    if row is None:
        raise InvalidInputError(f"no scan {scan_id if scan_id is not None else ''} in the store")
    return [str(c) for c in (row[0] or [])], bool(row[1])


def labeling_config(classes: list[str], *, image: bool, tokens: bool = False) -> str:
    """The Label Studio labeling config (XML) matching :func:`export_tasks`: an image, the
    token ids as text (``tokens``), or a table of feature values."""
    clash = {NOT_SURE_CHOICE, INVALID_CHOICE} & set(classes)
    if clash:
        raise InvalidInputError(f"class names {sorted(clash)} collide with infgate's choices")
    to_name = "image" if image else "example"
    if image:
        view = '  <Image name="image" value="$image"/>'
    elif tokens:
        view = '  <Text name="example" value="$example"/>'
    else:
        view = '  <Table name="example" value="$example"/>'

    choices = "\n".join(
        f"    <Choice value={quoteattr(c)}/>" for c in [*classes, NOT_SURE_CHOICE, INVALID_CHOICE]
    )
    return (
        "<View>\n"
        f"{view}\n"
        '  <Header value="Given label: $given_label"/>\n'
        f'  <Choices name="{_FROM}" toName="{to_name}" choice="single" showInLine="true">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )


def export_tasks(store: Store, *, scan_id: int | None = None) -> list[dict[str, Any]]:
    """Label Studio import JSON (a list of tasks) for every unresolved queue item."""
    with store.session() as s:
        stmt = select(QueueItem.id).where(QueueItem.state != "done")
        if scan_id is not None:
            stmt = stmt.where(QueueItem.scan_id == scan_id)
        ids = list(s.scalars(stmt.order_by(QueueItem.priority.desc(), QueueItem.id)))
    tasks = []
    for item_id in ids:
        it = get_item(store, item_id)
        data: dict[str, Any] = {
            "example_id": it.example_id,
            "given_label": it.given_label,
            "finding_id": it.finding_id,
        }
        to_name = "example"
        if it.features is not None and it.image_shape is not None:
            data["image"] = png_data_uri(it.features, it.image_shape, scale=10)
            to_name = "image"
        elif it.features is not None and it.tokens:  # the ids in order, padding left out
            data["example"] = " ".join(str(t) for t in it.token_ids())
        elif it.features is not None:
            names = it.feature_names or [f"f{i}" for i in range(len(it.features))]
            data["example"] = {str(n): float(v) for n, v in zip(names, it.features, strict=False)}
        task: dict[str, Any] = {
            "data": data,
            "meta": {
                "finding_id": it.finding_id,
                "queue_item_id": it.item_id,
                "scan_id": it.scan_id,
                "example_id": it.example_id,
                "suggestion_confidence": it.suggestion_confidence,
            },
            "predictions": [],
        }
        if it.suggested_label is not None:
            task["predictions"] = [
                {
                    "model_version": f"infgate-scan-{it.scan_id}",
                    "score": float(it.score),
                    "result": [
                        {
                            "from_name": _FROM,
                            "to_name": to_name,
                            "type": "choices",
                            "value": {"choices": [it.suggested_label]},
                        }
                    ],
                }
            ]
        tasks.append(task)
    return tasks


def _load(source: str | Path | list[Any]) -> list[Any]:
    if isinstance(source, list):
        return source
    path = Path(source)
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"Label Studio export {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"Label Studio export {path} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, list):
        raise InvalidInputError(
            f"Label Studio export {path} must be a JSON list of tasks (the 'JSON' export), "
            f"got a {type(parsed).__name__}"
        )
    return parsed


def _finding_id(task: dict[str, Any], where: str) -> int:
    for holder in (task.get("meta"), task.get("data")):
        if isinstance(holder, dict) and "finding_id" in holder:
            value = holder["finding_id"]
            # a bool is an int in Python, never an id (``"finding_id": true`` is not finding 1)
            if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 100:
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"{where}: finding_id {value!r} is not an integer")
            try:
                return check_id(value, "finding_id")
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}: {exc}") from None
    raise InvalidInputError(f"{where}: no meta.finding_id (was this task exported by infgate?)")


def _choice(result: list[Any], where: str) -> str | None:
    if not isinstance(result, list):
        raise InvalidInputError(f"{where}: 'result' must be a list")
    for entry in result:
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{where}: result entries must be objects")
        if entry.get("type") != "choices" or entry.get("from_name", _FROM) != _FROM:
            continue
        choices = (
            entry.get("value", {}).get("choices") if isinstance(entry.get("value"), dict) else None
        )
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], str):
            raise InvalidInputError(
                f"{where}: value.choices must hold exactly one label, got {choices!r}"
            )
        return choices[0]
    return None


def _who(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id", who.get("email"))
    name = f"labelstudio-{who if who is not None else 'unknown'}"
    return check_name(name)


def import_annotations(store: Store, source: str | Path | list[Any]) -> ImportSummary:
    """Import a Label Studio JSON export as decisions (all or nothing).

    Raises:
        InvalidInputError: malformed file, a finding id that is not an integer id (``true``
            included), unknown finding, finding not in the queue, a label the model does
            not have, or a deactivated annotator; nothing is written.
    """
    tasks = _load(source)
    n_dec = n_counted = n_cancel = 0
    with store.session() as s:
        for t, task in enumerate(tasks):
            where = f"task #{t} (id {task.get('id') if isinstance(task, dict) else '?'})"
            if not isinstance(task, dict):
                raise InvalidInputError(f"{where}: each task must be a JSON object")
            fid = _finding_id(task, where)
            annotations = task.get("annotations", [])
            if not isinstance(annotations, list):
                raise InvalidInputError(f"{where}: 'annotations' must be a list")
            found = s.execute(
                select(QueueItem.id, Finding.given_label, DatasetVersion.classes, Scan.n_outputs)
                .join(Finding, QueueItem.finding_id == Finding.id)
                .join(Scan, QueueItem.scan_id == Scan.id)
                .join(DatasetVersion, Scan.dataset_version_id == DatasetVersion.id)
                .where(Finding.id == fid)
            ).one_or_none()
            if found is None:
                raise InvalidInputError(f"{where}: finding {fid} is unknown or not in the queue")
            item_id, given, classes, n_outputs = found
            for a, ann in enumerate(annotations):
                if not isinstance(ann, dict):
                    raise InvalidInputError(f"{where} annotation #{a}: must be a JSON object")
                if ann.get("was_cancelled"):
                    n_cancel += 1
                    continue
                choice = _choice(ann.get("result", []), f"{where} annotation #{a}")
                if choice is None:
                    continue
                action, label = _action(
                    choice, given, classes, n_outputs, f"{where} annotation #{a}"
                )
                name = _who(ann)
                me, active = s.execute(
                    select(Annotator.id, Annotator.active).where(Annotator.name == name)
                ).one_or_none() or (None, True)
                if not active:
                    raise InvalidInputError(
                        f"{where} annotation #{a}: annotator {name!r} is deactivated; "
                        f"their decisions are not imported"
                    )
                if me is None:
                    new = Annotator(name=name)
                    s.add(new)
                    s.flush()
                    me = new.id
                res = record_decision(
                    s,
                    item_id,
                    me,
                    action,
                    label=label,
                    lease_token=None,
                    require_lease=False,
                    source="labelstudio",
                    note=f"Label Studio annotation {ann.get('id')}",
                )
                n_dec += 1
                n_counted += int(res.counted)
    log.info("imported %d Label Studio decisions (%d counted)", n_dec, n_counted)
    return ImportSummary(len(tasks), n_dec, n_counted, n_cancel)


def _action(
    choice: str,
    given: str | None,
    classes: list[str] | None,
    n_outputs: int | None,
    where: str,
) -> tuple[str, str | None]:
    if choice == NOT_SURE_CHOICE:
        return "not_sure", None
    if choice == INVALID_CHOICE:
        return "invalid", None
    known = [str(c) for c in classes] if classes else None
    try:  # the model's output count, else the class names (one rule for every entry point)
        label = check_label(choice, known, n_outputs)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    return ("keep", None) if label == given else ("relabel", label)
