"""The distribution installs only ``pgvirt.*``: PyPI's ``verify`` and ``emulator`` must never be shadowed."""

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


def test_wheel_contains_only_the_pgvirt_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), "."], check=True, timeout=300)
    (wheel,) = tmp_path.glob("pgvirt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pgvirt"}
    for sub in ("model", "verify", "emulator"):
        assert f"pgvirt/{sub}/__init__.py" in names
    assert "pgvirt/model/isa/transfers.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pgvirt = pgvirt.verify.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert "emulator = pgvirt.emulator.cli:register" in zipfile.ZipFile(wheel).read(entry).decode()


LAYERS = {"model": {"pgvirt.verify", "pgvirt.emulator", "unicorn", "capstone"},
          "verify": {"pgvirt.emulator", "unicorn"},
          "emulator": {"pgvirt.verify"}}
# emulator/'s command and notebook layers ask verify/ for witnesses (emulator -> verify -> model,
# no cycle); the harness itself (machine, replay, crosscheck, ...) needs only the model.
UPPER = {"emulator": {"cli.py", "cli_oracles.py", "notebook.py"}}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_dependencies_point_one_way(layer):
    """model/ imports only z3; verify/ never emulator/ or unicorn (it finds emulator's
    subcommands through an entry point); emulator/'s harness never verify/.  Checked on every
    import statement, top-level or inside a function, on import_module/__import__ calls and
    on pgvirt module paths written as strings."""
    root = Path(__file__).resolve().parent.parent / layer
    bad = []
    for path in root.rglob("*.py"):
        if path.name in UPPER.get(layer, ()):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Call) and _dynamic_import(node):
                names = [node.args[0].value]        # importlib.import_module("...")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"pgvirt(\.[a-z_]+)+", node.value):
                names = [node.value]                # a module path kept for a later import
            else:
                continue
            bad += [f"{path.name}: {n}" for n in names
                    if any(n == f or n.startswith(f + ".") for f in LAYERS[layer])]
    assert not bad


def _dynamic_import(call: ast.Call) -> bool:
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return (name in ("import_module", "__import__") and bool(call.args)
            and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str))
