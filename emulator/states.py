"""Typical wellformed concrete states, for the emulator, the cross-checks and the replays.

``flat_state(cpl)`` is a small protected-mode machine as an OS would set it up (SDM Vol. 3A ch. 2,
3, 6, 7): a GDT with flat 4 GiB code and data descriptors for every ring, a busy 32-bit TSS whose
SS0:ESP0 (and SS1/SS2) name the inner stacks and whose I/O map base lies beyond its limit (no
I/O bitmap), an IDT of 256 interrupt gates, paging off.  The result is the model's CONCRETE
STATE FORMAT (``pgvirt.model.state``): every scalar field -> int, ``mem``/``io`` -> {addr: byte}.

Descriptor encoders live here too (pure data; ``machine`` reuses them for its temporary tables).
"""

from __future__ import annotations

from pgvirt.model import state as st

# --- layout ------------------------------------------------------------------------------------
GDT_BASE = 0x1000
IDT_BASE = 0x2000
TSS_BASE = 0x3000
LDT_BASE = 0x3800
CODE = 0x4000          # EIP of the instruction under test
DATA = 0x5000          # EAX/EBX point here, so [eax] operands hit mapped, known bytes
HANDLERS = 0x6000      # IDT gate targets (never run by Unicorn, which ignores the IDT)
STACK_TOP = {0: 0x9000, 1: 0x8C00, 2: 0x8800, 3: 0x8000}   # ESP of each ring's stack
TSS_LIMIT = 0x67       # the minimal 32-bit TSS (SDM Vol. 3A 7.2.1)
IDT_VECTORS = 256

# GDT: ring r has code at index 1 + 2r and data at index 2 + 2r, so selectors carry RPL r.
TSS_SEL = 0x48
LDT_SEL = 0x50
GDT_ENTRIES = 11


def code_selector(cpl: int) -> int:
    return ((1 + 2 * cpl) << 3) | cpl


def data_selector(cpl: int) -> int:
    return ((2 + 2 * cpl) << 3) | cpl


# --- descriptor encoding (SDM Vol. 3A 3.4.5, 6.11) ---------------------------------------------
G_BIT, DB_BIT = 1 << 15, 1 << 14     # in the 16-bit ``attr`` image (descriptor bits 40-55)


def code_attr(dpl: int, conforming: bool = False, accessed: bool = True) -> int:
    """Hidden-cache ``attr`` of a 32-bit, 4 KiB-granular, readable code segment."""
    typ = 0xA | (4 if conforming else 0) | (1 if accessed else 0)
    return G_BIT | DB_BIT | 0x80 | (dpl << 5) | 0x10 | typ


def data_attr(dpl: int, accessed: bool = True) -> int:
    """Hidden-cache ``attr`` of a 32-bit, 4 KiB-granular, writable expand-up data segment."""
    return G_BIT | DB_BIT | 0x80 | (dpl << 5) | 0x10 | 0x2 | (1 if accessed else 0)


TSS_BUSY_ATTR = 0x8B     # present, DPL 0, busy 32-bit TSS, byte granular
TSS_AVAIL_ATTR = 0x89
LDT_ATTR = 0x82


class EncodingError(ValueError):
    """A (base, limit, attr) triple no 8-byte descriptor can hold."""


def raw_limit(limit: int, attr: int) -> int:
    """The 20-bit descriptor limit for a byte-granular ``limit`` (G scales by 4 KiB)."""
    if attr & G_BIT:
        if limit & 0xFFF != 0xFFF:
            raise EncodingError(f"limit {limit:#x} with G=1 must end in 0xfff")
        return limit >> 12
    if limit > 0xFFFFF:
        raise EncodingError(f"limit {limit:#x} with G=0 exceeds 20 bits")
    return limit


def descriptor(base: int, limit: int, attr: int) -> bytes:
    """An 8-byte segment or system descriptor whose loaded cache is (base, limit, attr)."""
    if attr & 0x0F00:
        raise EncodingError(f"attr {attr:#x} has bits in the limit[19:16] position")
    raw = raw_limit(limit, attr)
    lo = ((base & 0xFFFF) << 16) | (raw & 0xFFFF)
    hi = ((base & 0xFF000000) | (((raw >> 16) & 0xF) << 16) | ((attr & 0xF0FF) << 8)
          | ((base >> 16) & 0xFF))
    return lo.to_bytes(4, "little") + hi.to_bytes(4, "little")


def gate(selector: int, offset: int, typ: int = 0xE, dpl: int = 0, params: int = 0) -> bytes:
    """An 8-byte gate: 0xE 32-bit interrupt gate, 0xF trap gate, 0xC call gate, 0x5 task gate."""
    lo = ((selector & 0xFFFF) << 16) | (offset & 0xFFFF)
    hi = (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (typ << 8) | (params & 0x1F)
    return lo.to_bytes(4, "little") + hi.to_bytes(4, "little")


def put(mem: dict, address: int, data: bytes) -> dict:
    """``mem`` with ``data`` stored at ``address`` (in place; returned for chaining)."""
    for k, b in enumerate(data):
        mem[(address + k) & 0xFFFFFFFF] = b
    return mem


def gdt_bytes() -> bytes:
    entries = [bytes(8)]
    for r in range(4):
        entries.append(descriptor(0, 0xFFFFFFFF, code_attr(r)))
        entries.append(descriptor(0, 0xFFFFFFFF, data_attr(r)))
    entries.append(descriptor(TSS_BASE, TSS_LIMIT, TSS_BUSY_ATTR))
    entries.append(descriptor(LDT_BASE, 0xF, LDT_ATTR))
    assert len(entries) == GDT_ENTRIES
    return b"".join(entries)


def tss_bytes() -> bytes:
    """A 32-bit TSS: SSn:ESPn for rings 0-2, I/O map base beyond the limit (SDM Vol. 3A 7.2.1)."""
    t = bytearray(TSS_LIMIT + 1)
    for ring in range(3):
        t[4 + 8 * ring: 8 + 8 * ring] = STACK_TOP[ring].to_bytes(4, "little")
        t[8 + 8 * ring: 10 + 8 * ring] = data_selector(ring).to_bytes(2, "little")
    t[0x66:0x68] = (TSS_LIMIT + 1).to_bytes(2, "little")
    return bytes(t)


def idt_bytes() -> bytes:
    """Interrupt gates to ring 0; INT3, INTO and INT 0x80 reachable from ring 3 (DPL 3)."""
    out = []
    for v in range(IDT_VECTORS):
        dpl = 3 if v in (3, 4, 0x80) else 0
        out.append(gate(code_selector(0), HANDLERS + 16 * v, 0xE, dpl))
    return b"".join(out)


def ldt_bytes() -> bytes:
    """Two entries: null and a ring-3 data segment (selector 0x0F)."""
    return bytes(8) + descriptor(0, 0xFFFFFFFF, data_attr(3))


def flat_state(cpl: int = 3, *, iopl: int = 0, interrupts: bool = True, **fields) -> dict:
    """A wellformed concrete state running at ``cpl`` with flat segments; ``fields`` override.

    CS:EIP = code_selector(cpl):CODE, SS:ESP = data_selector(cpl):STACK_TOP[cpl], DS/ES/FS/GS the
    ring's data selector, EAX = EBX = DATA.  TR holds the busy TSS, LDTR is null, CR0 = PE|ET,
    CR4 = 0.  ``iopl`` and ``interrupts`` set EFLAGS.IOPL and EFLAGS.IF.
    """
    if cpl not in (0, 1, 2, 3) or iopl not in (0, 1, 2, 3):
        raise ValueError(f"cpl and iopl must be 0..3, not {cpl}, {iopl}")
    s: dict = {name: st.FIELD[name].default for name in st.SCALARS}
    s.update(eax=DATA, ebx=DATA, esi=DATA + 0x100, edi=DATA + 0x200, esp=STACK_TOP[cpl], eip=CODE,
             flags=0, sysflags=(iopl << st.IOPL_LO) | ((1 << st.IF) if interrupts else 0), cpl=cpl)
    for seg in st.SREGS:
        code = seg == "cs"
        s[seg] = code_selector(cpl) if code else data_selector(cpl)
        s[f"{seg}_base"] = 0
        s[f"{seg}_limit"] = 0xFFFFFFFF
        s[f"{seg}_attr"] = code_attr(cpl) if code else data_attr(cpl)
    s.update(gdtr_base=GDT_BASE, gdtr_limit=GDT_ENTRIES * 8 - 1,
             idtr_base=IDT_BASE, idtr_limit=IDT_VECTORS * 8 - 1,
             ldtr=0, ldtr_base=0, ldtr_limit=0,
             tr=TSS_SEL, tr_base=TSS_BASE, tr_limit=TSS_LIMIT, tr_attr=TSS_BUSY_ATTR,
             cr0=(1 << st.CR0_PE) | (1 << st.CR0_ET), cr2=0, cr3=0, cr4=0,
             dr6=0xFFFF0FF0, dr7=0x400,   # the architectural reset values (SDM Vol. 3B 17.2)
             sysenter_cs=code_selector(0), sysenter_esp=STACK_TOP[0], sysenter_eip=HANDLERS + 0x1000,
             caches=1, tlb=1, halted=0, xcr0=1, efer=0, star=0, gif=1)
    mem: dict = {}
    put(mem, GDT_BASE, gdt_bytes())
    put(mem, IDT_BASE, idt_bytes())
    put(mem, TSS_BASE, tss_bytes())
    put(mem, LDT_BASE, ldt_bytes())
    s["mem"] = mem
    s["io"] = {}
    unknown = set(fields) - set(st.FIELD)
    if unknown:
        raise KeyError(f"no such state field: {', '.join(sorted(unknown))}")
    s.update(fields)
    return s
