"""The root command: import cost, exit codes, help texts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Run

HEAVY = ("torch", "pandas", "scipy", "mlflow", "prefect", "sqlalchemy", "great_expectations")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    # a fresh interpreter: this test process has long imported all of them
    code = (
        "import json, sys; import infgate.plugins.cli.app; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_help_lists_every_group_and_the_exit_codes(run: Run) -> None:
    res = run("--help")
    assert res.code == 0
    for name in ("scan", "promote", "demo", "db", "annotator", "queue", "ui", "hook", "flows"):
        assert name in res.out
    flat = " ".join(res.out.split())
    assert "0 passed / ok, 1 error, 2 blocked by the gate, 64 usage error" in flat


def _flat(text: str) -> str:
    """Text without the error panel's borders and line breaks."""
    return " ".join(text.replace("│", " ").split())


def test_usage_errors_exit_64_with_one_message(run: Run) -> None:
    for args, says in [
        (["no-such-command"], "No such command 'no-such-command'"),
        (["queue", "list", "--no-such-option"], "No such option: --no-such-option"),
        (["queue", "enqueue"], "Missing argument"),
        (["queue", "enqueue", "not-a-number"], "unable to parse string as an integer"),
        (["scan", "m", "--no-flow", "--dask-workers", "2"], "need the flow"),
    ]:
        res = run(*args)
        assert res.code == 64 and says in _flat(res.err), (args, res)
        assert "Traceback" not in res.err and res.out == ""


def test_errors_exit_1_and_ok_exits_0(run: Run, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    res = run("queue", "stats", "--db", url)
    assert res.code == 1 and "infgate db upgrade" in res.err
    assert run("db", "upgrade", "--db", url).code == 0
    assert run("queue", "stats", "--db", url).code == 0


def test_version_prints_the_installed_distribution(run: Run) -> None:
    from importlib.metadata import version

    res = run("version")
    assert res.code == 0 and res.out.strip() == version("infgate")


def test_hook_register_example_uses_the_receiver_port(run: Run) -> None:
    from infgate.plugins.cli.hook import HOOK_PORT
    from infgate.plugins.cli.ui import REVIEW_PAGE_PORT

    res = run("hook", "register", "--help")
    assert f"127.0.0.1:{HOOK_PORT}/webhook" in res.out and HOOK_PORT != REVIEW_PAGE_PORT
    serve = run("hook", "serve", "--help").out
    assert str(HOOK_PORT) in serve and str(REVIEW_PAGE_PORT) in serve


def test_each_command_module_stays_small() -> None:
    import infgate.plugins.cli as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
