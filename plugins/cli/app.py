"""``infgate`` command line. Each area adds its own command group here with ``add_typer``."""

from __future__ import annotations

import logging

import typer
from infgate import __version__

app = typer.Typer(
    name="infgate",
    help="Influence-function data debugging that gates MLflow model deployments.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def version() -> None:
    """Print the installed infgate version."""
    typer.echo(__version__)


@app.command()
def demo(
    noise: float = typer.Option(0.10, help="Fraction of training labels to flip."),
    seed: int = typer.Option(0, help="Seed for the label flips and the model init."),
    top: int = typer.Option(10, help="How many top suspects to print."),
) -> None:
    """Run the main job end to end on embedded defaults (scikit-learn digits)."""
    from infgate.plugins.cli.demo import run_demo

    run_demo(noise=noise, seed=seed, top=top)


from infgate.plugins.cli.store import annotator_app, db_app, queue_app, ui_app  # noqa: E402

app.add_typer(db_app, name="db")
app.add_typer(annotator_app, name="annotator")
app.add_typer(queue_app, name="queue")
app.add_typer(ui_app, name="ui")

from infgate.plugins.cli.ops import flows_app, hook_app, promote, scan  # noqa: E402

app.command()(scan)
app.command()(promote)
app.add_typer(hook_app, name="hook")
app.add_typer(flows_app, name="flows")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
