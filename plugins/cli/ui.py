"""``infgate ui``: the annotators' review page."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
from infgate.plugins.cli._common import DbOpt, console, guarded, open_store

__all__ = ["REVIEW_PAGE_PORT", "ui_app"]

#: The review page's default port (the webhook receiver uses the next one).
REVIEW_PAGE_PORT = 8765

ui_app = typer.Typer(help="The annotators' review page.", no_args_is_help=True)


@ui_app.command("serve")
@guarded
def ui_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = REVIEW_PAGE_PORT,
    db: DbOpt = None,
) -> None:
    """Serve the annotators' review page (log in with a token from `infgate annotator add`)."""
    import uvicorn

    store = open_store(db)
    # the page is an integration surface in plugins/; imported only when served
    review_ui = importlib.import_module("infgate.plugins.review_ui")
    console.print(f"review page on http://{host}:{port}/ (store {store.url})")
    uvicorn.run(review_ui.create_app(store), host=host, port=port, log_level="info")
