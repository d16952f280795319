"""Mirror the installed layout (``infgate`` = pipeline/, ``infgate.flows`` = flows/,
``infgate.plugins`` = plugins/) as a tree of symlinks for the static tools.

mypy and import-linter read packages from the file system and cannot follow setuptools'
editable-install import hook (which maps the three folders to one import root at run
time), so ``make lint`` points them at this tree instead. Real directories, symlinked
files: both tools walk it like an installed package, and it is rebuilt on every run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"infgate": "pipeline", "infgate/flows": "flows", "infgate/plugins": "plugins"}


def build(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    for target, source in MAPPING.items():
        src = ROOT / source
        for path in src.rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            link = dest / target / path.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "lint")
