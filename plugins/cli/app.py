"""The ``infgate`` command: the root app, its callback, ``version`` and :func:`main`.

Each command group lives in its own module and is added here. Importing this module loads
only Typer, Rich and the group modules (no torch, pandas, MLflow or Prefect), so ``infgate
--help`` answers at once; every command imports what it needs when it runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from infgate.plugins.cli._common import EXIT_CODES_HELP, EXIT_ERROR, EXIT_USAGE, err
from infgate.plugins.cli.annotator import annotator_app
from infgate.plugins.cli.db import db_app
from infgate.plugins.cli.demo import demo
from infgate.plugins.cli.flows_cmd import flows_app
from infgate.plugins.cli.hook import hook_app
from infgate.plugins.cli.promote import promote
from infgate.plugins.cli.queue import queue_app
from infgate.plugins.cli.scan import scan
from infgate.plugins.cli.ui import ui_app

# typer vendors click (typer._click); its usage errors are the ones the app raises
from typer._click.exceptions import ClickException, UsageError

__all__ = ["app", "main"]

app = typer.Typer(
    name="infgate",
    help="Influence-function data debugging that gates MLflow model deployments.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold URLs with passwords
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def version() -> None:
    """Print the installed infgate version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        typer.echo(dist_version("infgate"))
    except PackageNotFoundError:  # a source tree that was never installed
        typer.echo("unknown (not installed)")


app.command()(scan)
app.command()(promote)
app.command()(demo)
app.add_typer(db_app, name="db")
app.add_typer(annotator_app, name="annotator")
app.add_typer(queue_app, name="queue")
app.add_typer(ui_app, name="ui")
app.add_typer(hook_app, name="hook")
app.add_typer(flows_app, name="flows")


def _show_usage_error(exc: ClickException) -> None:
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help text was already printed
        return
    from typer import rich_utils

    rich_utils.rich_format_error(exc)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app and exit with the documented codes
    (0 ok/passed, 1 error, 2 blocked, 64 usage error)."""
    try:
        code = app(
            args=list(argv) if argv is not None else None,
            prog_name="infgate",
            standalone_mode=False,
        )
    except UsageError as exc:
        _show_usage_error(exc)
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code != 2 else EXIT_USAGE)
    except typer.Abort:
        err.print("aborted")
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
