"""What the test kernel cannot put on a full-system emulator, as table entries of kind "api".

The test kernel (``oracles.testkernel``) refuses some states outright: tables too small for its
catch descriptors and gates, CS or SS outside the table it enters them through, TR or LDTR
caches no descriptor can produce, catch points outside RAM, stores into the TSS save area its
task switch overwrites.  The Unicorn Machine holds such states, and the solver, knowing nothing
of the harness, produces witnesses full of them (a GDT limit of 1, an IDT limit of 0).  Each
entry here has a reproduction (the refusal itself) and a ``trigger``: the same condition on a
symbolic state, which witness steering avoids so the pair can run on Bochs and QEMU.
"""

from __future__ import annotations

import z3

from ..oracles import testkernel as T
from . import repro as R
from .base import Deviation, Repro

_RAM_LOW = 0xA0000          # the witnesses' memory and landings lie below; the kernel above 1 MiB
_GDT_ROOM = 0x3FF           # 128 entries: room for the kernel's 7 among the state's few


def _refused(text: str):
    return lambda rs: bool(rs) and all(text in r.refused for r in rs)


def _below(base, size) -> z3.BoolRef:
    """[base, base + size) lies in low RAM (no wrap)."""
    return z3.And(z3.ULT(base, _RAM_LOW), z3.ULE(size, _RAM_LOW - base))


def _apart(a, n, b, m) -> z3.BoolRef:
    """[a, a + n) and [b, b + m) do not overlap (both in low RAM)."""
    return z3.Or(z3.ULE(a + n, b), z3.ULE(b + m, a))


def _slot(seg: str, s):
    table = z3.If(z3.Extract(2, 2, s[seg]) == 1, s.ldtr_base, s.gdtr_base)
    return table + z3.ZeroExt(16, s[seg] & 0xFFF8)


def _t_tables(form, s, o):
    """IDT too short for the catch gates, GDT too short for the catch descriptors; the tables
    and the TSS not in low RAM, or the TSS's save area over the tables the catch reads."""
    gdt = z3.ZeroExt(16, s.gdtr_limit) + 1
    tss = s.tr_base
    return z3.Not(z3.And(
        z3.UGE(s.idtr_limit, 8 * T.NCATCH - 1), z3.UGE(s.gdtr_limit, _GDT_ROOM),
        _below(s.gdtr_base, gdt), _below(s.idtr_base, 8 * T.NCATCH), _below(tss, 0x68),
        z3.Or(z3.Extract(15, 2, s.ldtr) == 0, _below(s.ldtr_base, s.ldtr_limit + 1)),
        _apart(tss, 0x68, s.gdtr_base, gdt), _apart(tss, 0x68, s.idtr_base, 8 * T.NCATCH),
        z3.Or(z3.Extract(15, 2, s.ldtr) == 0, z3.And(
            _apart(tss, 0x68, s.ldtr_base, s.ldtr_limit + 1),
            _apart(s.idtr_base, 8 * T.NCATCH, s.ldtr_base, s.ldtr_limit + 1))),
        _apart(s.idtr_base, 8 * T.NCATCH, s.gdtr_base, gdt),
        _apart(tss, 0x68, _slot("cs", s), 8), _apart(tss, 0x68, _slot("ss", s), 8),
        _apart(o.post.tr_base, 0x68, _slot("cs", s), 8),
        _apart(o.post.tr_base, 0x68, _slot("ss", s), 8)))


def _in_table(sel, s):
    """``sel``'s entry lies inside the table it names (LDT: a non-null LDTR)."""
    ti = z3.Extract(2, 2, sel) == 1
    end = z3.ZeroExt(16, sel | 7)
    return z3.If(ti, z3.And(z3.Extract(15, 2, s.ldtr) != 0, z3.ULE(end, s.ldtr_limit)),
                 z3.ULE(end, z3.ZeroExt(16, s.gdtr_limit)))


def _encodable(limit):
    return z3.Or(z3.ULE(limit, 0xFFFFF), limit & 0xFFF == 0xFFF)


def _slot_holds_cache(seg: str, s) -> z3.BoolRef:
    """The table entry of ``seg``'s selector holds the descriptor of its cache (the one the test
    kernel would otherwise write there for the entry: SDM Vol. 3A 3.4.5 layout)."""
    sel, base, limit, attr = s[seg], s[f"{seg}_base"], s[f"{seg}_limit"], s[f"{seg}_attr"]
    table = z3.If(z3.Extract(2, 2, sel) == 1, s.ldtr_base, s.gdtr_base)
    at = table + z3.ZeroExt(16, sel & 0xFFF8)
    raw = z3.If(z3.Extract(15, 15, attr) == 1, z3.LShR(limit, 12), limit)
    want = [z3.Extract(7, 0, raw), z3.Extract(15, 8, raw), z3.Extract(7, 0, base),
            z3.Extract(15, 8, base), z3.Extract(23, 16, base), z3.Extract(7, 0, attr),
            z3.Concat(z3.Extract(15, 12, attr), z3.Extract(19, 16, raw)), z3.Extract(31, 24, base)]
    return z3.And([z3.Select(s.mem, at + k) == b for k, b in enumerate(want)])


def _t_entry(form, s, o):
    """CS (and SS above CPL 0) outside their tables or their entries not holding their caches;
    TR null or in the LDT; TR or LDTR limits no descriptor can hold."""
    return z3.Not(z3.And(
        _in_table(s.cs, s), z3.Or(s.cpl == 0, _in_table(s.ss, s)),
        _slot_holds_cache("cs", s), z3.Or(s.cpl == 0, _slot_holds_cache("ss", s)),
        z3.Extract(15, 2, s.tr) != 0, z3.Extract(2, 2, s.tr) == 0, z3.Extract(2, 2, s.ldtr) == 0,
        _encodable(s.tr_limit), z3.Or(z3.Extract(15, 2, s.ldtr) == 0, _encodable(s.ldtr_limit))))


def _t_catch(form, s, o):
    """Where the instruction goes (checks or not) lies outside low RAM or inside its own bytes;
    its TSS (before or after) lies outside low RAM; it touches IDT entries 0-19 other than 3 and
    4 (the catch gates' own), or stores into the TSS save area."""
    land = o.post.cs_base + o.post.eip
    fall = s.cs_base + s.eip + len(form.bytes)
    parts = [z3.UGE(land, _RAM_LOW), z3.ULT(land - (s.cs_base + s.eip), len(form.bytes)),
             z3.ULT(land - s.idtr_base + 1, 8 * T.NCATCH + 1), z3.ULT(fall - s.idtr_base + 1, 8 * T.NCATCH + 1),
             z3.UGE(s.tr_base, _RAM_LOW - 0x68), z3.UGE(o.post.tr_base, _RAM_LOW - 0x68)]
    lo, hi = T.TSS_SAVED
    for arr, a in o.loads + o.stores:
        if arr != "mem":
            continue
        off = a - s.idtr_base
        parts.append(z3.And(z3.ULT(off, 8 * T.NCATCH), z3.Or(z3.ULT(off, 24), z3.UGE(off, 40))))
    for arr, a in o.stores:
        if arr == "mem":
            parts.append(z3.ULT(a - s.tr_base - lo, hi - lo))
    return z3.Or(parts)


def _t_traps(form, s, o):
    """A memory trap on the way (``Outcome.in_segments`` false): the emulators check segments,
    the model assumes such accesses away.  The form runs once more on ``s``, recording."""
    return z3.Not(form.run(s, record=True).in_segments)


def _traps_cases():
    return [R.case("sgdt_m", R.state(0, eax=0x10, ds_limit=0xF, ds_attr=R.S.data_attr(0) & ~R.S.G_BIT))]


def _t_accessed_store(form, s, o):
    """A far transfer or INT n loading a descriptor whose accessed bit is clear: the model's
    accessed-bit store writes the descriptor's whole high dword, read before the pushes, after
    them (a model bug, reported), so a descriptor that overlaps the new stack frame comes out
    wrong; steering keeps witnesses clear of it."""
    from .base import loads_cs, reads_unaccessed_segment
    if not loads_cs(form):
        return None
    return reads_unaccessed_segment(s, o)


def _accessed_store_cases():
    from .. import states as S
    s = R.state(0, esp=S.GDT_BASE + 0x68)               # the pushed CS lands on 0x60's high dword
    R.gdt(s, 0x60, S.descriptor(0, 0xFFFFFFFF, S.code_attr(0, accessed=False)))
    code = bytes.fromhex("9a") + (S.CODE + 0x100).to_bytes(4, "little") + (0x60).to_bytes(2, "little")
    return [R.case("call_far_ptr", s, code)]


def _accessed_store_holds(rs):
    """The emulator's pushed CS differs from the model's (the stale descriptor dword)."""
    from .. import states as S
    r, = rs
    model = _accessed_store_cases()[0].expect.state["mem"]
    return R.completes(r) and any(R.post(r)["mem"].get(a) != model[a]
                                  for a in range(S.GDT_BASE + 0x64, S.GDT_BASE + 0x68))


def _t_debug(form, s, o):
    """DR6/DR7 with reserved bits off their fixed values (``testkernel.DR_FIXED``)."""
    return z3.Or([z3.Or(s[n] & f1 != f1, s[n] & f0 != 0) for n, f1, f0 in T.DR_FIXED])


def _debug_cases():
    return [R.case("nop", R.state(3, dr6=0)), R.case("nop", R.state(3, dr7=0))]


def _tables_cases():
    return [R.case("nop", R.state(3, idtr_limit=0x7F)), R.case("nop", R.state(3, gdtr_limit=0x57))]


def _entry_cases():
    return [R.case("nop", R.state(3, cs=0x400 | 3))]


def _catch_cases():
    from .. import states as S
    s = R.state(0)                             # jmp far [eax] to 0x08:0x7ffffff0, above any RAM
    S.put(s["mem"], S.DATA, (0x7FFFFFF0).to_bytes(4, "little") + S.code_selector(0).to_bytes(2, "little"))
    return [R.case("jmp_far_m", s)]


def _traps(oracle: str) -> Deviation:
    checks = oracle == "bochs"
    return Deviation(
        "memory-traps-out-of-scope", "an access outside its segment (limit, type, null), a "
        "misaligned one with CR0.AM = EFLAGS.AC = 1 at CPL 3, a fetch beyond CS",
        "#GP(0), #SS(0 or selector), #AC(0) (SDM Vol. 3A 5.3-5.6, 6.15); Popek and Goldberg's "
        "memory traps, which the model assumes away (README)",
        ("Bochs raises them" if checks else "QEMU checks some (stack switches, code) and not "
         "others (a data access beyond DS's limit completes)")
        + ": cross-checks skip such states (Outcome.in_segments) and witness steering avoids them",
        Repro(_traps_cases, (lambda rs: R.faults(rs[0], 13, 0)) if checks else
              (lambda rs: R.completes(rs[0]))), kind="api", trigger=_t_traps)


def entries(oracle: str) -> tuple[Deviation, ...]:
    """The harness entries of ``oracle``'s table ("bochs" or "qemu")."""
    return (_traps(oracle),) + ENTRIES


ENTRIES: tuple[Deviation, ...] = (
    Deviation(
        "model-accessed-bit-store", "far transfers and INT n loading a descriptor whose accessed "
        "bit is clear, with the descriptor overlapping the pushed frame",
        "the accessed bit is set in the descriptor in memory (SDM Vol. 3A 3.4.5.1), a change of "
        "that bit alone",
        "(a model bug, reported: checks.set_accessed stores the high dword read before the pushes "
        "after them, undoing pushed bytes; the emulators set the bit alone.)  Steering keeps "
        "witnesses clear of it; no cross-check difference is explained by it",
        Repro(_accessed_store_cases, _accessed_store_holds), kind="model",
        trigger=_t_accessed_store),
    Deviation(
        "harness-debug-register-fixed-bits", "states whose DR6 or DR7 reserved bits are not at "
        "their fixed values",
        "DR6 bits 4-11, 16-31 read as 1 and bit 12 as 0; DR7 bit 10 reads as 1 and bits 11-12, "
        "14-15 as 0 (SDM Vol. 3B 17.2.3-17.2.4); the model's state allows any value",
        "no MOV to DR6/DR7 can make the emulator hold such a value: the test kernel refuses the "
        "state", Repro(_debug_cases, _refused("reserved bits")), kind="api", trigger=_t_debug),
    Deviation(
        "harness-table-room", "states whose IDT limit is below 0x9f or whose GDT is full",
        "(not an SDM matter: any table size is architectural)",
        "the test kernel catches vectors 0-19 through task gates in the state's own IDT and "
        "needs free GDT slots for its code, data and catch-TSS descriptors: it refuses the state",
        Repro(_tables_cases, lambda rs: _refused("IDT limit")(rs[:1]) and _refused("GDT")(rs[1:])),
        kind="api", trigger=_t_tables),
    Deviation(
        "harness-enters-through-the-tables", "CS/SS outside their tables; null TR; TR or LDTR "
        "limits no descriptor holds",
        "(architectural: hidden caches may be stale, and SMM/VM entry can load such caches)",
        "the test kernel enters CS and SS through the state's own tables and loads TR/LDTR from "
        "descriptors: it refuses the state", Repro(_entry_cases, _refused("beyond its table")),
        kind="api", trigger=_t_entry),
    Deviation(
        "harness-catch-points", "instructions that go outside low RAM, touch IDT entries 0-19, or "
        "store into their TSS's save area",
        "(not an SDM matter)",
        "the test kernel plants landing pads and catch gates there and saves the registers there "
        "on a catch: it refuses the state", Repro(_catch_cases, _refused("usable RAM")),
        kind="api", trigger=_t_catch),
)
