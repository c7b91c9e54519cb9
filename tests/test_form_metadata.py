"""Facts of an instruction kept on its one definition (``form(..., flow=, undefined_flags=)``),
not in name tables beside it."""

from __future__ import annotations

import pytest

from pgvirt.emulator.deviations.base import loads_cs
from pgvirt.model import isa
from pgvirt.model.form import ModelError, form


def test_flow_marks_the_transfers_that_load_cs_through_a_descriptor():
    flows = {f.name: f.flow for f in isa.FORMS if f.flow}
    assert {n for n, v in flows.items() if v == "interrupt"} == {"int_imm", "int3", "into"}
    assert {n for n, v in flows.items() if v == "far_call"} == {
        "call_far_ptr", "call_far_m", "call_far_ptr16", "call_far_m16"}
    assert {n for n, v in flows.items() if v == "far_return"} >= {"retf", "retf_imm", "iretd", "iretw"}
    for f in isa.FORMS:
        # every form whose mnemonic is a far transfer or INT n carries it, and only those
        far = f.mnemonic in ("IRET", "IRETD", "RETF", "LJMP", "LCALL") or f.name.startswith(
            ("call_far", "jmp_far", "retf", "iret"))
        assert f.far == far, f.name
        assert loads_cs(f) == (far or f.name in ("int_imm", "int3", "into")), f.name


def test_an_unknown_flow_is_refused_at_definition():
    with pytest.raises(ModelError, match="flow 'near'"):
        form("probe_flow", enc="90", bytes="90", asm="nop", cite="SDM Vol. 2B NOP", flow="near")(
            lambda x: None)
    assert "probe_flow" not in {f.name for f in isa.FORMS}
