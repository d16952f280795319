"""``infgate queue``: the relabeling queue (enqueue, list, claim, decide, Label Studio,
apply, stats)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from infgate.plugins.cli._common import (
    DbOpt,
    JsonOpt,
    TrackingOpt,
    console,
    emit_json,
    fmt,
    guarded,
    json_value,
    open_store,
    print_table,
    settings_from,
)

__all__ = ["queue_app"]

ScanOpt = Annotated[int | None, typer.Option("--scan", help="Only this scan's items.")]
AnnotatorOpt = Annotated[str, typer.Option("--annotator", "-a", help="Annotator name.")]

queue_app = typer.Typer(
    help="The relabeling queue: enqueue findings, claim, decide, Label Studio, apply.",
    no_args_is_help=True,
)

#: ``queue list`` columns: the store's name -> the table's header.
LIST_COLUMNS = {
    "item_id": "item",
    "state": "state",
    "scan_id": "scan",
    "example_id": "example",
    "score": "score",
    "given_label": "given",
    "suggested_label": "suggested",
    "suggestion_confidence": "conf.",
    "claimed_by": "held by",
    "lease_expires_at": "lease until",
    "final_action": "decision",
    "final_label": "final",
}


@queue_app.command("enqueue")
@guarded
def queue_enqueue(
    scan_id: Annotated[int, typer.Argument(help="Scan whose findings to enqueue.")],
    per_class_cap: Annotated[
        int | None, typer.Option(help="At most this many items per given label.")
    ] = None,
    votes: Annotated[int, typer.Option(help="Agreeing annotators needed per item (1 or 2).")] = 1,
    min_score: Annotated[
        float | None, typer.Option(help="Only findings scoring at least this.")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Turn a scan's suspected label errors into queue items, most suspicious first.

    Findings already queued are skipped, so a re-run adds nothing.
    """
    from infgate.review.queue import enqueue_scan

    n = enqueue_scan(
        open_store(db),
        scan_id,
        per_class_cap=per_class_cap,
        required_votes=votes,
        min_score=min_score,
    )
    console.print(f"enqueued [bold]{n}[/] item(s) from scan {scan_id}")


@queue_app.command("list")
@guarded
def queue_list(
    scan: ScanOpt = None,
    state: Annotated[str | None, typer.Option(help="pending, claimed or done.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 30,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show queue items, highest priority first."""
    from infgate.review.queue import list_items

    frame = list_items(open_store(db), scan_id=scan, state=state, limit=limit)
    cols = [c for c in LIST_COLUMNS if c in frame.columns]
    records = [dict(zip(cols, row, strict=True)) for row in frame[cols].itertuples(index=False)]
    if as_json:
        emit_json([json_value(r) for r in records])
        return
    print_table(
        [LIST_COLUMNS[c] for c in cols],
        [[r[c] for c in cols] for r in records],
        title=f"Queue ({len(records)} shown)",
        numeric=["item", "scan", "score", "conf."],
    )


@queue_app.command("next")
@guarded
def queue_next(
    annotator: AnnotatorOpt,
    lease: Annotated[int | None, typer.Option(help="Lease length in seconds.")] = None,
    db: DbOpt = None,
) -> None:
    """Claim the next item for an annotator (or show the one they already hold)."""
    from infgate.review.queue import claim_next

    lease_seconds = lease if lease is not None else settings_from(db).lease_seconds
    item = claim_next(open_store(db), annotator, lease_seconds=lease_seconds)
    if item is None:
        console.print(f"nothing left in the queue for {annotator}")
        return
    keys = ("example_id", "given_label", "suggested_label", "suggestion_confidence", "score")
    rows = [(k, getattr(item, k)) for k in keys]
    rows += [("lease token", item.lease_token), ("lease expires", item.lease_expires_at)]
    print_table(["field", "value"], rows, title=f"Queue item {item.item_id}")
    console.print(
        f"decide with: infgate queue decide {item.item_id} keep|relabel|not_sure|invalid "
        f"-a {annotator} [--label CLASS]",
        markup=False,
    )


@queue_app.command("decide")
@guarded
def queue_decide(
    item_id: Annotated[int, typer.Argument(help="Queue item id.")],
    action: Annotated[str, typer.Argument(help="keep, relabel, not_sure or invalid.")],
    annotator: AnnotatorOpt,
    label: Annotated[str | None, typer.Option(help="Class to relabel to (relabel only).")] = None,
    lease_token: Annotated[str | None, typer.Option(help="Token printed by `queue next`.")] = None,
    db: DbOpt = None,
) -> None:
    """Record a decision on an item the annotator holds."""
    from infgate.review.queue import decide

    res = decide(
        open_store(db),
        item_id,
        annotator,
        action,  # type: ignore[arg-type]  # decide() validates it with a clear message
        label=label,
        lease_token=lease_token,
    )
    console.print(
        f"decision #{res.decision_id}: item {res.item_id} {res.action} "
        f"({fmt(res.label_before)} -> {fmt(res.label_after)}); item is now {res.item_state}",
        markup=False,
    )


@queue_app.command("export")
@guarded
def queue_export(
    out: Annotated[Path, typer.Argument(help="Label Studio tasks JSON to write.")],
    scan: ScanOpt = None,
    config: Annotated[
        Path | None, typer.Option(help="Also write the Label Studio labeling config (XML).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Export unresolved items as Label Studio import JSON (with predictions)."""
    from infgate.review.labelstudio import export_tasks, labeling_config

    store = open_store(db)
    tasks = export_tasks(store, scan_id=scan)
    out.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
    console.print(f"wrote {len(tasks)} task(s) to {out}")
    if config is not None:
        scans = [store.get_scan(scan)] if scan is not None else store.list_scans(1)
        if not scans:
            console.print("no scan in the store yet: no labeling config written")
            return
        info = scans[0]
        config.write_text(
            labeling_config(
                info.classes or [],
                image=info.image_shape is not None,
                tokens=bool(info.columns)
                and info.columns.get("kind") == "array"
                and info.columns.get("dtype") == "int64",
            ),
            encoding="utf-8",
        )
        console.print(f"wrote the labeling config to {config}")


@queue_app.command("import")
@guarded
def queue_import(
    path: Annotated[Path, typer.Argument(help="Label Studio JSON export.")],
    db: DbOpt = None,
) -> None:
    """Import a Label Studio JSON export as decisions (all or nothing)."""
    from infgate.review.labelstudio import import_annotations

    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    summary = import_annotations(open_store(db), path)
    console.print(
        f"imported {summary.decisions} decision(s) from {summary.tasks} task(s); "
        f"{summary.counted} counted, {summary.skipped_cancelled} cancelled skipped"
    )


@queue_app.command("apply")
@guarded
def queue_apply(
    scan: Annotated[int, typer.Option("--scan", help="Scan whose decisions to apply.")],
    out: Annotated[Path, typer.Option(help="Parquet file for the corrected dataset version.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The scanned dataset (parquet/csv with example_id + label); default: the "
            "scan's URI."
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
    db: DbOpt = None,
) -> None:
    """Write a corrected dataset version: decided labels applied, invalid examples dropped;
    every other column kept as the file stores it."""
    from infgate.review.queue import apply_decisions, scanned_dataset

    settings = settings_from(db, tracking_uri)
    store = open_store(db)
    info = store.get_scan(scan)
    source = data or (Path(info.dataset_uri) if info.dataset_uri else None)
    if source is None or not source.is_file():
        raise typer.BadParameter(
            f"the scan's dataset URI {info.dataset_uri!r} is no file: pass --data PATH",
            param_hint="--data",
        )
    dataset = scanned_dataset(store, scan, source)
    applied = apply_decisions(
        store, dataset, scan_id=scan, out_path=out, tracking_uri=settings.tracking_uri
    )
    console.print(
        f"dataset version {applied.dataset_version_id} ({applied.content_hash[:12]}): "
        f"{applied.n_relabeled} relabeled, {applied.n_dropped} dropped -> {out}"
        + (f"; MLflow run {applied.mlflow_run_id}" if applied.mlflow_run_id else ""),
        markup=False,
    )


@queue_app.command("stats")
@guarded
def queue_stats_cmd(
    scan: ScanOpt = None,
    annotator: Annotated[
        str | None, typer.Option(help="Count today's decisions of one person.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Progress: items left, decided today, agreement between annotators."""
    from infgate.review.queue import queue_stats

    st = queue_stats(open_store(db), scan_id=scan, annotator=annotator)
    if as_json:
        emit_json(
            {
                "items": st.total,
                "pending": st.pending,
                "claimed": st.claimed,
                "done": st.done,
                "left": st.left,
                "decided_today": st.decided_today,
                "late_decisions": st.flagged_decisions,
                "agreement": st.agreement,
                "agreement_items": st.agreement_items,
            }
        )
        return
    agreement = "-" if st.agreement is None else f"{st.agreement:.0%} of {st.agreement_items}"
    rows = [
        ("items", st.total),
        ("left (pending + claimed)", st.left),
        ("claimed now", st.claimed),
        ("done", st.done),
        ("decided today", st.decided_today),
        ("late decisions (expired lease)", st.flagged_decisions),
        ("agreement", agreement),
    ]
    print_table(["measure", "value"], rows, title="Queue progress")
