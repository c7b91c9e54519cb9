"""The model's side of the monitors: event delivery, the concrete handler, the shared manifest."""

import random
import sys

import pytest

from pgvirt.emulator import states as L
from pgvirt.model import events, isa, manifest, monitor, profiles, state as st
from pgvirt.model.outcome import BP, DE, DF, GP, NP, PF, UD

VEC = 0x20


def _frame(run, esp, n):
    return [int.from_bytes(bytes(run.read("mem", esp - 4 * (k + 1) + i) for i in range(4)), "little")
            for k in range(n)]


def test_external_interrupt_ignores_the_gate_dpl_and_returns_to_the_current_eip():
    ring3 = L.flat_state(3)                          # the IDT's gates are DPL 0 (DPL 3 for 3, 4, 0x80)
    run = events.deliver_interrupt(ring3, VEC)
    assert run.fault is None
    assert run.post["eip"] == L.HANDLERS + 16 * VEC and run.post["cpl"] == 0
    assert not run.post["sysflags"] & (1 << st.IF)   # an interrupt gate clears IF
    fault = isa.get("int_imm").execute(ring3, bytes([0xCD, VEC]))
    assert (fault.vector, fault.code) == (GP, VEC * 8 + 2)   # INT n checks the gate's DPL
    s = L.flat_state(0)
    same = events.deliver_interrupt(s, VEC)
    eflags, cs, eip = _frame(same, s["esp"], 3)      # pushed EFLAGS, then CS, then EIP
    assert eip == s["eip"] and cs == s["cs"] and eflags & (1 << st.IF)
    sw = isa.get("int_imm").execute(s, bytes([0xCD, VEC]))
    assert int.from_bytes(bytes(sw.state["mem"][s["esp"] - 12 + i] for i in range(4)),
                          "little") == s["eip"] + 2  # INT n returns past itself


def test_delivery_faults_carry_ext():
    s = L.flat_state(0, idtr_limit=0x7F)             # vector 0x20 lies beyond the limit
    assert events.deliver_interrupt(s, VEC).fault.code == VEC * 8 + 3
    assert isa.get("int_imm").execute(s, bytes([0xCD, VEC])).code == VEC * 8 + 2


def test_exception_pushes_its_error_code_below_the_return_address():
    s = L.flat_state(0)
    run = events.deliver_exception(s, GP, 0x1234)
    assert run.fault is None
    eflags, cs, eip, code = _frame(run, s["esp"], 4)
    assert (eip, code) == (s["eip"], 0x1234) and run.post["esp"] == s["esp"] - 16
    with pytest.raises(ValueError):
        events.exception(UD, 0)                       # #UD pushes no error code


def test_double_fault_classes():
    assert events.second_fault(GP, NP) == "double"
    assert events.second_fault(PF, GP) == "double"
    assert events.second_fault(GP, PF) == "serial"
    assert events.second_fault(DE, BP) == "serial"
    assert events.second_fault(None, GP) == "serial"
    assert events.second_fault(DF, GP) == "triple"


def test_interrupts_wait_one_instruction_after_sti_and_ss_loads():
    assert events.shadows("sti") and events.shadows("pop_ss") and not events.shadows("cli")
    for name in events.SHADOW_FORMS:
        isa.get(name)                                 # every named form exists


@pytest.fixture
def big_ints():
    """``monitor.run`` reads the 2.5 KiB of tables back as one Z3 number."""
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(old)


def _split(s):
    prof = profiles.PENTIUM
    real = dict(s)
    real.update(cpl=3, cs=s["cs"] | 3, ss=s["ss"] | 3, sysflags=(1 << st.IF),
                cr4=1 << st.CR4_TSD, gdtr_base=0x7000, idtr_base=0x7800)
    vcpu = {n: s[n] for n in st.SCALARS}
    vcpu["io"] = {}
    return real, vcpu


CASES = [("popfd", "9d"), ("pushfd", "9c"), ("mov_r_cs", "8cc8"), ("sgdt_m", "0f0100"),
         ("cli", "fa"), ("sti", "fb"), ("in_al_dx", "ec"), ("out_dx_al", "ee"),
         ("iretd", "cf"), ("mov_ds_r", "8ed8"), ("lar_r", "0f02c1"), ("hlt", "f4")]


@pytest.mark.parametrize("name,code", CASES)
def test_concrete_handler_agrees_with_the_symbolic_one(name, code, big_ints):
    """``monitor.emulate`` (compiled) and ``monitor.run`` (Z3) give the same R', C', stores."""
    rng = random.Random(name)
    code = bytes.fromhex(code)
    form = isa.get(name)
    for trial in range(2):
        s = L.flat_state(0, iopl=rng.choice((0, 3)), interrupts=rng.random() < 0.5)
        s.update(eax=rng.choice((L.DATA, 0x10, 0x08, 0x13)), ecx=rng.choice((0x08, 0x10, 0x3B)),
                 edx=rng.choice((0x60, 0xE9)), eip=L.CODE)
        mem = dict(s["mem"])
        esp = s["esp"]
        frame = (L.CODE + 0x10).to_bytes(4, "little") + (0x08).to_bytes(4, "little") + \
            (0x202).to_bytes(4, "little")
        L.put(mem, esp, frame)
        s["mem"] = mem
        real, vcpu = _split(s)
        step = monitor.emulate(form, code, real, vcpu)
        res = monitor.run(monitor.Site(0, L.CODE, code, form), real, {k: v for k, v in vcpu.items()})
        if step.fault is not None:
            assert isinstance(res, monitor.Injected) and res.fault == step.fault
            continue
        assert isinstance(res, monitor.Resumed)
        for n in st.SCALARS:
            assert step.real[n] == res.real[n], (name, n)
            assert step.vcpu[n] == res.vcpu[n], (name, n)
        for a, v in step.mem.items():
            assert res.real["mem"][a] == v
        for p, v in step.io_out.items():
            assert res.vcpu["io"][p] == v


def test_view_and_write_back_are_one_definition_for_states_and_dicts():
    s = L.flat_state(0)
    real, vcpu = _split(s)
    v = monitor.view(real, vcpu)
    assert v["cs"] == 0x08 and v["sysflags"] == s["sysflags"] and v["gdtr_base"] == s["gdtr_base"]
    sym = monitor.view(st.concrete({k: w for k, w in real.items() if k != "io"}),
                       st.concrete({k: w for k, w in vcpu.items() if k != "io"}))
    import z3
    for n in st.SCALARS:
        assert z3.simplify(sym[n]).as_long() == v[n], n
    after = dict(v, eax=7, cs=0x08)
    r2, c2 = monitor.write_back({n: real[n] for n in st.SCALARS}, {n: vcpu[n] for n in st.SCALARS}, after)
    assert r2["eax"] == 7 and r2["cs"] == 0x0B and r2["cpl"] == 3 and r2["gdtr_base"] == 0x7000


def test_manifest_reader_is_shared_with_the_patcher():
    from pgvirt.guest import paravirt
    assert paravirt.load_manifest is manifest.load_manifest
    assert paravirt.ManifestError is manifest.ManifestError
