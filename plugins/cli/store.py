"""``infgate db``, ``infgate annotator``, ``infgate queue`` and ``infgate ui`` command groups."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from infgate.errors import InfgateError
from rich.console import Console
from rich.table import Table

__all__ = ["annotator_app", "db_app", "queue_app", "ui_app"]

console = Console()
err_console = Console(stderr=True)

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="INFGATE_DB_URL",
        help="Store URL (default sqlite:///infgate.db; postgresql+psycopg2://... at scale).",
        show_default=False,
    ),
]
ScanOpt = Annotated[int | None, typer.Option("--scan", help="Only this scan's items.")]
AnnotatorOpt = Annotated[str, typer.Option("--annotator", "-a", help="Annotator name.")]

db_app = typer.Typer(help="Create or upgrade the findings store's schema.", no_args_is_help=True)
annotator_app = typer.Typer(
    help="Manage annotators and their login credentials.", no_args_is_help=True
)
queue_app = typer.Typer(
    help="The relabeling queue: enqueue findings, claim, decide, Label Studio, apply.",
    no_args_is_help=True,
)
ui_app = typer.Typer(help="The annotators' review page.", no_args_is_help=True)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Show infgate's own errors as one red line and exit 1 (no traceback)."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except InfgateError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    except OperationalError as exc:  # server down, wrong password, unreadable file
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        err_console.print(f"[bold red]error:[/] cannot use the store: {first}", soft_wrap=True)
        raise typer.Exit(1) from None


def _store(db: str | None) -> Any:
    from infgate.store import Store

    store = Store.from_url(db)
    store.check_schema()
    return store


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def _table(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, header_style="bold cyan", row_styles=["", "dim"])
    for col in frame.columns:
        table.add_column(str(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    return table


# -- db ------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Create the tables, or migrate them to this infgate's schema revision."""
    from infgate.store import Store

    with _clear_errors():
        store = Store.from_url(db)
        rev = store.upgrade()
        console.print(f"store [bold]{store.url}[/] is at schema revision [green]{rev}[/]")


@db_app.command("current")
def db_current(db: DbOpt = None) -> None:
    """Show the store's schema revision and the one this infgate needs."""
    from infgate.store import Store
    from infgate.store.engine import current_revision, head_revision

    with _clear_errors():
        store = Store.from_url(db)
        console.print(
            f"store {store.url}: {current_revision(store.engine)} (needs {head_revision()})"
        )


# -- annotators ----------------------------------------------------------------------------


@annotator_app.command("add")
def annotator_add(
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, _.@:-).")],
    with_password: Annotated[
        bool, typer.Option("--password", help="Also set a password (prompted, hidden).")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Create an annotator and print their login token ONCE (it is stored hashed)."""
    from infgate.review.annotators import add_annotator

    with _clear_errors():
        store = _store(db)
        password = (
            typer.prompt("Password", hide_input=True, confirmation_prompt=True)
            if with_password
            else None
        )
        token = add_annotator(store, name, password=password)
        console.print(f"annotator [bold]{name}[/] created. Login token (shown only now):")
        typer.echo(token)


@annotator_app.command("list")
def annotator_list(db: DbOpt = None) -> None:
    """List annotators (credentials are never shown)."""
    from infgate.review.annotators import list_annotators

    with _clear_errors():
        rows = [(a.id, a.name, a.active) for a in list_annotators(_store(db))]
        console.print(_table(pd.DataFrame(rows, columns=["id", "name", "active"]), "Annotators"))


# -- queue ---------------------------------------------------------------------------------


@queue_app.command("enqueue")
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
    """Turn a scan's suspected label errors into queue items, most suspicious first."""
    from infgate.review.queue import enqueue_scan

    with _clear_errors():
        n = enqueue_scan(
            _store(db),
            scan_id,
            per_class_cap=per_class_cap,
            required_votes=votes,
            min_score=min_score,
        )
        console.print(f"enqueued [bold]{n}[/] item(s) from scan {scan_id}")


@queue_app.command("list")
def queue_list(
    scan: ScanOpt = None,
    state: Annotated[str | None, typer.Option(help="pending, claimed or done.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 30,
    db: DbOpt = None,
) -> None:
    """Show queue items, highest priority first."""
    from infgate.review.queue import list_items

    with _clear_errors():
        frame = list_items(_store(db), scan_id=scan, state=state, limit=limit)
        cols = ["item_id", "state", "example_id", "score", "given_label", "suggested_label"]
        cols += [
            "suggestion_confidence",
            "claimed_by",
            "lease_expires_at",
            "final_action",
            "final_label",
        ]
        short = ["item", "state", "example", "score", "given", "suggested", "conf."]
        short += ["held by", "lease until", "decision", "final"]
        shown = frame[cols].set_axis(short, axis=1)
        console.print(_table(shown, f"Queue ({len(frame)} shown)"))


@queue_app.command("next")
def queue_next(
    annotator: AnnotatorOpt,
    lease: Annotated[int, typer.Option(help="Lease length in seconds.")] = 300,
    db: DbOpt = None,
) -> None:
    """Claim the next item for an annotator (or show the one they already hold)."""
    from infgate.review.queue import claim_next

    with _clear_errors():
        item = claim_next(_store(db), annotator, lease_seconds=lease)
        if item is None:
            console.print("nothing left in the queue for " + annotator)
            return
        table = Table(title=f"Queue item {item.item_id}", show_header=False)
        for key in (
            "example_id",
            "given_label",
            "suggested_label",
            "suggestion_confidence",
            "score",
        ):
            table.add_row(key, _fmt(getattr(item, key)))
        table.add_row("lease token", str(item.lease_token))
        table.add_row("lease expires", _fmt(item.lease_expires_at))
        console.print(table)
        console.print(
            f"decide with: infgate queue decide {item.item_id} keep|relabel|not_sure|invalid "
            f"-a {annotator} [--label CLASS]"
        )


@queue_app.command("decide")
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

    with _clear_errors():
        res = decide(
            _store(db),
            item_id,
            annotator,
            action,  # type: ignore[arg-type]  # decide() validates it with a clear message
            label=label,
            lease_token=lease_token,
        )
        console.print(
            f"decision #{res.decision_id}: item {res.item_id} {res.action} "
            f"({_fmt(res.label_before)} -> {_fmt(res.label_after)}); item is now {res.item_state}"
        )


@queue_app.command("export")
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

    with _clear_errors():
        store = _store(db)
        tasks = export_tasks(store, scan_id=scan)
        out.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
        console.print(f"wrote {len(tasks)} task(s) to {out}")
        if config is not None:
            info = store.get_scan(scan) if scan is not None else store.list_scans(1)[0]
            config.write_text(
                labeling_config(info.classes or [], image=info.image_shape is not None),
                encoding="utf-8",
            )
            console.print(f"wrote the labeling config to {config}")


@queue_app.command("import")
def queue_import(
    path: Annotated[Path, typer.Argument(help="Label Studio JSON export.")],
    db: DbOpt = None,
) -> None:
    """Import a Label Studio JSON export as decisions (all or nothing)."""
    from infgate.review.labelstudio import import_annotations

    with _clear_errors():
        summary = import_annotations(_store(db), path)
        console.print(
            f"imported {summary.decisions} decision(s) from {summary.tasks} task(s); "
            f"{summary.counted} counted, {summary.skipped_cancelled} cancelled skipped"
        )


@queue_app.command("apply")
def queue_apply(
    scan: Annotated[int, typer.Option("--scan", help="Scan whose decisions to apply.")],
    out: Annotated[Path, typer.Option(help="Parquet file for the corrected dataset version.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The scanned dataset (parquet with example_id + label); default: the scan's URI."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI", help="Log the version as an MLflow dataset input."
        ),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Write a corrected dataset version: decided labels applied, invalid examples dropped."""
    from infgate.data.training import TrainingData
    from infgate.review.queue import apply_decisions

    with _clear_errors():
        store = _store(db)
        info = store.get_scan(scan)
        source = data or (Path(info.dataset_uri) if info.dataset_uri else None)
        if source is None or not source.is_file():
            raise typer.BadParameter(
                f"pass --data: the scan's dataset URI {info.dataset_uri!r} is no file"
            )
        frame = pd.read_parquet(source)
        dataset = TrainingData.from_frame(
            frame, classes=info.classes, image_shape=info.image_shape, source_uri=str(source)
        )
        applied = apply_decisions(
            store, dataset, scan_id=scan, out_path=out, tracking_uri=tracking_uri
        )
        console.print(
            f"dataset version {applied.dataset_version_id} ({applied.content_hash[:12]}): "
            f"{applied.n_relabeled} relabeled, {applied.n_dropped} dropped -> {out}"
            + (f"; MLflow run {applied.mlflow_run_id}" if applied.mlflow_run_id else "")
        )


@queue_app.command("stats")
def queue_stats_cmd(
    scan: ScanOpt = None,
    annotator: Annotated[
        str | None, typer.Option(help="Count today's decisions of one person.")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Progress: items left, decided today, agreement between annotators."""
    from infgate.review.queue import queue_stats

    with _clear_errors():
        st = queue_stats(_store(db), scan_id=scan, annotator=annotator)
        table = Table(title="Queue progress", show_header=False)
        table.add_row("items", str(st.total))
        table.add_row("left (pending + claimed)", str(st.left))
        table.add_row("claimed now", str(st.claimed))
        table.add_row("done", str(st.done))
        table.add_row("decided today", str(st.decided_today))
        table.add_row("late decisions (expired lease)", str(st.flagged_decisions))
        agreement = "-" if st.agreement is None else f"{st.agreement:.0%} of {st.agreement_items}"
        table.add_row("agreement", agreement)
        console.print(table)


# -- ui ------------------------------------------------------------------------------------


@ui_app.command("serve")
def ui_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    db: DbOpt = None,
) -> None:
    """Serve the annotators' review page (log in with a token from `infgate annotator add`)."""
    import uvicorn

    with _clear_errors():
        store = _store(db)
        # the page is an integration surface in plugins/; imported only when served
        review_ui = importlib.import_module("infgate.plugins.review_ui")
        console.print(f"review page on http://{host}:{port}/ (store {store.url})")
        uvicorn.run(review_ui.create_app(store), host=host, port=port, log_level="info")
