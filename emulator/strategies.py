"""Random VALID IA-32 states for cross-checks: real descriptor tables in memory, every CPL.

One generator, two drivers.  ``generate(draw, form, profile)`` builds a state from a ``draw``
object (``int``/``bits``/``flag``/``pick``); ``RandomDraw`` drives it from ``random.Random`` (the
fast path of ``pgvirt crosscheck``), ``hypothesis_states(form, profile)`` from Hypothesis, which
then shrinks a failing state choice by choice.  Every choice is written so that its *first*
alternative (``pick``) or ``False`` (``flag``) is the plain one, which is where shrinking goes.

What a state holds (the model's concrete format, ``pgvirt.model.state``):

* a sparse GDT, an LDT and an IDT at fixed regions, with descriptors planted at random indices:
  code and data segments of every DPL (conforming, execute-only, read-only, expand-down,
  not-present, accessed bit clear, byte- and page-granular limits, non-zero bases), TSSs (16/32-bit,
  available/busy), LDT descriptors, call gates (16/32-bit, parameter counts), task gates and
  interrupt/trap gates (also where they do not belong);
* a busy 32-bit TSS whose SS0..SS2:ESP0..ESP2 name ring stacks, with or without an I/O bitmap;
* CPL 0-3 with CS/SS/DS/ES/FS/GS caches as a load leaves them (null selectors with any RPL,
  conforming code in data registers, DPL 1/2, LDT selectors), IOPL 0-3, CR0/CR4 combinations
  (UMIP only where the profile has it), debug registers, MSRs and ports;
* general registers, stack and data memory drawn from a pool of *interesting* values: selectors
  that name planted descriptors (with every RPL), addresses of the data and stack regions,
  EFLAGS images, boundary numbers - so loads of far pointers, IRET frames and the like are
  often meaningful.

The states satisfy ``profiles.wellformed`` (``wellformed(state, profile)`` checks it concretely
with the compiled formula) and what ``emulator.machine`` can load; the instruction's bytes are
part of ``mem`` at CS.base + EIP, so model and emulator read the same code bytes.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Sequence

from pgvirt.model import profiles
from pgvirt.model import state as st
from pgvirt.model.concrete import compile_predicate
from pgvirt.model.form import Form

from . import states as S

MASK32 = 0xFFFFFFFF

# Regions (linear addresses; segment bases are usually 0).
GDT_BASE, LDT_BASE, IDT_BASE, TSS_BASE = 0x10000, 0x30000, 0x40000, 0x48000
CODE_LO, CODE_HI = 0x4000, 0x4FF0
DATA = 0x60000
STACKS = {0: 0x7A000, 1: 0x78000, 2: 0x76000, 3: 0x74000}


# --- draws ------------------------------------------------------------------------------------
class RandomDraw:
    """Choices from a ``random.Random`` (fast; no shrinking)."""

    __slots__ = ("r",)

    def __init__(self, rng: random.Random):
        self.r = rng

    def int(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def bits(self, n: int) -> int:
        return self.r.getrandbits(n)

    def flag(self, p: float) -> bool:
        return self.r.random() < p

    def pick(self, seq: Sequence):
        return seq[self.r.randrange(len(seq))]


class DataDraw:
    """Choices from Hypothesis's ``data`` object: it records them and shrinks towards the plain
    alternatives (the first of a ``pick``, ``False`` for a ``flag``, small integers)."""

    def __init__(self, data):
        from hypothesis import strategies as hst
        self.d = data
        self.hst = hst

    def int(self, lo: int, hi: int) -> int:
        return self.d.draw(self.hst.integers(lo, hi))

    def bits(self, n: int) -> int:
        return self.d.draw(self.hst.integers(0, (1 << n) - 1))

    def flag(self, p: float) -> bool:
        return self.d.draw(self.hst.integers(0, 999)) >= round(1000 * (1 - p))

    def pick(self, seq: Sequence):
        return seq[self.d.draw(self.hst.integers(0, len(seq) - 1))]


# --- descriptors ------------------------------------------------------------------------------
G, DB = S.G_BIT, S.DB_BIT


def _limit(draw) -> tuple[int, int]:
    """(byte-granular limit, G bit): flat 4 GiB most often, else random byte/page granular."""
    k = draw.pick(("flat", "page", "byte", "small"))
    if k == "flat":
        return MASK32, G
    if k == "page":
        return (draw.bits(20) << 12) | 0xFFF, G
    if k == "byte":
        return draw.bits(20), 0
    return draw.int(0, 0x200), 0


def _base(draw) -> int:
    return draw.pick((0, 0, 0, 0x1000 * draw.int(1, 0x20), draw.bits(32)))


def seg_attr(type_: int, dpl: int, present: bool = True, g: int = G, db: int = DB) -> int:
    return g | db | (0x80 if present else 0) | (dpl << 5) | 0x10 | type_


class Tables:
    """A sparse GDT and LDT (index -> 8 bytes), IDT (vector -> 8 bytes) and what they hold."""

    def __init__(self):
        self.gdt: dict[int, bytes] = {}
        self.ldt: dict[int, bytes] = {}
        self.idt: dict[int, bytes] = {}
        self.code: list[int] = []        # selectors (RPL 0) of code segments
        self.data: list[int] = []        # ... of data segments
        self.other: list[int] = []       # system descriptors and gates
        self.gdt_limit = 0
        self.ldt_limit = 0

    def table(self, ti: int) -> dict[int, bytes]:
        return self.ldt if ti else self.gdt

    def free(self, draw, ti: int, lo: int = 1) -> int:
        t = self.table(ti)
        for _ in range(50):
            i = draw.int(lo, 0x7F if draw.flag(0.9) else 0x1FFF)
            if i not in t:
                return i
        i = max(t, default=0) + 1
        return i

    def plant(self, ti: int, index: int, desc: bytes, kind: str) -> int:
        self.table(ti)[index] = desc
        sel = (index << 3) | (ti << 2)
        getattr(self, kind).append(sel)
        return sel


def _random_segment(draw, dpl: int | None = None) -> tuple[int, int, int]:
    """(base, limit, attr in table form) of a random code or data segment."""
    dpl = draw.int(0, 3) if dpl is None else dpl
    limit, g = _limit(draw)
    code = draw.flag(0.4)
    if code:
        type_ = 0x8 | (0x4 if draw.flag(0.3) else 0) | (0x2 if not draw.flag(0.2) else 0)
    else:
        type_ = (0x2 if not draw.flag(0.2) else 0) | (0x4 if draw.flag(0.1) else 0)
    type_ |= 0 if draw.flag(0.3) else 1                     # accessed bit in the table
    present = not draw.flag(0.1)
    return _base(draw), limit, seg_attr(type_, dpl, present, g, DB if not draw.flag(0.1) else 0)


def _gate_bytes(sel: int, offset: int, typ: int, dpl: int, present: bool = True, params: int = 0) -> bytes:
    lo = ((sel & 0xFFFF) << 16) | (offset & 0xFFFF)
    hi = (offset & 0xFFFF0000) | (0x8000 if present else 0) | (dpl << 13) | (typ << 8) | (params & 0x1F)
    return lo.to_bytes(4, "little") + hi.to_bytes(4, "little")


def _cache(base: int, limit: int, attr: int) -> tuple[int, int, int]:
    """The hidden cache a load of this descriptor leaves: accessed set, limit nibble cleared."""
    return base & MASK32, limit, (attr | 1) & 0xF0FF


# --- the state --------------------------------------------------------------------------------
class Gen:
    def __init__(self, draw, form: Form, profile: profiles.Profile):
        self.draw, self.form, self.profile = draw, form, profile
        self.t = Tables()
        self.mem: dict[int, int] = {}

    # values
    def selector(self) -> int:
        d, t = self.draw, self.t
        pool = t.code + t.data + t.other
        k = d.pick(("pool", "pool", "pool", "null", "random"))
        if k == "pool" and pool:
            return d.pick(pool) | d.int(0, 3)
        if k == "null":
            return d.int(0, 3) | (4 if d.flag(0.2) else 0)    # 4..7: LDT entry 0, not null
        return d.bits(16)

    def value(self) -> int:
        """A 32-bit value from the pool of interesting ones."""
        d = self.draw
        k = d.pick(("data", "selector", "random", "small", "stack", "eflags", "code", "edge"))
        if k == "data":
            return DATA + d.int(0, 0x40)
        if k == "selector":
            return self.selector() | (d.bits(16) << 16 if d.flag(0.2) else 0)
        if k == "random":
            return d.bits(32)
        if k == "small":
            return d.int(0, 0x20)
        if k == "stack":
            return STACKS[d.int(0, 3)] - d.int(0, 0x40)
        if k == "eflags":
            return self.eflags_image()
        if k == "code":
            return CODE_LO + d.int(0, 0x100)
        return d.pick((0, MASK32, 0x80000000, 0x7FFFFFFF, 0xFFFF, 0x10000))

    def eflags_image(self) -> int:
        d = self.draw
        v = d.bits(32) & (st.USER_FLAGS_MASK | st.SYS_FLAGS_MASK)
        if not d.flag(0.2):
            v &= ~((1 << st.VM) | (1 << st.NT) | (1 << st.TF) | (1 << st.RF))
        return v | st.EFLAGS_FIXED

    def put(self, address: int, data: bytes) -> None:
        for k, b in enumerate(data):
            self.mem[(address + k) & MASK32] = b

    def put_values(self, address: int, n: int) -> None:
        for k in range(n):
            self.put(address + 4 * k, self.value().to_bytes(4, "little"))

    # tables
    def plant_random(self, ti: int) -> None:
        d, t = self.draw, self.t
        kind = d.pick(("segment", "segment", "segment", "gate", "system"))
        i = t.free(d, ti)
        if kind == "segment":
            base, limit, attr = _random_segment(d)
            t.plant(ti, i, S.descriptor(base, limit, attr), "code" if attr & 0x8 else "data")
        elif kind == "gate":
            typ = d.pick((0xC, 0xC, 0x4, 0x5, 0xE, 0xF))
            target = d.pick(t.code) if t.code and d.flag(0.8) else self.selector()
            off = d.pick((CODE_LO + d.int(0, 0x100), d.bits(32)))
            params = d.int(1, 3) if d.flag(0.15) else 0
            t.plant(ti, i, _gate_bytes(target | d.int(0, 3), off, typ, d.int(0, 3),
                                       not d.flag(0.1), params), "other")
        else:
            typ = d.pick((0x9, 0xB, 0x2, 0x1, 0x3, 0x0, 0xD))
            t.plant(ti, i, S.descriptor(d.pick((TSS_BASE, DATA, LDT_BASE)), d.pick((0x67, 0xFFF, 0x10)),
                                        0x80 | (d.int(0, 3) << 5) | typ), "other")

    def segment_cache(self, reg: str, cpl: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, attr) of a segment register, its descriptor planted."""
        d, t = self.draw, self.t
        if reg in ("es", "ds", "fs", "gs") and d.flag(0.15):
            return d.int(0, 3), 0, 0, 0                                        # null selector
        ti = 1 if d.flag(0.2) else 0
        limit, g = _limit(d) if d.flag(0.3) else (MASK32, G)
        base = _base(d) if d.flag(0.3) else 0
        # CS.D and SS.B stay 1: the model's forms are 32-bit code on a 32-bit stack
        db = DB if reg in ("cs", "ss") or not d.flag(0.05) else 0
        if reg == "cs":
            conforming = d.flag(0.2)
            dpl = d.int(0, cpl) if conforming else cpl
            type_ = 0x8 | (0x4 if conforming else 0) | (0 if d.flag(0.2) else 0x2)
            rpl = cpl
            if base == 0 and limit < CODE_HI + 0x10:
                limit, g = MASK32, G
        elif reg == "ss":
            dpl, rpl = cpl, cpl
            type_ = 0x2 | (0x4 if d.flag(0.1) else 0)
        else:
            kind = d.pick(("data", "data", "readonly", "code", "conforming"))
            if kind == "conforming":
                dpl = d.int(0, 3)
                type_ = 0xE
                rpl = d.int(0, 3)
            else:
                dpl = d.int(cpl, 3)
                type_ = {"data": 0x2, "readonly": 0x0, "code": 0xA}[kind] | (0x4 if d.flag(0.05) and kind != "code" else 0)
                rpl = d.int(0, dpl)
        attr = seg_attr(type_ | 1, dpl, True, g, db)
        index = t.free(d, ti, lo=1)
        table_attr = attr & ~1 if d.flag(0.2) else attr                    # accessed clear in memory
        if d.flag(0.1):                                                    # a stale cache
            b2, l2, a2 = _random_segment(d)
            t.plant(ti, index, S.descriptor(b2, l2, a2), "code" if a2 & 0x8 else "data")
        else:
            t.plant(ti, index, S.descriptor(base, limit, table_attr), "code" if type_ & 0x8 else "data")
        sel = (index << 3) | (ti << 2) | rpl
        return (sel,) + _cache(base, limit, attr)

    def build(self) -> dict:
        d, t, form = self.draw, self.t, self.form
        p = self.profile
        cpl = d.pick((3, 0, 1, 2))
        s: dict = {name: st.FIELD[name].default for name in st.SCALARS}
        s["cpl"] = cpl
        # a few flat segments for every ring first: selectors in registers and frames hit them
        for r in range(4):
            i = t.free(d, 0)
            t.plant(0, i, S.descriptor(0, MASK32, S.code_attr(r)), "code")
            i = t.free(d, 0)
            t.plant(0, i, S.descriptor(0, MASK32, S.data_attr(r)), "data")
        for _ in range(d.int(0, 8)):
            self.plant_random(d.pick((0, 0, 1)))
        caches = {}
        for reg in ("cs", "ss", "ds", "es", "fs", "gs"):
            caches[reg] = self.segment_cache(reg, cpl)
        if cpl and (caches["cs"][0] & ~3) == (caches["ss"][0] & ~3):
            raise AssertionError("CS and SS planted at one index")
        for reg, (sel, base, limit, attr) in caches.items():
            s[reg], s[f"{reg}_base"], s[f"{reg}_limit"], s[f"{reg}_attr"] = sel, base, limit, attr
        # selectors the instruction itself names (far pointer immediates) get a descriptor
        dec = form.decode()
        far_ptr = form.enc.opcode in (b"\x9a", b"\xea") and dec.imm is not None
        if far_ptr:
            # ptr16:32 (cp): the selector is the second immediate; ptr16:16 (cd): the high word
            sel = dec.imm2 if "cp" in form.enc.immediates else dec.imm >> 16
            tab = t.table((sel >> 2) & 1)
            if (sel >> 3) not in tab and sel & 0xFFF8:
                ti = (sel >> 2) & 1
                if d.flag(0.5):
                    base, limit, attr = _random_segment(d)
                    t.plant(ti, sel >> 3, S.descriptor(base, limit, attr), "code")
                else:
                    target = d.pick(t.code)
                    t.plant(ti, sel >> 3, _gate_bytes(target | d.int(0, 3), CODE_LO + d.int(0, 0x100),
                                                      d.pick((0xC, 0x4, 0x5)), d.int(0, 3)), "other")
        # GDT / LDT placement and limits
        gmax = max(t.gdt) * 8 + 7
        s["gdtr_base"] = GDT_BASE
        s["gdtr_limit"] = gmax if not d.flag(0.1) else d.int(7, 0xFFFF)
        if t.ldt or d.flag(0.5):
            lmax = (max(t.ldt) * 8 + 7) if t.ldt else 0xF
            i = t.free(d, 0)
            ldt_limit = lmax if not d.flag(0.1) else d.int(0, 0xFFFF)
            t.plant(0, i, S.descriptor(LDT_BASE, ldt_limit, S.LDT_ATTR), "other")
            s["ldtr"], s["ldtr_base"], s["ldtr_limit"] = i << 3, LDT_BASE, ldt_limit
            if d.flag(0.05):   # a stale LDTR cache
                s["ldtr_limit"] = d.int(0, 0xFFFF)
        # TSS: busy 32-bit, ring stacks, maybe an I/O bitmap
        tss_limit = 0x67
        io_base = 0x68
        if d.flag(0.3):
            io_base = d.pick((0x68, 0x80))
            nbytes = d.pick((0x10, 0x2001))
            tss_limit = io_base + nbytes - 1 if not d.flag(0.2) else io_base + d.int(0, 4)
            for k in range(min(nbytes, 0x10)):
                self.mem[TSS_BASE + io_base + k] = d.pick((0, 0xFF, d.bits(8)))
            for port in (0x60, 0x61, 0x62, 0x63):   # the ports the I/O forms name
                if d.flag(0.5):
                    self.mem[TSS_BASE + io_base + (port >> 3)] = d.pick((0, 0xFF, d.bits(8)))
        tss = bytearray(0x68)
        for ring in range(3):
            good = not d.flag(0.1)
            if good:
                i = t.free(d, 0)
                t.plant(0, i, S.descriptor(0, MASK32, S.data_attr(ring)), "data")
                ss = (i << 3) | ring
            else:
                ss = self.selector()
            esp = STACKS[ring] if not d.flag(0.1) else self.value()
            tss[4 + 8 * ring: 8 + 8 * ring] = esp.to_bytes(4, "little")
            tss[8 + 8 * ring: 10 + 8 * ring] = ss.to_bytes(2, "little")
        tss[0x66:0x68] = io_base.to_bytes(2, "little")
        tr_index = t.free(d, 0)
        t.plant(0, tr_index, S.descriptor(TSS_BASE, tss_limit, S.TSS_BUSY_ATTR), "other")
        s["tr"], s["tr_base"], s["tr_limit"], s["tr_attr"] = tr_index << 3, TSS_BASE, tss_limit, S.TSS_BUSY_ATTR
        self.put(TSS_BASE, bytes(tss))
        # extra descriptors planted after TR/LDT so selectors to them exist in the pools
        for _ in range(d.int(0, 4)):
            self.plant_random(d.pick((0, 1)))
        # recompute the table limits now that everything is planted
        gmax = max(t.gdt) * 8 + 7
        if s["gdtr_limit"] < gmax and not d.flag(0.1):
            s["gdtr_limit"] = min(gmax, 0xFFFF)
        if s["gdtr_limit"] > 0xFFFF:
            s["gdtr_limit"] = 0xFFFF
        # IDT: gates for INT3, INTO, the form's own vector, and random others
        s["idtr_base"] = IDT_BASE
        s["idtr_limit"] = 0x7FF if not d.flag(0.1) else d.int(0, 0x7FF)
        vectors = {3, 4}
        if form.name == "int_imm" or dec.imm is not None and form.mnemonic == "INT":
            vectors.add(dec.imm & 0xFF)
        for _ in range(d.int(0, 2)):
            vectors.add(d.bits(8))
        for v in sorted(vectors):
            typ = d.pick((0xE, 0xF, 0xE, 0x5, 0x6, 0x7, 0xC, 0x0))
            target = d.pick(t.code) | d.int(0, 3) if t.code and not d.flag(0.1) else self.selector()
            t.idt[v] = _gate_bytes(target, CODE_LO + 0x800 + d.int(0, 0x100) if not d.flag(0.1) else d.bits(32),
                                   typ, d.pick((3, 0, 1, 2)), not d.flag(0.1))
        # write the tables
        for i, b in t.gdt.items():
            self.put(GDT_BASE + 8 * i, b)
        for i, b in t.ldt.items():
            self.put(LDT_BASE + 8 * i, b)
        for v, b in t.idt.items():
            self.put(IDT_BASE + 8 * v, b)

        # EFLAGS, control and debug registers, MSRs
        s["flags"] = d.bits(32) & st.USER_FLAGS_MASK
        sysf = (d.int(0, 3) << st.IOPL_LO) | ((1 << st.IF) if d.flag(0.6) else 0)
        for b in (st.AC, st.ID, st.VIF, st.VIP, st.NT):
            if d.flag(0.15):
                sysf |= 1 << b
        s["sysflags"] = sysf
        # ET is hard-wired to 1 on P6 and later processors (SDM Vol. 3A 2.5), the ones the model
        # describes (its MOV CR0 sets it); a state with ET = 0 does not exist there.
        cr0 = (1 << st.CR0_PE) | (1 << st.CR0_ET)
        for b in (st.CR0_MP, st.CR0_EM, st.CR0_TS, st.CR0_NE, st.CR0_WP, st.CR0_AM, st.CR0_CD):
            if d.flag(0.25):
                cr0 |= 1 << b
        if cr0 & (1 << st.CR0_CD) and d.flag(0.3):
            cr0 |= 1 << st.CR0_NW
        s["cr0"] = cr0
        s["cr2"] = self.value()
        s["cr3"] = d.pick((0, d.bits(32), DATA))
        cr4_ok = st.cr4_defined(p.features)
        cr4 = 0
        for b in range(24):
            if (1 << b) & cr4_ok and d.flag(0.25):
                cr4 |= 1 << b
        s["cr4"] = cr4
        for r in ("dr0", "dr1", "dr2", "dr3"):
            s[r] = self.value()
        s["dr6"] = 0xFFFF0FF0 if not d.flag(0.3) else (d.bits(32) & 0xE00F) | 0xFFFF0FF0
        s["dr7"] = 0x400 | ((1 << 13) if d.flag(0.1) else 0) | ((d.bits(16) << 16) if d.flag(0.2) else 0)
        s["tsc"] = d.bits(64)
        s["tsc_aux"] = d.bits(32)
        s["pmc0"], s["pmc1"] = d.bits(64), d.bits(64)
        s["sysenter_cs"] = d.pick(t.code) if d.flag(0.7) else d.pick((0, d.bits(16), 3))
        s["sysenter_esp"] = self.value()
        s["sysenter_eip"] = self.value()
        s["caches"], s["tlb"] = d.int(0, 1), d.int(0, 1)
        s["halted"] = 0
        s["xcr0"], s["efer"], s["gif"] = 1, 0, 1      # the reset values (no XSAVE, EFER or SVM)
        s["star"] = d.bits(64)

        # general registers, EIP, stack and data
        for r in st.GPRS:
            s[r] = self.value()
        if form.name in ("rdmsr", "wrmsr"):
            s["ecx"] = d.pick((st.MSR_SYSENTER_CS, st.MSR_SYSENTER_ESP, st.MSR_SYSENTER_EIP,
                               st.MSR_TSC, 0xC0000103, self.value()))
        if form.name == "rdpmc":
            s["ecx"] = d.pick((0, 1, self.value()))
        if form.enc.mandatory in (0xF2, 0xF3) and form.enc.implicit_mem:   # REP string forms
            s["ecx"] = d.pick((1, 2, 0, self.value()))
        if form.mnemonic in ("IN", "OUT", "INSB", "INSW", "INSD", "OUTSB", "OUTSW", "OUTSD") \
                and not form.enc.immediates:
            s["edx"] = (s["edx"] & ~0xFFFF) | d.pick((0x60, 0x61, d.bits(16)))
        s["esp"] = STACKS[cpl] - 4 * d.int(0, 8) if not d.flag(0.1) else self.value()
        # the stack: return frames (EIP, CS, EFLAGS, ESP, SS) or pool values
        esp_lin = (s["ss_base"] + s["esp"]) & MASK32
        if d.flag(0.5):
            code = d.pick(t.code) | d.int(0, 3)
            data = d.pick(t.data) | d.int(0, 3)
            outer = [STACKS[d.int(0, 3)] - 0x20, data]
            w = 2 if form.enc.osize == 16 else 4          # a frame of words for IRET, RETF o16
            if form.mnemonic in ("IRETD", "IRET"):
                frame = [CODE_LO + d.int(0, 0x100), code, self.eflags_image()] + outer
            elif form.mnemonic == "RETF":
                skip = (dec.imm or 0) // w
                frame = [CODE_LO + d.int(0, 0x100), code] + [self.value() for _ in range(skip)] + outer
            else:
                frame = [self.value(), code, self.eflags_image()] + outer
                w = 4
            for k, v in enumerate(frame):
                v = v if not d.flag(0.05) else self.value()
                self.put(esp_lin + w * k, (v & ((1 << 8 * w) - 1)).to_bytes(w, "little"))
        else:
            self.put_values(esp_lin, 6)
        self.put_values(esp_lin - 16, 4)
        for reg in ("eax", "ebx", "esi", "edi"):
            if d.flag(0.3):
                self.put_values((s["ds_base"] + s[reg]) & MASK32, 3)
        self.put_values(DATA, 20)
        # ports
        s["io"] = {p_: d.bits(8) for p_ in (0x60, 0x61, 0x62, 0x63) if d.flag(0.5)}
        # EIP and the code bytes
        s["eip"] = d.int(CODE_LO, CODE_HI)
        if s["eip"] > s["cs_limit"]:
            s["eip"] = s["cs_limit"] & ~0xF
        code_at = (s["cs_base"] + s["eip"]) & MASK32
        for k, b in enumerate(form.bytes):
            self.mem[(code_at + k) & MASK32] = b
        s["mem"] = self.mem
        return s


def generate(draw, form: Form, profile: profiles.Profile = profiles.PENTIUM) -> dict:
    """A random valid state for ``form`` under ``profile`` (see the module docstring)."""
    return Gen(draw, form, profile).build()


@lru_cache(maxsize=None)
def _wellformed(profile_name: str):
    return compile_predicate(lambda s: profiles.wellformed(s, profiles.get(profile_name)))


def wellformed(state: dict, profile: profiles.Profile) -> bool:
    """``profiles.wellformed`` evaluated on a concrete state (the compiled formula)."""
    return bool(_wellformed(profile.name)(state))


def hypothesis_states(form: Form, profile: profiles.Profile = profiles.PENTIUM):
    """A Hypothesis strategy of valid states for ``form`` (shrinks choice by choice)."""
    from hypothesis import strategies as hst

    @hst.composite
    def states(data_draw):
        class _Data:
            def draw(self, strategy):
                return data_draw(strategy)
        return generate(DataDraw(_Data()), form, profile)

    return states()
