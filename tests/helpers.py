"""Helpers several test modules share: guest files, descriptor builders, outcome assertions."""

import shutil
import struct
from pathlib import Path

import pytest

from pgvirt.model.outcome import BP, BR, DB, GP, OF, UD, Fault, Next

# --- the Debian guests tests/setup-guests.sh installs --------------------------------------------
INVADERS = Path("/boot/invaders.exec")
TBOOT = Path("/boot/tboot.gz")
TBOOT_SYMS = Path("/boot/tboot-syms")


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"guest files missing ({', '.join(missing)}): run tests/setup-guests.sh")


def need_objdump() -> str:
    exe = shutil.which("objdump")
    if exe is None:
        pytest.skip("objdump missing: run tests/setup-guests.sh (installs binutils)")
    return exe


# --- descriptors as the SDM lays them out, and little-endian bytes ---------------------------------
def desc(base=0, limit=0xFFFFF, type_=0x2, s=1, dpl=0, p=1, g=1, db=1):
    """A segment descriptor (SDM Vol. 3A 3.4.5) as (low, high) dwords."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | (type_ << 8) | (s << 12) | (dpl << 13) | (p << 15)
          | (((limit >> 16) & 0xF) << 16) | (db << 22) | (g << 23) | (base & 0xFF000000))
    return lo, hi


def gate(sel, offset, type_, dpl, p=1, params=0):
    """A call, interrupt, trap or task gate (SDM Vol. 3A 5.8.3, 6.11) as (low, high) dwords."""
    lo = (offset & 0xFFFF) | (sel << 16)
    hi = (offset & 0xFFFF0000) | (p << 15) | (dpl << 13) | (type_ << 8) | params
    return lo, hi


def le(value, n):
    """``value``'s ``n`` little-endian bytes as {offset: byte}."""
    return {k: (value >> (8 * k)) & 0xFF for k in range(n)}


# --- a flat guest state in VMX non-root operation / SVM guest mode ------------------------------
def nonroot_machine(extra: dict, cpl=0, **regs) -> dict:
    """A flat guest state at ``cpl`` that VM entry / VMRUN accepts once ``extra`` adds the
    profile's own fields (VT-x: CR4.VMXE; SVM: EFER.SVME and GIF): CR0 = PE|ET|NE, flat CS/SS,
    a 32-bit TSS without an I/O map."""
    cs, ss = (0x08, 0x10) if cpl == 0 else (0x1B, 0x23)
    values = dict(cpl=cpl, cs=cs, ss=ss, esp=0x8000, eip=0x100, cr0=0x31,
                  cs_limit=0xFFFFFFFF, ss_limit=0xFFFFFFFF, ds_limit=0xFFFFFFFF,
                  cs_attr=0xC09B | (cpl << 5), ss_attr=0xC093 | (cpl << 5),
                  tr_attr=0x8B, tr_limit=0x67, caches=1, tlb=1)
    values.update(extra)
    values.update(regs)
    return values


def nonroot_run(profile, extra: dict, name: str, vm=None, cpl=0, **regs):
    """Form ``name`` on ``nonroot_machine`` under ``vm`` (default: the profile's controls)."""
    from pgvirt.model.form import REGISTRY
    return REGISTRY[name].execute(nonroot_machine(extra, cpl, **regs), features=profile.features,
                                  vm=profile.vm if vm is None else vm)


# --- outcomes ------------------------------------------------------------------------------------
def ok(out) -> dict:
    assert isinstance(out, Next), f"expected completion, got {out}"
    return out.state


def fault(out, vector, code):
    assert isinstance(out, Fault), f"expected a fault, got {out}"
    assert (out.vector, out.code) == (vector, code), str(out)


def gp0(out):
    assert isinstance(out, Fault), f"expected #GP(0), got {out}"
    assert (out.vector, out.code) == (GP, 0), str(out)


# --- SARIF ---------------------------------------------------------------------------------------
_SARIF_SCHEMA = Path(__file__).parent / "schemas" / "sarif-2.1.0.json"
_SARIF_VALIDATOR = None


def sarif_problems(doc: dict) -> list[str]:
    """Why ``doc`` is not a valid SARIF 2.1.0 log: the schema's errors, SARIF 3.27.10 (a result
    whose kind is not "fail" has level absent or "none"), and ruleIndex naming its ruleId."""
    global _SARIF_VALIDATOR
    import json

    import jsonschema

    if _SARIF_VALIDATOR is None:
        schema = json.loads(_SARIF_SCHEMA.read_text())
        cls = jsonschema.validators.validator_for(schema)
        _SARIF_VALIDATOR = cls(schema, format_checker=cls.FORMAT_CHECKER)
    out = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _SARIF_VALIDATOR.iter_errors(doc)]
    for r, run in enumerate(doc.get("runs", [])):
        rules = run.get("tool", {}).get("driver", {}).get("rules", [])
        for k, res in enumerate(run.get("results", [])):
            where = f"runs/{r}/results/{k}"
            if res.get("kind", "fail") != "fail" and res.get("level", "none") != "none":
                out.append(f"{where}: kind {res['kind']!r} with level {res['level']!r} (SARIF 3.27.10)")
            i = res.get("ruleIndex")
            if i is not None and (i >= len(rules) or rules[i].get("id") != res.get("ruleId")):
                out.append(f"{where}: ruleIndex {i} does not name rule {res.get('ruleId')!r}")
    return out


def assert_valid_sarif(doc: dict) -> dict:
    problems = sarif_problems(doc)
    assert not problems, "invalid SARIF:\n" + "\n".join(problems[:20])
    return doc


# --- tiny multiboot guests for the monitors (pgvirt.monitor.demo's assembler) -------------------
def tiny_program(body):
    """A multiboot kernel program: a stack, ``body(asm, asm.i, data)``, then CLI; HLT."""
    from pgvirt.monitor import demo

    def program(a, d):
        i = a.i
        a.label("_start")
        i("mov_r32_imm32", reg=demo.ESP, imm=demo.STACK_TOP)
        body(a, i, d)
        i("cli")
        a.label("end")
        i("hlt")
        i("jmp_rel8", imm="end")
    return program


def tiny_guest(path, body) -> str:
    """``tiny_program(body)`` written to ``path`` as a multiboot ELF; its path."""
    from pgvirt.monitor import demo

    return demo.write(path, tiny_program(body))


def triple_fault_body(a, i, d):
    """INT3 with an IDT of no entries: #GP, #DF, shutdown."""
    d.label("idt_desc")
    d.bytes(struct.pack("<HI", 0, 0))
    i("lidt_m", mem="idt_desc")
    a.label("boom")
    i("int3")


# Vector -> (the letter its handler prints, the bytes it steps over: a fault's instruction).
EXCEPTION_HANDLERS = {DB: ("D", 0), BP: ("B", 0), OF: ("O", 0), BR: ("R", 6), UD: ("U", 2)}


def exceptions_body(a, i, d):
    """INT3, INT 3 (CD 03), INTO with OF = 0 and 1, INT1, UD2 and BOUND out of bounds, each
    into a handler of its own that prints a letter (port 0xE9 and the screen); the fault
    handlers step over their instruction.  Run natively it prints "BBODURE"."""
    from pgvirt.emulator import states as L
    from pgvirt.monitor import demo
    EAX, EDI, ESP = demo.EAX, demo.EDI, demo.ESP
    i("lgdt_m", mem="gdt_desc")
    i("lidt_m", mem="idt_desc")
    i("int3")
    i("int_imm", imm=3)
    i("into")                                            # OF = 0: no exception
    i("mov_r32_imm32", reg=EAX, imm=0x7FFFFFFF)
    i("add_rm32_imm8", rm=EAX, imm=1)                    # OF = 1
    i("into")
    i("int1")
    i("ud2")
    i("mov_r32_imm32", reg=EAX, imm=20)
    i("bound_r32", reg=EAX, mem="bounds")                # 20 outside [0, 10]: #BR
    i("mov_r32_imm32", reg=EAX, imm=ord("E"))
    i("out_imm8_al", imm=0xE9)
    i("jmp_rel32", imm="end")
    for v, (mark, skip) in sorted(EXCEPTION_HANDLERS.items()) + [(None, ("?", 0))]:
        a.label(f"h{v}")
        i("push_r32", reg=EAX)
        i("push_r32", reg=EDI)
        i("mov_r32_imm32", reg=EAX, imm=ord(mark))
        i("out_imm8_al", imm=0xE9)
        i("mov_r32_rm32", reg=EDI, mem="cursor")
        i("mov_rm8_r8", reg=EAX, mem=(EDI, 0))
        i("add_rm32_imm8", rm=EDI, imm=2)
        i("mov_rm32_r32", reg=EDI, mem="cursor")
        i("pop_r32", reg=EDI)
        i("pop_r32", reg=EAX)
        if skip:
            i("add_rm32_imm8", mem=(ESP, 0), imm=skip)  # past the faulting instruction
        i("iretd")
    d.align(8)
    d.label("gdt")
    d.bytes(bytes(8) + L.descriptor(0, 0xFFFFFFFF, L.code_attr(0))
            + L.descriptor(0, 0xFFFFFFFF, L.data_attr(0)))
    d.align(8)
    d.label("idt")
    for v in range(0x20):
        d.gate(0xE, f"h{v if v in EXCEPTION_HANDLERS else None}")
    d.align(4)
    d.bytes(b"\0\0")
    d.label("gdt_desc")
    d.bytes(struct.pack("<HI", 3 * 8 - 1, 0))
    d.bytes(b"\0\0")
    d.label("idt_desc")
    d.bytes(struct.pack("<HI", 0x20 * 8 - 1, 0))
    d.label("bounds")
    d.bytes(struct.pack("<ii", 0, 10))
    d.label("cursor")
    d.bytes(struct.pack("<I", demo.VGA))
