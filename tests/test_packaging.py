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
    for sub in ("model", "verify", "decoder", "guest", "emulator", "monitor", "monitor/devices", "report", "cli",
                "notebook"):
        assert f"pgvirt/{sub}/__init__.py" in names
    assert "pgvirt/model/isa/transfers.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pgvirt = pgvirt.__main__:entry" in zipfile.ZipFile(wheel).read(entry).decode()


_TOP = {"pgvirt.report", "pgvirt.cli", "pgvirt.notebook"}
LAYERS = {"model": {"pgvirt.verify", "pgvirt.guest", "pgvirt.emulator", "pgvirt.monitor", "unicorn",
                    "capstone"} | _TOP,
          "verify": {"pgvirt.guest", "pgvirt.emulator", "pgvirt.monitor", "unicorn"} | _TOP,
          "decoder": {"pgvirt.model", "pgvirt.verify", "pgvirt.guest", "pgvirt.emulator", "pgvirt.monitor",
                      "unicorn", "capstone", "z3"} | _TOP,
          "guest": {"pgvirt.emulator", "pgvirt.monitor", "unicorn"} | _TOP,
          "emulator": {"pgvirt.verify", "pgvirt.guest", "pgvirt.monitor"} | _TOP,
          # the monitors use the model and the emulator; what they need of the verifier comes
          # in from the top (pgvirt/api.py); Unicorn itself stays in emulator/; guest code is
          # decoded by pgvirt.decoder, the scan's decoder (never Capstone's second opinion)
          "monitor": {"pgvirt.verify", "pgvirt.guest", "unicorn", "capstone"} | _TOP,
          "report": {"pgvirt.cli", "pgvirt.notebook"}}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_dependencies_point_one_way(layer):
    """model/ imports only z3; verify/ and guest/ never emulator/ or unicorn; emulator/ never
    verify/ or guest/; nothing imports report/, cli/ or notebook/ from below.  Checked on every
    import statement, top-level or inside a function, on import_module/__import__ calls and
    on pgvirt module paths written as strings."""
    root = Path(__file__).resolve().parent.parent / layer
    bad = []
    for path in root.rglob("*.py"):
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


def _lint_tree(tmp_path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        import lint_imports
    finally:
        sys.path.pop(0)
    lint_imports.link_tree(tmp_path)
    return tmp_path


def test_import_linter_contracts_hold(tmp_path):
    """The layers and forbidden contracts of pyproject.toml (also run by ``make test`` first)."""
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, str(root / "tools" / "lint_imports.py")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "0 broken" in p.stdout


def test_no_import_cycle(tmp_path):
    """No module of pgvirt imports itself through others (every import counted, lazy ones too)."""
    tree = _lint_tree(tmp_path)
    code = (
        "import sys, grimp\n"
        "g = grimp.build_graph('pgvirt')\n"
        "mods = sorted(g.modules)\n"
        "edges = {m: sorted(g.find_modules_directly_imported_by(m)) for m in mods}\n"
        "index, low, stack, on, out, n = {}, {}, [], set(), [], [0]\n"
        "def visit(v):\n"
        "    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)\n"
        "    for w in edges[v]:\n"
        "        if w not in index:\n"
        "            visit(w); low[v] = min(low[v], low[w])\n"
        "        elif w in on:\n"
        "            low[v] = min(low[v], index[w])\n"
        "    if low[v] == index[v]:\n"
        "        comp = []\n"
        "        while True:\n"
        "            w = stack.pop(); on.discard(w); comp.append(w)\n"
        "            if w == v: break\n"
        "        if len(comp) > 1: out.append(sorted(comp))\n"
        "sys.setrecursionlimit(10000)\n"
        "for m in mods:\n"
        "    if m not in index: visit(m)\n"
        "print(out)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(tree)}, cwd=tree)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", f"import cycles: {p.stdout}"
