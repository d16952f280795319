"""``infgate db``: create, migrate and inspect the findings store's schema."""

from __future__ import annotations

import typer
from infgate.plugins.cli._common import DbOpt, JsonOpt, console, emit_json, guarded, settings_from

__all__ = ["db_app"]

db_app = typer.Typer(help="Create or upgrade the findings store's schema.", no_args_is_help=True)


@db_app.command("upgrade")
@guarded
def db_upgrade(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Create the tables, or migrate them to this infgate's schema revision."""
    from infgate.store import Store

    store = Store.from_url(settings_from(db).db_url)
    rev = store.upgrade()
    if as_json:
        emit_json({"store": store.url, "revision": rev})
    else:
        console.print(f"store [bold]{store.url}[/] is at schema revision [green]{rev}[/]")


@db_app.command("current")
@guarded
def db_current(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show the store's schema revision and the one this infgate needs."""
    from infgate.store import Store
    from infgate.store.engine import current_revision, head_revision

    store = Store.from_url(settings_from(db).db_url)
    current, head = current_revision(store.engine), head_revision()
    if as_json:
        emit_json(
            {"store": store.url, "revision": current, "head": head, "up_to_date": current == head}
        )
    else:
        state = "up to date" if current == head else "run `infgate db upgrade`"
        console.print(f"store {store.url}: {current or 'empty'} (needs {head}; {state})")
