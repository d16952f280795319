"""What every ``infgate`` command shares: consoles, exit codes, options, one-line errors,
tables that survive a pipe, JSON output and opening the store.

Nothing heavy is imported here (no torch, pandas, SQLAlchemy, MLflow or Prefect): ``infgate
--help`` must answer at once, so each command imports what it needs when it runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

__all__ = [
    "EXIT_BLOCKED",
    "EXIT_CODES_HELP",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "DbOpt",
    "JsonOpt",
    "TrackingOpt",
    "console",
    "describe_error",
    "emit_json",
    "err",
    "fail",
    "fmt",
    "gate_reasons_table",
    "guarded",
    "json_value",
    "mask_secrets",
    "open_store",
    "print_table",
    "reasons_json",
    "results_only_on_stdout",
    "settings_from",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BLOCKED = 2
EXIT_USAGE = 64
EXIT_CODES_HELP = (
    "Exit codes: 0 passed / ok, 1 error, 2 blocked by the gate, 64 usage error "
    "(unknown option, missing argument)."
)

#: Results (tables, JSON) go to stdout; progress, logs and errors to stderr.
console = Console(soft_wrap=True)  # lines are not cut at 80 columns on a pipe
err = Console(stderr=True)

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        "--db-url",
        help="Findings store URL (default $INFGATE_DB_URL, else sqlite:///infgate.db; "
        "postgresql+psycopg2://... at scale).",
        show_default=False,
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI).",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout and nothing else there."),
]

F = TypeVar("F", bound=Callable[..., Any])

# scheme://user:secret@host -> scheme://user:***@host (URLs in library messages)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*):([^@\s]+)@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def results_only_on_stdout() -> contextlib.AbstractContextManager[Any]:
    """While the work runs, whatever libraries print to stdout (MLflow's "View run at ...")
    goes to stderr, so stdout holds only the command's result (its table or JSON)."""
    return contextlib.redirect_stdout(sys.stderr)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: <message>`` (one line, passwords masked) on stderr and exit."""
    line = " ".join(mask_secrets(str(message)).split())
    err.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else type(value).__name__


def _module_error(module: str, name: str) -> type[BaseException] | None:
    """The exception class ``module.name`` if that module is already imported (an error of
    a library nobody imported cannot have been raised)."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def describe_error(exc: BaseException) -> str | None:
    """One line naming what was wrong with the input, or ``None`` for an unexpected error
    (a bug: it keeps its traceback)."""
    infgate_error = _module_error("infgate.errors", "InfgateError")
    if infgate_error is not None and isinstance(exc, infgate_error):
        return _first_line(exc)
    for cls_name in ("OperationalError", "DatabaseError"):  # server down, bad password, no DB
        cls = _module_error("sqlalchemy.exc", cls_name)
        if cls is not None and isinstance(exc, cls):
            orig = getattr(exc, "orig", None)
            return f"cannot use the store: {_first_line(orig if orig is not None else exc)}"
    cls = _module_error("sqlalchemy.exc", "ArgumentError")
    if cls is not None and isinstance(exc, cls):
        return f"not a database URL: {_first_line(exc)}"
    cls = _module_error("pyarrow.lib", "ArrowException")
    if cls is not None and isinstance(exc, cls):
        return f"cannot read the data file: {_first_line(exc)}"
    for cls_name in ("ParserError", "EmptyDataError"):
        cls = _module_error("pandas.errors", cls_name)
        if cls is not None and isinstance(exc, cls):
            return f"cannot read the CSV file: {_first_line(exc)}"
    cls = _module_error("yaml", "YAMLError")
    if cls is not None and isinstance(exc, cls):
        return f"not valid YAML: {_first_line(exc)}"
    cls = _module_error("mlflow.exceptions", "MlflowException")
    if cls is not None and isinstance(exc, cls):
        return f"MLflow: {_first_line(getattr(exc, 'message', exc))}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read (JSON or YAML deeper than ~1,000 levels)"
    if isinstance(exc, OverflowError):
        return f"a number in the input is out of range: {_first_line(exc)}"
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror.lower()}{where}"
    return None


def guarded(fn: F) -> F:
    """Run a command body so that bad input ends in ``error: <one line>`` and exit 1.

    Covers infgate's own errors and the known library errors (SQLAlchemy, pyarrow, pandas,
    YAML, JSON, MLflow, over-deep nesting, missing files); anything else is a bug and keeps
    its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):  # Typer's own exits and usage errors
            raise
        except Exception as exc:
            message = describe_error(exc)
            if message is None:
                raise
            fail(message)

    return wrapper  # type: ignore[return-value]


# -- values, tables, JSON -----------------------------------------------------------------


def _missing(value: Any) -> bool:
    # NaN and pandas' NaT are the values not equal to themselves
    try:
        return value is None or bool(value != value)
    except (TypeError, ValueError):
        return False


def fmt(value: Any) -> str:
    """A cell as text: ``-`` for missing (None, NaN, NaT), 4 significant digits for floats,
    ``YYYY-MM-DD HH:MM:SS`` for times."""
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def json_value(value: Any) -> Any:
    """``value`` as plain JSON: missing -> null, numpy scalars -> numbers, times -> ISO 8601,
    paths -> strings, dataclass-like objects via their ``to_dict``."""
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_value(v) for v in value]
    if _missing(value):
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return json_value(value.to_dict())
    if hasattr(value, "tolist"):  # numpy array or scalar
        return json_value(value.tolist())
    return str(value)


def emit_json(document: Any) -> None:
    """Write ``document`` as one JSON document on stdout."""
    sys.stdout.write(json.dumps(json_value(document), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    numeric: Iterable[str] = (),
) -> None:
    """A table on stdout: a rich table on a terminal; tab-separated values with a header
    row when stdout is a pipe or a file (nothing truncated, one line per row)."""
    texts = [[fmt(v) for v in row] for row in rows]
    if not console.is_terminal:
        clean = [[" ".join(c.split()) for c in row] for row in [list(columns), *texts]]
        sys.stdout.write("".join("\t".join(r) + "\n" for r in clean))
        sys.stdout.flush()
        return
    right = set(numeric)
    table = Table(title=title, header_style="bold cyan", row_styles=["", "dim"])
    for col in columns:
        table.add_column(
            col, justify="right" if col in right else "left", overflow="fold", no_wrap=False
        )
    for row in texts:
        table.add_row(*row)
    console.print(table, markup=False)


def _allowed(threshold: Any) -> str:
    if not isinstance(threshold, Mapping):
        return fmt(threshold)
    ops = {"min": ">=", "max": "<=", "equal": "=="}
    return ", ".join(f"{ops.get(k, k)} {fmt(v)}" for k, v in threshold.items() if not _missing(v))


def _reason_dict(reason: Any) -> dict[str, Any]:
    return dict(reason.to_dict()) if hasattr(reason, "to_dict") else dict(reason)


def gate_reasons_table(reasons: Iterable[Any], *, title: str = "Why the gate blocks") -> None:
    """The failed gate checks as ``check / column / observed / threshold`` rows."""
    rows = []
    for r in map(_reason_dict, reasons):
        check = r.get("name") or r.get("expectation") or "-"
        rows.append((check, r.get("column"), r.get("observed"), _allowed(r.get("threshold"))))
    # the title is not a row: on a pipe it goes to stderr so stdout stays plain TSV
    (console if console.is_terminal else err).print(f"[bold]{title}[/]")
    print_table(["check", "column", "observed", "threshold"], rows, title=None)


def reasons_json(reasons: Iterable[Any]) -> list[dict[str, Any]]:
    """Failed gate checks as JSON objects (``check``, ``column``, ``observed``,
    ``threshold``, ``message``)."""
    out = []
    for r in map(_reason_dict, reasons):
        out.append(
            {
                "check": r.get("name") or r.get("expectation"),
                "column": r.get("column"),
                "observed": json_value(r.get("observed")),
                "threshold": json_value(r.get("threshold")),
                "message": r.get("message"),
            }
        )
    return out


# -- settings and the store ---------------------------------------------------------------


def settings_from(db: str | None = None, tracking_uri: str | None = None) -> Any:
    """:class:`infgate.settings.Settings` from the environment, with the flags given winning."""
    from infgate.settings import Settings

    return Settings.from_env(db_url=db, tracking_uri=tracking_uri)


def open_store(db: str | None, *, upgrade: bool = False) -> Any:
    """The findings store at ``db`` (else the settings' URL): migrated when ``upgrade``,
    else checked to be at this infgate's schema revision."""
    from infgate.store import Store

    store = Store.from_url(settings_from(db).db_url)
    if upgrade:
        store.upgrade()
    else:
        store.check_schema()
    return store
