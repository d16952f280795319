"""One import root: the wheel installs `infgate` only; editable and wheel installs both pass the
smoke test; the layering contracts hold and there are no import cycles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (path,) = out.glob("infgate-*.whl")
    return path


def test_wheel_installs_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"infgate", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    # the three folders are there under the one root, with their data files
    for path in (
        "infgate/__init__.py",
        "infgate/flows/scan.py",
        "infgate/plugins/cli/app.py",
        "infgate/gate/defaults.yaml",
        "infgate/store/migrations/env.py",
        "infgate/py.typed",
    ):
        assert path in names, path
    assert not any(n.startswith(("pipeline/", "flows/", "plugins/", "tests/")) for n in names)
    every_package = {str(Path(n).parent) for n in names if n.endswith("__init__.py")}
    for folder, prefix in (
        ("pipeline", "infgate"),
        ("flows", "infgate/flows"),
        ("plugins", "infgate/plugins"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            expected = prefix if str(rel) == "." else f"{prefix}/{rel}"
            assert expected in every_package, (
                f"{expected} is missing from the wheel (pyproject packages)"
            )
    entry = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "infgate = infgate.plugins.cli.app:main" in entry
    assert "infgate = infgate.plugins.mlflow_evaluator:InfgateEvaluator" in entry


def _smoke(env: dict[str, str], cwd: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "tests" / "smoke.py")],  # -P: not tests/ on sys.path
        check=True,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    return out.stdout.strip().splitlines()[-1]


def test_editable_install_passes_the_smoke_test(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _smoke(env, tmp_path)
    assert Path(where).resolve() == (ROOT / "pipeline" / "__init__.py").resolve()


def test_wheel_install_passes_the_smoke_test(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = _smoke(env, tmp_path)
    assert Path(where).resolve() == (target / "infgate" / "__init__.py").resolve()


def test_layers_hold_and_there_are_no_import_cycles(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    subprocess.run([sys.executable, str(ROOT / ".ci" / "linktree.py"), str(tree)], check=True)
    code = r"""
import json, grimp
g = grimp.build_graph("infgate", exclude_type_checking_imports=True)
cycles = []
for m in sorted(g.modules):
    for n in sorted(g.find_modules_directly_imported_by(m)):
        if n.startswith("infgate") and g.find_shortest_chain(importer=n, imported=m):
            cycles.append([m, n])
core = {m for m in g.modules if not m.startswith(("infgate.flows", "infgate.plugins"))}
bad = [[m, n] for m in sorted(core) for n in sorted(g.find_modules_directly_imported_by(m))
       if n.startswith(("infgate.flows", "infgate.plugins"))]
print(json.dumps({"cycles": cycles, "core_imports_shell": bad, "n": len(g.modules)}))
"""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    found = json.loads(out.stdout)
    assert found["n"] > 50
    assert found["core_imports_shell"] == []
    assert found["cycles"] == [], found["cycles"][:5]
    lint = subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            str(ROOT / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert lint.returncode == 0, lint.stdout[-2000:]
