"""``infgate annotator``: create, list, re-issue tokens for, revoke and deactivate annotators."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from infgate.plugins.cli._common import (
    DbOpt,
    JsonOpt,
    console,
    emit_json,
    fail,
    guarded,
    open_store,
    print_table,
)

__all__ = ["annotator_app"]

annotator_app = typer.Typer(
    help="Manage annotators and their login credentials.", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help="Login name (letters, digits, _.@:-).")]


@annotator_app.command("add")
@guarded
def annotator_add(
    name: NameArg,
    with_password: Annotated[
        bool, typer.Option("--password", help="Also set a password (prompted, hidden).")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Create an annotator and print their login token ONCE (it is stored hashed)."""
    from infgate.review.annotators import add_annotator

    store = open_store(db)
    password = (
        typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        if with_password
        else None
    )
    token = add_annotator(store, name, password=password)
    console.print(f"annotator [bold]{name}[/] created. Login token (shown only now):")
    typer.echo(token)


@annotator_app.command("list")
@guarded
def annotator_list(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List annotators (credentials are never shown)."""
    from infgate.review.annotators import list_annotators

    people = list_annotators(open_store(db))
    if as_json:
        emit_json([{"id": a.id, "name": a.name, "active": a.active} for a in people])
        return
    rows = [(a.id, a.name, "yes" if a.active else "no") for a in people]
    print_table(["id", "name", "active"], rows, title="Annotators", numeric=["id"])


def _core(name: str) -> Any:
    """A function of :mod:`infgate.review.annotators`, or one clear line if it is missing."""
    from infgate.review import annotators

    fn = getattr(annotators, name, None)
    if fn is None:
        fail(f"this infgate has no infgate.review.annotators.{name}; upgrade infgate")
    return fn


def _done(result: Any) -> str:
    return f" ({result} ended)" if isinstance(result, int) and not isinstance(result, bool) else ""


@annotator_app.command("token")
@guarded
def annotator_token(name: NameArg, db: DbOpt = None) -> None:
    """Issue a new login token (printed ONCE); the annotator's previous token stops working.

    Use it after ``revoke``, when a token was lost, or after ``infgate db upgrade`` to
    revision 0002 (tokens made before it carry no token id and no longer sign in).
    """
    from infgate.review.annotators import issue_token

    token = issue_token(open_store(db), name)
    console.print(
        f"annotator [bold]{name}[/]: new login token (shown only now; the old one is void):"
    )
    typer.echo(token)


@annotator_app.command("revoke")
@guarded
def annotator_revoke(name: NameArg, db: DbOpt = None) -> None:
    """End every login token and review-page session of an annotator.

    The account and its decisions stay; give them new credentials to let them back in.
    """
    result = _core("revoke_annotator")(open_store(db), name)
    console.print(f"annotator [bold]{name}[/]: every token and session revoked{_done(result)}")


@annotator_app.command("deactivate")
@guarded
def annotator_deactivate(name: NameArg, db: DbOpt = None) -> None:
    """Stop an annotator from signing in or deciding; their past decisions are kept."""
    _core("deactivate_annotator")(open_store(db), name)
    console.print(f"annotator [bold]{name}[/] deactivated: no sign-in, no decisions (history kept)")
