"""Static checks of ``infra/`` (no Docker here): the compose file parses and names every
service, each ``${VAR}`` it reads is in ``infgate.env.example``, every command a service or
a native start script runs parses with that program's own CLI, and the scripts pass
``bash -n``."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SCRIPTS = sorted(INFRA.glob("*.sh"))
PROGRAMS = ("infgate", "mlflow", "prefect")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    spec = yaml.safe_load((INFRA / "compose.yaml").read_text())
    assert isinstance(spec, dict) and isinstance(spec.get("services"), dict)
    return spec


def env_example_keys() -> set[str]:
    keys = set()
    for line in (INFRA / "infgate.env.example").read_text().splitlines():
        m = re.match(r"([A-Z_][A-Z0-9_]*)=", line)
        if m:
            keys.add(m.group(1))
    return keys


def _example_env() -> dict[str, str]:
    """The documented values of infra/infgate.env.example (``NAME=value`` lines)."""
    out = {}
    for line in (ROOT / "infra" / "infgate.env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and value:
            out[name.strip()] = value.strip()
    return out


def expand(text: str) -> str:
    """Shell/compose variables replaced the way they would expand: the documented example
    value when there is one (a choice such as ``INFGATE_HOOK_MODE`` must be valid), else
    ``1``."""
    text = re.sub(r"\$\{\w+:\+([^}]*)\}", r"\1", text)  # ${X:+word}: assume X is set
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)  # ${X:-default}
    env = _example_env()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), "1"), text)


def service_argvs(command: str | list[str]) -> list[list[str]]:
    """The commands a compose ``command:`` runs (``sh -c "a && b"`` gives two)."""
    argv = shlex.split(expand(command)) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def script_argvs(path: Path) -> list[list[str]]:
    """Lines of a start script that run infgate, mlflow or prefect (``start_bg`` stripped)."""
    out = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):
            continue
        try:
            argv = shlex.split(expand(line))
        except ValueError:
            continue
        if argv[:1] == ["start_bg"]:
            argv = argv[2:]
        if argv[:1] and argv[0] in PROGRAMS:
            out.append([a for a in argv if not re.match(r"\d?>", a)])
    return out


def check_argv(argv: list[str]) -> str:
    """Parse ``argv`` with the program's own CLI (raises on an unknown command or option);
    returns the command path, e.g. ``"infgate hook serve"``."""
    import typer

    prog, args = argv[0], argv[1:]
    if prog == "prefect":
        from prefect.cli.server import server_app

        assert args[:1] == ["server"], f"only `prefect server` is checked: {argv}"
        server_app.parse_args(args[1:], exit_on_error=False, print_error=False)
        return f"prefect server {args[1]}"
    if prog == "infgate":
        from infgate.plugins.cli.app import app

        cmd: Any = typer.main.get_command(app)  # typer's own (vendored) click
    elif prog == "mlflow":
        import mlflow.cli

        cmd = mlflow.cli.cli
    else:
        raise AssertionError(f"no parser for {prog!r} ({argv})")
    path = [prog]
    while hasattr(cmd, "commands"):  # a group: descend into the named subcommand
        name, args = args[0], args[1:]
        assert name in cmd.commands, f"{' '.join(path)} has no subcommand {name!r} ({argv})"
        cmd, path = cmd.commands[name], [*path, name]
    cmd.make_context(" ".join(path), list(args))  # unknown option or missing argument raises
    return " ".join(path)


def test_compose_names_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    runs: dict[str, set[str]] = {}
    for name, svc in services.items():
        if "command" in svc:
            runs[name] = {check_argv(a) for a in service_argvs(svc["command"])}
    assert any(str(s.get("image", "")).startswith("postgres") for s in services.values())
    wanted = {
        "MLflow server": "mlflow server",
        "Prefect server": "prefect server start",
        "Prefect worker": "infgate flows serve",
        "hook receiver": "infgate hook serve",
        "review page": "infgate ui serve",
    }
    for what, command in wanted.items():
        assert any(command in r for r in runs.values()), f"no service runs {what} ({command})"
    assert "infgate hook register" in set().union(*runs.values())


def test_compose_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    text = (INFRA / "compose.yaml").read_text()
    missing = set(re.findall(r"\$\{(\w+)", text)) - env_example_keys()
    assert not missing, f"compose.yaml reads {sorted(missing)}, not in infgate.env.example"
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps:
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            if isinstance(deps, dict) and deps[dep].get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, no healthcheck"
        for env_file in [svc.get("env_file")] if isinstance(svc.get("env_file"), str) else []:
            assert (INFRA / f"{env_file}.example").is_file(), env_file
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (INFRA / src).exists(), f"{name} mounts missing {src}"
        build = svc.get("build")
        if build:
            context = (INFRA / build["context"]).resolve()
            dockerfile = (context / build["dockerfile"]).read_text()
            for line in dockerfile.splitlines():
                if line.startswith("COPY "):
                    for src in line.split()[1:-1]:
                        assert (context / src).exists(), f"Dockerfile copies missing {src}"
    assert "/infra/infgate.env" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_native_script_parses(script: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    r = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_native_scripts_run_real_commands() -> None:
    ran = {check_argv(a) for s in SCRIPTS for a in script_argvs(s)}
    assert ran >= {
        "infgate hook serve",
        "infgate hook register",
        "infgate flows serve",
        "infgate db upgrade",
        "infgate ui serve",
        "mlflow server",
        "prefect server start",
    }, ran
    for name in ("start-postgres", "start-mlflow", "start-prefect", "start-hook"):
        assert f"bash {name}.sh" in (INFRA / "start-all.sh").read_text()


@pytest.mark.parametrize(
    "argv",
    [
        "infgate hook serve --mode",
        "infgate hook serve --bogus 1",
        "infgate hook register",
        "infgate flows launch",
        "mlflow server --bogus",
        "prefect server start --hots 0.0.0.0",
    ],
)
def test_the_command_check_rejects_what_would_fail(argv: str) -> None:
    with pytest.raises(Exception):  # noqa: B017  (each CLI raises its own usage error type)
        check_argv(argv.split())
