"""Footprints are checked, not trusted: the frame test of derived forms on Unicorn."""

from __future__ import annotations

import copy
import json
import random

import pytest

from pgvirt.emulator import frame
from pgvirt.emulator.machine import Machine
from pgvirt.model.derived import forms, registry, table
from pgvirt.model.form import Form


@pytest.fixture(scope="module")
def m():
    return Machine()


def _form_of(rec: dict) -> Form:
    real = forms.build(rec["code"])
    return Form(real.name, None, real.enc_text, real.bytes, real.asm, real.cite, real.theme,
                forms.semantics(rec), real.decoder, real.code)


def _lie(code: str, change) -> Form:
    rec = copy.deepcopy(table.codes()[code])
    change(rec["footprint"])
    return _form_of(rec)


def test_a_footprint_that_hides_a_read_fails_with_the_states(m):
    """ADD r/m32, r32 claiming not to read its source register: two states that differ there
    give different sums."""
    f = _lie("ADD_RM32_R32", lambda fp: fp["operands"][1].update(access="none"))
    status, ran, bad = frame.check_instance(m, "ADD_RM32_R32", f, bytes.fromhex("01f7"),
                                            random.Random(1), 4)
    assert ran and bad
    assert "outcomes differ" in bad[0].reason
    a, b = bad[0].a, bad[0].b
    assert a["esi"] != b["esi"] and a["edi"] == b["edi"]


def test_a_footprint_that_hides_a_write_fails(m):
    f = _lie("ADD_RM32_R32", lambda fp: fp["rflags"].update(written=[]))
    _, _, bad = frame.check_instance(m, "ADD_RM32_R32", f, bytes.fromhex("01f7"), random.Random(2), 3)
    assert bad and "flags changed" in bad[0].reason


def test_a_footprint_that_hides_a_memory_read_fails(m):
    """MASKMOVQ's byte-masked store keeps the unselected bytes: a plain store would lose them
    (iced lists the operand as written; the table makes it conditional)."""
    def plain(fp):
        for mem in fp["memory"]:
            mem["access"] = "write"
    f = _lie("MASKMOVQ_RDI_MM_MM", plain)
    _, _, bad = frame.check_instance(m, "MASKMOVQ_RDI_MM_MM", f, bytes.fromhex("0ff7f7"),
                                     random.Random(3), 4)
    assert bad and "byte stored" in bad[0].reason


def _runnable(step: int):
    feats = frame.unicorn_features()
    codes = [c for c in registry.derived_codes() if set(table.codes()[c]["cpuid"]) <= feats]
    return codes[::step]


@pytest.mark.parametrize("chunk", range(4))
def test_frame_fast_subset(m, chunk):
    """Every 16th derived form Unicorn can run (the full sweep is marked slow)."""
    bad = []
    for code in _runnable(16)[chunk::4]:
        r = frame.check(code, pairs=2, m=m)
        assert r.status == "ran", (code, r.status)
        bad += r.mismatches
    assert not bad, "\n".join(str(x) for x in bad[:5])


def test_forms_unicorn_lacks_are_recorded_as_unsupported(m):
    r = frame.check("VEX_VADDPS_YMM_YMM_YMMM256", m=m)
    assert r.status.startswith("unsupported: Unicorn's CPU lacks avx")


@pytest.mark.slow
def test_frame_full_sweep_and_status_file():
    """Every derived form; the committed status file says which ones Unicorn ran."""
    res = frame.sweep(pairs=3)
    bad = [x for r in res.values() for x in r.mismatches]
    assert not bad, "\n".join(str(x) for x in bad[:10])
    assert json.loads(frame.STATUS_PATH.read_text()) == json.loads(json.dumps(frame.status_doc(res))), \
        "emulator/frame_status.json is stale: run `make frame-status`"
