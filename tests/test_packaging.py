"""The distribution installs only ``pgvirt.*``: PyPI's ``verify`` and ``emulator`` must never be shadowed."""

import subprocess
import sys
import zipfile


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
