"""Run import-linter's contracts (pyproject.toml, ``[tool.importlinter]``) on the source tree.

The packages live in top-level folders that setuptools maps to ``pgvirt.<name>``; import-linter
needs them laid out as one package, so this links every source file into a temporary
``pgvirt/`` tree (files, not copies: line numbers in a report are the sources') and runs
``lint-imports`` on it.  Exit status and report are lint-imports' own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def link_tree(dest: Path) -> None:
    """``dest/pgvirt/...``: a link to each .py file of every package pyproject.toml maps."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pkg, folder in cfg["package-dir"].items():
        src = ROOT / folder
        out = dest.joinpath(*pkg.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            target = out / f.name
            if not target.exists():
                target.symlink_to(f)


def main() -> int:
    exe = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="pgvirt-layers-") as tmp:
        link_tree(Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp)
        return subprocess.run([str(exe), str(ROOT / "pyproject.toml")], env=env, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
