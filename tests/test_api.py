"""The public API: ``import pgvirt`` and its verbs, on names, paths and loaded objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pgvirt
from pgvirt.guest.paravirt import open_guest, scan_guest

from helpers import INVADERS, need


def test_import_is_cheap_and_lists_the_verbs():
    """`import pgvirt` loads no solver: the verbs come on first use."""
    code = "import sys, pgvirt; print('z3' in sys.modules, sorted(pgvirt.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "'scan'" in out and "'theorems'" in out
    with pytest.raises(AttributeError):
        pgvirt.no_such_verb


def test_classify_and_theorems_have_short_reprs():
    c = pgvirt.classify(["popfd", "lgdt_m"])
    assert repr(c) == ("<pgvirt classify [pentium]: 2 forms; Theorem 1 fails (1 violations), "
                       "Theorem 3 fails (1 violations)>")
    assert [x.form.name for x in c] == ["popfd", "lgdt_m"] and c[1]["privileged"] is True
    assert repr(c[1]) == ("<Classification lgdt_m [pentium]: privileged, control_sensitive, "
                          "mode_sensitive, behavior_sensitive, sensitive>")
    assert "<table" in c._repr_html_() and "popfd" in c._repr_html_()
    t = pgvirt.theorem(1, "umip", forms=["sgdt_m", "popfd"])
    assert t.verdict == "fails" and [v.form.name for v in t.violations] == ["popfd"]
    both = pgvirt.theorems("umip", forms=["sgdt_m"])
    assert both["1"].verdict == both["3"].verdict == "holds"
    assert len(repr(both)) < 200
    with pytest.raises(KeyError):
        pgvirt.theorem(2)
    with pytest.raises(KeyError, match="unknown profile"):
        pgvirt.classify("nop", "nosuch")


@pytest.mark.guests
def test_scan_patch_check_patch_on_paths_and_objects(tmp_path):
    need(INVADERS)
    s = pgvirt.scan(INVADERS)
    assert [x.form for x in s.sites] == ["popfd"]
    assert repr(s).startswith("<pgvirt scan: invaders.exec [pentium]: 1 violating site(s)")
    assert "popfd" in s._repr_html_()
    # a GuestFile or a loaded Guest scans the same (scan_guest(open_guest(path)) used to fail)
    gf = open_guest(INVADERS)
    assert scan_guest(gf).sites == s.sites == pgvirt.scan(gf.guest).sites
    assert repr(gf).startswith("<GuestFile ") and len(repr(s.value)) < 200
    p = pgvirt.patch(INVADERS, tmp_path / "inv")
    assert len(p.patched) == 1 and (tmp_path / "inv.manifest.json").is_file()
    assert pgvirt.check_patch(p).verdict == "holds"
    assert pgvirt.check_patch(tmp_path / "inv").verdict == "holds"
    assert pgvirt.check_patch(INVADERS, tmp_path / "inv.manifest.json").verdict == "fails"


def test_replay_and_crosscheck():
    r = pgvirt.replay("popfd")
    assert r.counts["confirmed"] == 1 and "1 confirmed" in repr(r)
    c = pgvirt.crosscheck("popfd", samples=10)
    assert c.checks == 10 and c.unexplained == 0 and "<table" in c._repr_html_()
