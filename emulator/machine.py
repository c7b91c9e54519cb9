"""Unicorn 2.1.4 as a concrete IA-32 machine: put any model state into it, run one instruction.

With ``vm.py`` (whole-guest runs for the monitors) and ``bare.py`` (their baseline), this is the
only module that knows Unicorn.  A ``Machine`` keeps ONE ``Uc(UC_ARCH_X86,
UC_MODE_32)`` and, for every call of ``run(state, code)``:

1. checks the state can exist on the hardware (``ImpossibleState``) and can be reproduced here
   (``UnsupportedState``) - both ``StateError``, a ``ValueError`` with a one-line message;
2. reaches the state's CPL and segment caches the way the hardware allows (REFERENCE.md 4:
   register writes cannot leave CPL 0).  From Unicorn's reset context a CPL-0 stub loads each
   of ES/DS/FS/GS (and SS at CPL 0) from a temporary descriptor that encodes the state's
   hidden cache, through its own LGDT (and LLDT for selectors with TI = 1), then enters CS (and
   SS at CPL > 0) by far JMP or IRETD; a null ES/DS with RPL > 0 is loaded after the IRETD,
   which would otherwise zero it.  The state's own tables are written only afterwards, so stale
   caches are reproduced.  The result is checked field by field and kept (``context_save``)
   per segment configuration;
3. restores that context (exception state is sticky in Unicorn: restore before every run),
   writes the remaining registers through the API (GPRs, EIP, EFLAGS, CRn, DRn, GDTR, IDTR,
   LDTR, TR, MSRs), rewrites the memory that differs (unspecified bytes read as 0; the whole
   4 GiB is mapped once) and drops stale translations of the code bytes (``ctl_remove_cache``);
4. runs exactly one instruction: ``emu_start(eip, until=cs_base + eip + len)`` (Unicorn takes
   ``begin`` as EIP but compares ``until`` with QEMU's PC, CS.base + EIP without the 32-bit
   wrap), and a code hook stops before any second instruction starts (a jump elsewhere, or
   one to itself); a REP string instruction may re-enter itself up to ``max_iterations`` times.
   That count bounds every run in instructions; ``Watchdog`` bounds it in wall-clock
   time with one thread per Machine (Unicorn's ``timeout`` starts a thread per ``emu_start``);
5. returns ``Fault(vector, None, reason)`` (from ``UC_HOOK_INTR``, or ``UC_ERR_INSN_INVALID``
   for #UD; Unicorn exposes no error codes) or ``Next(state)`` in the model's concrete format.

Unicorn's API cannot read the hidden segment caches or the CPL.  They are read from the saved
context: it is a copy of QEMU's ``CPUX86State`` (``hflags`` then ``SegmentCache segs[6]``, ``ldt``,
``tr``), whose offsets are found and checked at start-up against values written through the
API, so a different layout fails loudly (``LayoutError``) instead of reading garbage.

Fields Unicorn has no state for (``NOT_HELD``) are carried from the input unchanged; see
``pgvirt.emulator.deviations`` for where Unicorn departs from the SDM.
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from unicorn import (UC_ARCH_X86, UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_ERR_INSN_INVALID,
                     UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_MEM_READ, UC_HOOK_MEM_UNMAPPED, UC_HOOK_MEM_WRITE, UC_MODE_32,
                     UC_PROT_ALL, Uc, UcError)
from unicorn import unicorn_py3
from unicorn import x86_const as X

from pgvirt.model import state as st
from pgvirt.model.outcome import UD, Fault, Next, vector_name

from . import states as layout
from .validity import (ImpossibleState, StateError, UnsupportedState, _is_tss,  # noqa: F401
                       check)

PAGE = 0x1000
MASK32 = 0xFFFFFFFF
ZERO_PAGE = bytes(PAGE)

# Fields Unicorn keeps no state for: carried from the input to the output unchanged.
#   caches/tlb: the model's abstraction of INVD/WBINVD/INVLPG; QEMU has no cache model.
#   pmc0/pmc1: TCG implements no performance counters (RDPMC is #UD, see deviations).
#   tsc: QEMU 5.0 has no IA32_TSC MSR (RDMSR 0x10 reads 0, WRMSR 0x10 is dropped) and RDTSC
#        reads host time (deviations "tsc-msr-unimplemented", "rdtsc-host-time").
#   xcr0: Unicorn's API has no XCR0 register (QEMU 5.0 keeps one, but nothing writes it here).
#   efer, star, gif: the profiles' processors have no EFER or SVM (features.py), so their reset
#        values are all the states hold; Unicorn's own are not consulted.
#   k0-k7: QEMU 5.0 TCG implements no AVX-512; Unicorn's K registers are no-ops.
#   xss, bndcfgs, bndcfgu, pkru: Unicorn's API has no such registers (its CPU has neither XSAVES,
#        MPX nor protection keys); xinuse: the processor's choice of XINUSE bits (QEMU 5.0 tracks
#        none and reports every component in use).
NOT_HELD = ("caches", "tlb", "pmc0", "pmc1", "tsc", "xcr0", "efer", "star", "gif", "xss", "bndcfgs",
            "xinuse", "pkru", "bndcfgu") + st.KREGS
# ZMMi holds XMMi in bits 127:0.  Unicorn's CPU has no AVX, so nothing architectural reads
# bits 255:128 there, and QEMU 5.0's SSE helpers that end in ``*d = r`` copy a whole ZMMReg,
# leaving stack garbage in them (PSHUFB with a memory operand, found by the frame test): bits
# 511:128 are not held and are carried unchanged.
ZMM_HELD_BITS = 128

# x87 registers: R0-R7 by physical number (UC_X86_REG_FPi is QEMU's fpregs[i], not ST(i)),
# control/status words, the tag word in its full two-bit form, the last-instruction pointers.
_FP_IDS = tuple(getattr(X, f"UC_X86_REG_FP{i}") for i in range(8))
_X87_IDS = (("fcw", X.UC_X86_REG_FPCW), ("fsw", X.UC_X86_REG_FPSW), ("fop", X.UC_X86_REG_FOP),
            ("fip", X.UC_X86_REG_FIP), ("fcs", X.UC_X86_REG_FCS), ("fdp", X.UC_X86_REG_FDP),
            ("fds", X.UC_X86_REG_FDS), ("mxcsr", X.UC_X86_REG_MXCSR))
_YMM_IDS = tuple(getattr(X, f"UC_X86_REG_XMM{i}") for i in range(8))

# MSRs written and read back through the API (which runs QEMU's WRMSR/RDMSR helpers).
MSRS = {"sysenter_cs": st.MSR_SYSENTER_CS, "sysenter_esp": st.MSR_SYSENTER_ESP,
        "sysenter_eip": st.MSR_SYSENTER_EIP, "tsc_aux": 0xC0000103}

_GPR_IDS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX,
            X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
_SCALAR_REGS = tuple(zip(st.GPRS, _GPR_IDS)) + (
    ("eip", X.UC_X86_REG_EIP),
    ("cr0", X.UC_X86_REG_CR0), ("cr2", X.UC_X86_REG_CR2), ("cr3", X.UC_X86_REG_CR3),
    ("cr4", X.UC_X86_REG_CR4),
    ("dr0", X.UC_X86_REG_DR0), ("dr1", X.UC_X86_REG_DR1), ("dr2", X.UC_X86_REG_DR2),
    ("dr3", X.UC_X86_REG_DR3), ("dr6", X.UC_X86_REG_DR6), ("dr7", X.UC_X86_REG_DR7),
)
_READ_IDS = [r for _, r in _SCALAR_REGS] + [X.UC_X86_REG_EFLAGS, X.UC_X86_REG_GDTR,
                                            X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR]

# Legacy prefixes (SDM Vol. 2A 2.1.1): to find a REP string instruction and HLT's opcode.
_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))
_HLT = 0xF4
ASIZE = 0x67

# CR0 bits (SDM Vol. 3A 2.5).
_PE, _PG, _NW, _CD = 1 << st.CR0_PE, 1 << st.CR0_PG, 1 << st.CR0_NW, 1 << st.CR0_CD


def load_user(uc, s: Mapping[str, int]) -> None:
    """The x87, SSE and AVX registers of ``s`` onto the CPU.  FPSW is written after the
    registers: it sets TOP."""
    for i, r in enumerate(_FP_IDS):
        v = s[st.FPRS[i]]
        uc.reg_write(r, (v & ((1 << 64) - 1), v >> 64))
    tags = 0
    for i in range(8):
        if not s["ftw"] >> i & 1:
            tags |= 3 << (2 * i)      # empty
    uc.reg_write_batch([(r, s[name]) for name, r in _X87_IDS] + [(X.UC_X86_REG_FPTAG, tags)])
    for i, r in enumerate(_YMM_IDS):
        uc.reg_write(r, s[st.ZMMS[i]] & ((1 << ZMM_HELD_BITS) - 1))


def read_user(uc, before: Mapping[str, int]) -> dict:
    """The x87, SSE and AVX registers on the CPU; ZMM bits Unicorn does not hold come from
    ``before``."""
    out: dict = {}
    for i, r in enumerate(_FP_IDS):
        mant, exp = uc.reg_read(r)
        out[st.FPRS[i]] = ((exp & 0xFFFF) << 64) | (mant & ((1 << 64) - 1))
    vals = uc.reg_read_batch([r for _, r in _X87_IDS] + [X.UC_X86_REG_FPTAG])
    for (name, _), v in zip(_X87_IDS, vals):
        out[name] = v & ((1 << st.FIELD[name].width) - 1)
    tags = vals[-1]
    out["ftw"] = sum(1 << i for i in range(8) if (tags >> (2 * i)) & 3 != 3)
    hi = ~((1 << ZMM_HELD_BITS) - 1)
    for i, r in enumerate(_YMM_IDS):
        z = st.ZMMS[i]
        out[z] = (before.get(z, 0) & hi & ((1 << 512) - 1)) | uc.reg_read(r)
    return out


class IncompleteRun(RuntimeError):
    """The instruction did not finish within the iteration bound (a long REP string op)."""


class MachineError(RuntimeError):
    """Unicorn stopped in a way this module does not expect (a bug here or in Unicorn)."""


class LayoutError(RuntimeError):
    """Unicorn's saved context is not the CPUX86State layout this module reads caches from."""


@dataclass
class Access:
    """What the last ``run`` touched: linear addresses read and written, ports in and out."""

    reads: set = field(default_factory=set)
    writes: set = field(default_factory=set)
    ports_in: set = field(default_factory=set)
    ports_out: set = field(default_factory=set)


class _Image:
    """A ``mem`` dict as page images and contiguous runs, built once per distinct content.

    Replays and cross-checks run many states over the same tables; comparing the dict with the
    cached copy (``==``, done in C) is far cheaper than rebuilding the pages byte by byte.
    """

    def __init__(self, mem: Mapping[int, int]):
        self.src = dict(mem)
        if not all(type(a) is int for a in mem):
            raise StateError("mem addresses must be integers")
        keys = sorted(mem)
        if keys and not (0 <= keys[0] and keys[-1] <= MASK32):
            raise StateError("mem addresses must lie in 0..2**32-1")
        try:
            vals = bytes(map(mem.__getitem__, keys))
        except (TypeError, ValueError):
            raise StateError("mem values must be bytes (integers 0..255)") from None
        runs: list[tuple[int, int, int]] = []     # (address, index into vals, length)
        i, n = 0, len(keys)
        while i < n:
            j = i + 1
            while j < n and keys[j] == keys[j - 1] + 1:
                j += 1
            runs.append((keys[i], i, j - i))
            i = j
        pages: dict[int, bytearray] = {}
        for start, i, length in runs:
            pos = 0
            while pos < length:
                a = start + pos
                take = min(length - pos, PAGE - (a & 0xFFF))
                buf = pages.setdefault(a >> 12, bytearray(PAGE))
                buf[a & 0xFFF:(a & 0xFFF) + take] = vals[i + pos:i + pos + take]
                pos += take
        self.runs = runs
        self.pages: dict[int, bytes] = {p: bytes(b) for p, b in pages.items()}


# --- the CPUX86State window in a saved context ------------------------------------------------
_SEGCACHE = struct.Struct("<IxxxxQII")   # QEMU SegmentCache: u32 selector; u64 base; u32 limit, flags


def _calibrate(uc: Uc) -> int:
    """Offset of ``segs[0]`` in a saved context, located through TR/LDTR values set via the API.

    CPUX86State holds ``u32 hflags, hflags2; SegmentCache segs[6], ldt, tr`` in this order.
    """
    saved = uc.context_save()
    tr = (0x1238, 0x9ABCDEF0, 0x12345, 0x8B00)
    ldt = (0x1230, 0x11223344, 0x5566, 0x8200)
    uc.reg_write(X.UC_X86_REG_TR, tr)
    uc.reg_write(X.UC_X86_REG_LDTR, ldt)
    blob = bytes(uc.context_save())
    uc.context_restore(saved)
    pat = _SEGCACHE.pack(tr[0], tr[1], tr[2], tr[3])
    at = blob.find(pat)
    if at < 0 or blob.find(pat, at + 1) >= 0:
        raise LayoutError("cannot locate TR's SegmentCache in Unicorn's context")
    if blob[at - _SEGCACHE.size:at] != _SEGCACHE.pack(*ldt):
        raise LayoutError("LDTR's SegmentCache does not precede TR's in Unicorn's context")
    return at - 7 * _SEGCACHE.size


# --- the stub: hand-assembled, every memory operand CS-relative (the stub's own CS stays flat
#     while DS and the others take the state's caches) -------------------------------------------
def _d32(v: int) -> bytes:
    return (v & MASK32).to_bytes(4, "little")


def _w16(v: int) -> bytes:
    return (v & 0xFFFF).to_bytes(2, "little")


def _lgdt(a: int) -> bytes:
    return b"\x2e\x0f\x01\x15" + _d32(a)                   # lgdt cs:[a]       0F 01 /2


def _lldt(a: int) -> bytes:
    return b"\x2e\x0f\x00\x15" + _d32(a)                   # lldt cs:[a]       0F 00 /2


def _mov_sreg(n: int, a: int) -> bytes:
    return b"\x2e\x8e" + bytes([0x05 | n << 3]) + _d32(a)  # mov sreg, cs:[a]  8E /r


def _mov_esp(a: int) -> bytes:
    return b"\x2e\x8b\x25" + _d32(a)                       # mov esp, cs:[a]   8B /r


def _jmp_far(a: int) -> bytes:
    return b"\x2e\xff\x2d" + _d32(a)                       # jmp far cs:[a]    FF /5


def _mov_r32(r: int, a: int) -> bytes:
    return b"\x2e\x8b" + bytes([0x05 | r << 3]) + _d32(a)  # mov r32, cs:[a]   8B /r


def _mov_sreg_r(n: int, r: int) -> bytes:
    return b"\x8e" + bytes([0xC0 | n << 3 | r])          # mov sreg, r16     8E /r


_IRETD = b"\xcf"
_LATE_GPR = (0, 3)               # EAX, EBX


def _late_nulls(s: Mapping[str, int]) -> list[str]:
    """ES/DS holding a null selector with RPL > 0 above CPL 0: QEMU's IRETD replaces them with
    selector 0 (its validate_seg), so they are loaded after it, at the state's CPL."""
    if s["cpl"] == 0:
        return []
    return [g for g in ("es", "ds") if s[g] & 0xFFFC == 0 and s[g] & 3]
_SREG_NUM = {s: n for n, s in enumerate(st.SREGS)}          # es cs ss ds fs gs = 0..5
_BOOT_LEN = 8 + 7 + 7 + 7        # lgdt, jmp far, mov ss, mov esp
_STEP_LEN = 8 + 8 + 8            # lgdt (LDT holder), lldt, lgdt (the step's GDT); then a 7-byte load

# Scratch window, relative to its base R (64 KiB-aligned, 0x23000 bytes; only touched pages are
# mapped).  Stub code, stub data (one 0x40-byte record per load step), the boot GDT, the IRETD
# frame, per-step LDT-holder GDTs, single descriptor slots, and the shared CS/SS table: when
# IRETD loads CS and SS from one table, SS's slot lies at a selector-dependent distance
# (+-64 KiB) from CS's anchor.
_W_CODE, _W_DATA, _W_BOOT_GDT, _W_HOLDERS, _W_FRAME = 0x0, 0x1000, 0x1800, 0x1C00, 0x1F00
_W_SLOTS, _W_PAIR = 0x2000, 0x13000
_W_SIZE = 0x23000
_WINDOWS = (0x7FF00000, 0x3FF00000, 0xBFF00000)   # pairwise disjoint: one misses the landing
_BOOT_CS, _BOOT_SS, _HOLDER_LDT = 0x08, 0x10, 0x08
_STUB_STEPS = 64


def _build_stub(s: Mapping[str, int], base: int) -> tuple[bytes, dict[int, int], list[str]]:
    """Stub code, the memory it needs ({address: byte}) and a label for each load step.

    Boot: LGDT a flat ring-0 GDT, far-JMP to its code, load its stack.  Then one step per
    register group: LGDT a GDT whose entry 1 is an LDT descriptor, LLDT it (or the null
    selector), LGDT the step's GDT, load.  A selector with TI = 1 is thereby found in a
    temporary LDT, one with TI = 0 in the temporary GDT, each at a slot that holds a
    descriptor encoding the state's cache.  The last step enters CS: far JMP at CPL 0 (SS was a
    step of its own), IRETD to an outer level otherwise (it loads CS and SS together).
    """
    cpl = s["cpl"]
    code_at, data, boot_gdt = base + _W_CODE, base + _W_DATA, base + _W_BOOT_GDT
    mem: dict[int, int] = {}
    put = layout.put
    put(mem, boot_gdt, bytes(8) + layout.descriptor(0, MASK32, layout.code_attr(0))
        + layout.descriptor(0, MASK32, layout.data_attr(0)))
    put(mem, data, _w16(3 * 8 - 1) + _d32(boot_gdt))
    put(mem, data + 0x08, _d32(code_at + 8 + 7) + _w16(_BOOT_CS))
    put(mem, data + 0x10, _w16(_BOOT_SS))
    put(mem, data + 0x14, _d32(base + _W_FRAME))
    code = _lgdt(data) + _jmp_far(data + 0x08) + _mov_sreg(_SREG_NUM["ss"], data + 0x10) \
        + _mov_esp(data + 0x14)
    assert len(code) == _BOOT_LEN

    def cache(seg: str) -> bytes:
        return layout.descriptor(s[f"{seg}_base"], s[f"{seg}_limit"], s[f"{seg}_attr"])

    def place(segs: list[str], anchor: int) -> int:
        """A table base that puts segs[0]'s entry at ``anchor``; the others follow by index."""
        table = (anchor - (s[segs[0]] & 0xFFF8)) & MASK32
        for seg in segs:
            if s[seg] & 0xFFFC:                       # a null selector reads no descriptor
                put(mem, (table + (s[seg] & 0xFFF8)) & MASK32, cache(seg))
        return table

    labels: list[str] = []

    def step(k: int, segs: list[str], load: bytes, label: str) -> None:
        nonlocal code
        rec = data + 0x40 * (k + 1)        # the step's record: GDTR, LDT selector, GDTR, operand
        in_ldt = [g for g in segs if s[g] & 4]
        in_gdt = [g for g in segs if not s[g] & 4]
        pair = len(segs) == 2
        if in_ldt:
            anchor = base + (_W_PAIR if pair and len(in_ldt) == 2 else _W_SLOTS + 16 * k + 8)
            holder = base + _W_HOLDERS + 0x10 * k
            put(mem, holder, bytes(8) + layout.descriptor(place(in_ldt, anchor), 0xFFFF,
                                                          layout.LDT_ATTR))
            put(mem, rec, _w16(0xF) + _d32(holder))
            put(mem, rec + 0x08, _w16(_HOLDER_LDT))
        else:
            put(mem, rec, _w16(3 * 8 - 1) + _d32(boot_gdt))
            put(mem, rec + 0x08, _w16(0))                 # LLDT 0: a null LDT, allowed
        if in_gdt:
            anchor = base + (_W_PAIR if pair and len(in_gdt) == 2 else _W_SLOTS + 16 * k)
            put(mem, rec + 0x10, _w16(0xFFFF) + _d32(place(in_gdt, anchor)))
        else:
            put(mem, rec + 0x10, _w16(3 * 8 - 1) + _d32(boot_gdt))
        code += _lgdt(rec) + _lldt(rec + 0x08) + _lgdt(rec + 0x10) + load
        labels.append(label)

    steps = [[g] for g in ("es", "ds", "fs", "gs")]
    if cpl == 0:
        steps += [["ss"], ["cs"]]
    else:
        steps += [["cs", "ss"]]
    late = _late_nulls(s)
    for n, g in enumerate(late):      # the selector rides in EAX/EBX across the IRETD
        # (loaded before the steps, which touch no register but the segment registers)
        at = data + 0x30 + 4 * n
        put(mem, at, _d32(s[g]))
        code += _mov_r32(_LATE_GPR[n], at)
    for k, segs in enumerate(steps):
        rec = data + 0x40 * (k + 1)
        if segs == ["cs"]:
            put(mem, rec + 0x20, _d32(s["eip"]) + _w16(s["cs"]))
            step(k, segs, _jmp_far(rec + 0x20), f"entering CS={s['cs']:#x} by far JMP at CPL 0")
        elif segs == ["cs", "ss"]:
            # IRETD to an outer level pops EIP, CS, EFLAGS, ESP, SS (SDM Vol. 2A IRET).
            frame = (s["eip"], s["cs"], 0x2, 0, s["ss"])
            put(mem, base + _W_FRAME, b"".join(_d32(v) for v in frame))
            step(k, segs, _IRETD, f"entering CS={s['cs']:#x} SS={s['ss']:#x} at CPL {cpl} by IRETD")
        else:
            g = segs[0]
            put(mem, rec + 0x18, _w16(s[g]))
            step(k, segs, _mov_sreg(_SREG_NUM[g], rec + 0x18),
                 f"loading {g.upper()}={s[g]:#x} with the state's cache")
    put(mem, code_at, code)
    # After IRETD, at the state's CS:EIP and CPL: MOV ES/DS from EAX/EBX (any CPL may load a
    # null selector).  These bytes are overwritten by the state's memory before any run.
    post = b"".join(_mov_sreg_r(_SREG_NUM[g], _LATE_GPR[n]) for n, g in enumerate(late))
    put(mem, s["cs_base"] + s["eip"], post)
    labels += [f"loading the null selector {s[g]:#x} into {g.upper()} at CPL {cpl}" for g in late]
    return code, mem, labels


def _seg_key(s: Mapping[str, int]) -> tuple:
    return (s["cpl"],) + tuple((s[r], s[f"{r}_base"], s[f"{r}_limit"], s[f"{r}_attr"])
                               for r in st.SREGS)


class Machine:
    """One Unicorn CPU that runs single instructions on concrete model states.

    ``run(state, code, mem=(), io=())`` -> ``Fault`` or ``Next``; ``load(state, code)`` and
    ``read(mem, io)`` are its two halves.  ``last`` holds the addresses the last run touched.
    """

    def __init__(self, *, max_iterations: int = 1 << 16, cached_configs: int = 256,
                 map_all: bool = True, rep_once: bool = False):
        """``map_all``: map the whole 4 GiB once (the host commits pages only when touched);
        if the host refuses, or with False, pages are mapped as they are first touched.
        ``memory_mode`` says which; the semantics are the same, the first is faster.
        ``rep_once``: a REP string instruction stops after its first iteration, with EIP on
        the instruction, as the model's REP forms describe one execution (``Exec.repeat``)."""
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.max_iterations = max_iterations
        self.rep_once = rep_once
        self._cached_configs = cached_configs
        self._mapped: set[int] = set()       # page numbers (on-demand mode)
        self._all_mapped = False
        self._dirty: set[int] = set()        # pages that may hold non-zero bytes
        self._known: dict[int, bytes] = {}   # page -> content, for pages not stored to since
        self._img: _Image | None = None
        self._configs: OrderedDict[tuple, object] = OrderedDict()
        self._segs_off = _calibrate(self.uc)
        self._reset = self.uc.context_save()
        self._probe = self.uc.context_save()
        self.last = Access()
        self.stats = {"runs": 0, "stubs": 0}
        self._mode = None                    # None | "stub" | "run"
        self._steps = 0
        self._vector: int | None = None
        self._stopped_early = False
        self._rep = False
        self._prefix_len = 0
        self._linear = 0
        self._pc = 0
        self._io_in: Mapping[int, int] = {}
        self._io_out: dict[int, int] = {}
        self._input: Mapping = {}
        self._code = b""
        uc = self.uc
        uc.hook_add(UC_HOOK_CODE, self._on_code)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        if map_all:
            try:
                uc.mem_map(0, 1 << 32, UC_PROT_ALL)
                self._all_mapped = True
            except UcError:
                pass            # e.g. strict overcommit: map on demand instead
        self.memory_mode = "4 GiB mapped" if self._all_mapped else "pages mapped on demand"
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write)
        uc.hook_add(UC_HOOK_MEM_READ, self._on_read)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)

    # --- hooks ------------------------------------------------------------------------------
    def _on_code(self, uc, address, size, _):
        """Called before each instruction: the second instruction of a run is never executed."""
        self._steps += 1
        if self._mode == "stub":
            # Unicorn checks ``until`` only while translating, so a block already cached at the
            # landing address would run on: stop here instead.
            if address == self._pc:
                uc.emu_stop()
            elif self._steps > _STUB_STEPS:
                self._stopped_early = True
                uc.emu_stop()
            return
        if self._steps == 1:
            return
        # A REP string instruction re-enters itself once per iteration (QEMU loops via a jump
        # back to the same EIP); anything else at this point is the next instruction.
        if address == self._pc and self._rep:
            if self.rep_once and self._count_left(uc):
                uc.emu_stop()       # one iteration done, more to go: EIP stays here
                return
            if self._steps <= self.max_iterations:
                return
            self._stopped_early = True
        uc.emu_stop()

    def _count_left(self, uc) -> bool:
        """(E)CX != 0: the count register by the instruction's address size."""
        ecx = uc.reg_read(X.UC_X86_REG_ECX)
        return bool(ecx & (0xFFFF if ASIZE in self._code[:self._prefix_len] else MASK32))

    def _on_intr(self, uc, intno, _):
        if self._vector is None:
            self._vector = intno
        uc.emu_stop()   # Unicorn does not deliver through the IDT; resuming would re-fault

    def _on_unmapped(self, uc, access, address, size, value, _):
        """Every byte of the 4 GiB space exists and reads 0 unless the state says otherwise."""
        first, last = (address & MASK32) >> 12, ((address + max(size, 1) - 1) & MASK32) >> 12
        for page in {first, last}:
            self._map(page)
        return True

    def _on_write(self, uc, access, address, size, value, _):
        for k in range(size):
            a = (address + k) & MASK32
            self._dirty.add(a >> 12)
            self._known.pop(a >> 12, None)
            if self._mode == "run":
                self.last.writes.add(a)

    def _on_read(self, uc, access, address, size, value, _):
        if self._mode == "run":
            for k in range(size):
                self.last.reads.add((address + k) & MASK32)

    def _on_in(self, uc, port, size, _):
        value = 0
        for k in range(size):
            p = (port + k) & 0xFFFF
            self.last.ports_in.add(p)
            value |= self._io_out.get(p, self._io_in.get(p, 0)) << (8 * k)
        return value

    def _on_out(self, uc, port, size, value, _):
        for k in range(size):
            p = (port + k) & 0xFFFF
            self.last.ports_out.add(p)
            self._io_out[p] = (value >> (8 * k)) & 0xFF

    # --- memory -----------------------------------------------------------------------------
    def _map(self, page: int) -> None:
        # The new page is zero, but it is not recorded in ``_known``: Unicorn calls the write
        # hook before the unmapped hook, so a store may already be on its way into it.
        if not self._all_mapped and page not in self._mapped:
            self.uc.mem_map(page << 12, PAGE, UC_PROT_ALL)
            self._mapped.add(page)

    def _write_pages(self, pages: Mapping[int, bytes]) -> None:
        """Make memory exactly ``pages`` (whole 4 KiB images) and zero elsewhere.

        ``_known`` remembers what each page holds; the write hook forgets a page the guest
        stores to, so only pages that really differ are written.
        """
        for page in self._dirty - pages.keys():
            if self._known.get(page) is not ZERO_PAGE:
                self.uc.mem_write(page << 12, ZERO_PAGE)
                self._known[page] = ZERO_PAGE
        for page, data in pages.items():
            self._map(page)
            known = self._known.get(page)
            if known is not data and known != data:
                self.uc.mem_write(page << 12, data)
                self._known[page] = data
        self._dirty = set(pages)

    def _image(self, mem: Mapping[int, int]) -> _Image:
        img = self._img
        if img is None or img.src != mem:
            img = self._img = _Image(mem)
        return img

    def _read_mem(self, img: _Image, extra: Iterable[int]) -> dict[int, int]:
        """Memory at the image's addresses, then at ``extra``.

        Only pages the guest stored to since ``load`` can differ from the image (the write hook
        records every store), so the rest is copied from the image instead of read back.
        """
        out = dict(img.src)
        stored = {a >> 12 for a in self.last.writes}
        if stored:
            for start, _, length in img.runs:
                if any(p in stored for p in range(start >> 12, ((start + length - 1) >> 12) + 1)):
                    out.update(zip(range(start, start + length), self._read_span(start, length)))
        for a in extra:
            out[a] = self._read_span(a, 1)[0]
        return out

    def _read_span(self, start: int, length: int) -> bytes:
        out = bytearray()
        while length:
            take = min(length, PAGE - (start & 0xFFF))
            if self._all_mapped or start >> 12 in self._mapped:
                out += self.uc.mem_read(start, take)
            else:
                out += bytes(take)
            start, length = (start + take) & MASK32, length - take
        return bytes(out)

    # --- the state ----------------------------------------------------------------------------
    def _config(self, s: Mapping[str, int]):
        """The saved context holding the state's CPL and segment caches (runs the stub once)."""
        key = _seg_key(s)
        ctx = self._configs.get(key)
        if ctx is not None:
            self._configs.move_to_end(key)
            return ctx
        ctx = self._run_stub(s)
        self._configs[key] = ctx
        if len(self._configs) > self._cached_configs:
            self._configs.popitem(last=False)
        return ctx

    def _run_stub(self, s: Mapping[str, int]):
        uc = self.uc
        if s["cpl"] and s["cs"] & 0xFFFC == s["ss"] & 0xFFFC:
            raise UnsupportedState(f"CS {s['cs']:#x} and SS {s['ss']:#x} name one descriptor but "
                                   "hold different caches; one IRETD cannot load both")
        # Unicorn compares ``until`` with QEMU's PC, CS.base + EIP *without* the 32-bit wrap
        # that linear addresses get; memory is addressed wrapped.
        pc = s["cs_base"] + s["eip"] + 2 * len(_late_nulls(s))
        landing = (s["cs_base"] + s["eip"]) & MASK32
        base = next(w for w in _WINDOWS
                    if not any(w <= (landing + k) & MASK32 < w + _W_SIZE for k in (0, 4)))
        code, mem, labels = _build_stub(s, base)
        code_at = base + _W_CODE
        self._write_pages(_Image(mem).pages)
        uc.ctl_remove_cache(code_at, code_at + len(code))
        if pc != s["cs_base"] + s["eip"]:        # the loads after IRETD are new code there
            uc.ctl_remove_cache(landing, min(landing + 4, 1 << 32))
        uc.context_restore(self._reset)
        self._pc = pc
        self._mode, self._steps, self._vector, self._stopped_early = "stub", 0, None, False
        self.stats["stubs"] += 1
        try:
            uc.emu_start(code_at, pc)          # reset CS has base 0: EIP = linear address
        except UcError as e:
            raise ImpossibleState(f"setting up the segments failed in Unicorn ({e}); "
                                  "no load sequence reaches these caches") from None
        finally:
            self._mode = None
        if self._vector is not None:
            eip = uc.reg_read(X.UC_X86_REG_EIP)
            late = len(_late_nulls(s))
            at = eip - code_at - _BOOT_LEN - 7 * late       # offset into the load steps
            if late and s["eip"] <= eip < s["eip"] + 2 * late:
                what = labels[len(labels) - late + (eip - s["eip"]) // 2]
            elif at < 0:
                what = "the stub's boot segments"
            else:
                what = labels[min(at // (_STEP_LEN + 7), len(labels) - late - 1)]
            raise ImpossibleState(f"{what} raises {vector_name(self._vector)}: no load sequence "
                                  "reaches these selector/cache pairs")
        if self._stopped_early or uc.reg_read(X.UC_X86_REG_EIP) != (pc - s["cs_base"]) & MASK32:
            raise UnsupportedState("the set-up stub did not reach the instruction")
        ctx = uc.context_save()
        got = self._caches(ctx)
        for name in ("cpl",) + tuple(f"{r}{suffix}" for r in st.SREGS
                                     for suffix in ("", "_base", "_limit", "_attr")):
            if got[name] != s[name]:
                raise UnsupportedState(f"after the segment set-up {name} is {got[name]:#x}, not "
                                       f"{s[name]:#x} (Unicorn cannot reach that cache)")
        return ctx

    def _caches(self, ctx) -> dict[str, int]:
        """CPL and the six segment caches, read from a saved context (see module docstring)."""
        ptr = ctypes.cast(ctx.context, ctypes.c_void_p).value
        raw = ctypes.string_at(ptr + self._segs_off - 8, 8 + 6 * _SEGCACHE.size)
        hflags = int.from_bytes(raw[:4], "little")
        out = {"cpl": hflags & 3}   # HF_CPL_MASK
        for i, r in enumerate(st.SREGS):
            sel, base, limit, flags = _SEGCACHE.unpack_from(raw, 8 + i * _SEGCACHE.size)
            out[r] = sel & 0xFFFF
            out[f"{r}_base"] = base & MASK32
            out[f"{r}_limit"] = limit & MASK32
            out[f"{r}_attr"] = (flags >> 8) & 0xF0FF   # QEMU keeps descriptor bits 32-63
        return out

    def load(self, state: Mapping, code: bytes = b"") -> None:
        """Put ``state`` on the CPU, with ``code`` at CS.base + EIP; ready to run one instruction."""
        s = check(state)
        if len(code) > 15:
            raise StateError(f"an instruction is at most 15 bytes, not {len(code)}")
        uc = self.uc
        ctx = self._config(s)
        uc.context_restore(ctx)
        uc.reg_write_batch([(r, s[name]) for name, r in _SCALAR_REGS] + [
            (X.UC_X86_REG_EFLAGS, (s["flags"] & st.USER_FLAGS_MASK)
             | (s["sysflags"] & st.SYS_FLAGS_MASK) | st.EFLAGS_FIXED),
            (X.UC_X86_REG_GDTR, (0, s["gdtr_base"], s["gdtr_limit"], 0)),
            (X.UC_X86_REG_IDTR, (0, s["idtr_base"], s["idtr_limit"], 0)),
            # LDTR/TR caches are written directly (Unicorn allows it); flags as LLDT/LTR leave them.
            (X.UC_X86_REG_LDTR, (s["ldtr"], s["ldtr_base"], s["ldtr_limit"],
                                 0 if s["ldtr"] & 0xFFFC == 0 else layout.LDT_ATTR << 8)),
            (X.UC_X86_REG_TR, (s["tr"], s["tr_base"], s["tr_limit"], _tr_to_qemu(s["tr_attr"]) << 8)),
        ])
        for name, msr in MSRS.items():
            uc.msr_write(msr, s[name])
        self._load_fpu(s)

        linear = (s["cs_base"] + s["eip"]) & MASK32
        img = self._image(s["mem"])
        pages = dict(img.pages)
        patched: dict[int, bytearray] = {}
        for k, b in enumerate(code):
            a = (linear + k) & MASK32
            old = img.src.get(a)
            if old is not None and old != b:
                raise StateError(f"mem[{a:#x}] = {old:#x} but the instruction byte there is {b:#x}")
            page = a >> 12
            if page not in patched:
                patched[page] = bytearray(pages.get(page, ZERO_PAGE))
            patched[page][a & 0xFFF] = b
        pages.update((page, bytes(buf)) for page, buf in patched.items())
        self._write_pages(pages)
        if code:
            end = linear + len(code)
            uc.ctl_remove_cache(linear, min(end, 1 << 32))
            if end > 1 << 32:
                uc.ctl_remove_cache(0, end & MASK32)
        self.last = Access()
        self._input = s
        self._code = bytes(code)
        self._linear = linear
        self._pc = s["cs_base"] + s["eip"]   # what Unicorn's hooks and ``until`` see (no wrap)
        self._io_in = s["io"]
        self._io_out = {}

    def _load_fpu(self, s: Mapping[str, int]) -> None:
        load_user(self.uc, s)

    def _read_fpu(self, out: dict) -> None:
        out.update(read_user(self.uc, self._input))

    def read(self, mem: Iterable[int] = (), io: Iterable[int] = ()) -> dict:
        """The CPU's state in the model's concrete format; ``mem`` at the state's own addresses,
        those the last run touched and ``mem``; ``io`` likewise."""
        if not self._input:
            raise StateError("no state loaded")
        uc = self.uc
        vals = uc.reg_read_batch(_READ_IDS)
        out: dict = {name: v & MASK32 for (name, _), v in zip(_SCALAR_REGS, vals)}
        eflags = vals[len(_SCALAR_REGS)]
        gdtr, idtr, ldtr, tr = vals[len(_SCALAR_REGS) + 1:]
        out["flags"] = eflags & st.USER_FLAGS_MASK
        out["sysflags"] = eflags & st.SYS_FLAGS_MASK
        out.update(gdtr_base=gdtr[1] & MASK32, gdtr_limit=gdtr[2] & 0xFFFF,
                   idtr_base=idtr[1] & MASK32, idtr_limit=idtr[2] & 0xFFFF,
                   ldtr=ldtr[0] & 0xFFFF, ldtr_base=ldtr[1] & MASK32, ldtr_limit=ldtr[2] & MASK32,
                   tr=tr[0] & 0xFFFF, tr_base=tr[1] & MASK32, tr_limit=tr[2] & MASK32,
                   tr_attr=_tr_from_qemu((tr[3] >> 8) & 0xF0FF))
        uc.context_update(self._probe)
        out.update(self._caches(self._probe))
        for name, msr in MSRS.items():
            out[name] = uc.msr_read(msr) & ((1 << st.FIELD[name].width) - 1)
        self._read_fpu(out)
        s = self._input
        for name in NOT_HELD:
            out[name] = s.get(name, st.FIELD[name].default)
        out["halted"] = s.get("halted", 0)
        out["mem"] = self._read_mem(self._image(s["mem"]), sorted(
            self.last.writes | self.last.reads | set(mem)))
        ports = set(s.get("io", {})) | self.last.ports_in | self.last.ports_out | set(io)
        out["io"] = {p: self._io_out.get(p, self._io_in.get(p, 0)) for p in sorted(ports)}
        return {name: out[name] for name in st.SCALARS} | {"mem": out["mem"], "io": out["io"]}

    def run(self, state: Mapping, code: bytes, *, mem: Iterable[int] = (), io: Iterable[int] = ()):
        """Run the one instruction ``code`` at CS.base + EIP of ``state``: ``Fault`` or ``Next``.

        ``Next.state`` holds every scalar field, ``mem`` at the state's addresses, the bytes the
        instruction read or wrote and ``mem``; ``io`` likewise.
        """
        if not code:
            raise StateError("no instruction bytes")
        self.load(state, code)
        return self.step(mem=mem, io=io)

    def step(self, *, mem: Iterable[int] = (), io: Iterable[int] = ()):
        """Run the loaded instruction from the CPU's *current* state, without restoring it first
        (``run`` restores; calling ``step`` twice shows Unicorn's sticky exception state)."""
        uc, code = self.uc, self._code
        if not code:
            raise StateError("no instruction loaded")
        i = 0
        while i < len(code) and code[i] in _PREFIXES:
            i += 1
        self._rep = any(b in (0xF2, 0xF3) for b in code[:i])
        self._prefix_len = i
        halts = i < len(code) and code[i] == _HLT
        self._mode, self._steps, self._vector, self._stopped_early = "run", 0, None, False
        self.stats["runs"] += 1
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        try:
            uc.emu_start(eip, self._pc + len(code))
        except UcError as e:
            if e.errno == UC_ERR_INSN_INVALID:
                return Fault(UD, None, "Unicorn: invalid instruction (UC_ERR_INSN_INVALID)")
            raise MachineError(f"Unicorn stopped the instruction with {e}") from None
        finally:
            self._mode = None
            if uc.reg_read(X.UC_X86_REG_CR0) & _PG:
                # The run turned paging on (states never start with it).  QEMU's TLB and its
                # translated blocks now hold what was translated through the state's page
                # tables, and context_restore drops neither: later runs, the set-up stub's
                # included, would execute them (found by ``pgvirt crosscheck``: the stub failed
                # after a MOV CR0 that set PG).  Drop both.
                uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
                uc.ctl_flush_tb()
        if self._vector is not None:
            at = uc.reg_read(X.UC_X86_REG_EIP)
            where = "at the instruction" if at == eip else f"with EIP={at:#x}"
            return Fault(self._vector, None, f"Unicorn raised {vector_name(self._vector)} {where}")
        if self._stopped_early and self._rep:
            raise IncompleteRun(f"REP string instruction still running after {self.max_iterations} "
                                "iterations")
        out = self.read(mem, io)
        # Unicorn reports a halt exactly like reaching ``until`` (both end in QEMU's HLT helper),
        # so HLT (F4, the only halting IA-32 instruction here) is recognised by its opcode.
        if halts and out["eip"] == (eip + len(code)) & MASK32:
            out["halted"] = 1
        if out["dr7"] & 0xFF:
            self._disarm(out)
        return Next(out)

    def _disarm(self, out: Mapping) -> None:
        """Remove the breakpoints a MOV DR7 just armed (found by ``pgvirt crosscheck``).

        QEMU keeps armed DR0-DR3 breakpoints in CPUState lists that ``context_restore`` does not
        touch, so they would fire (#DB) in later runs of unrelated states.  Only a CPL-0 MOV DR7
        arms them (states with enabled breakpoints are refused), so the CPU is at CPL 0 here: run
        MOV DR7, EAX with the enable bits clear at the current CS:EIP, then put back the bytes
        it borrowed (memory is as ``read`` saw it).
        """
        uc = self.uc
        mov_dr7_eax = b"\x0f\x23\xf8"
        pc = out["cs_base"] + out["eip"]
        at = pc & MASK32
        if at + len(mov_dr7_eax) > 1 << 32 or out["cpl"] != 0:
            raise MachineError("armed debug registers at a place they cannot be disarmed from")
        self._map(at >> 12)
        self._map((at + len(mov_dr7_eax) - 1) >> 12)
        saved = bytes(uc.mem_read(at, len(mov_dr7_eax)))
        regs = uc.reg_read_batch([X.UC_X86_REG_EAX, X.UC_X86_REG_EIP])
        uc.mem_write(at, mov_dr7_eax)
        uc.ctl_remove_cache(at, at + len(mov_dr7_eax))
        uc.reg_write(X.UC_X86_REG_EAX, out["dr7"] & ~0xFF & MASK32)
        self._mode, self._steps, self._vector = "run", 0, None
        try:
            uc.emu_start(regs[1], pc + len(mov_dr7_eax))
        finally:
            self._mode = None
            uc.mem_write(at, saved)
            uc.ctl_remove_cache(at, at + len(mov_dr7_eax))
        if self._vector is not None or uc.reg_read(X.UC_X86_REG_DR7) & 0xFF:
            raise MachineError("MOV DR7 did not disarm the breakpoints the last run armed")

    # --- probes of Unicorn's API itself (for ``deviations``) ------------------------------------
    def msr_roundtrip(self, msr: int, value: int) -> int:
        """WRMSR then RDMSR of ``msr`` through the API, which runs QEMU's own WRMSR/RDMSR
        helpers (unicorn.c x86_msr_write/read); the next ``run`` restores the CPU."""
        self.uc.msr_write(msr, value)
        return self.uc.msr_read(msr)


def error_codes_observable() -> bool:
    """Whether Unicorn's API can report an exception's error code: the UC_HOOK_INTR callback
    has more than (uc, intno, user_data), or some register constant names one."""
    intr_args = len(unicorn_py3.unicorn.HOOK_INTR_CFUNC._argtypes_)
    named = any("ERR" in n for n in dir(X) if n.startswith("UC_X86_REG_"))
    return intr_args != 3 or named


# TR's cache: the SDM's processor keeps the busy type a TSS gets when it is loaded (LTR, task
# switch); QEMU keeps the *available* type there (its LTR marks only the GDT entry busy) and reads
# TR with that convention: get_ss_esp_from_tss calls cpu_abort() - killing the process - on a
# busy type, so any call gate to an inner ring aborted (found by ``pgvirt crosscheck``).  The
# Machine therefore hands QEMU TR in QEMU's convention and reads it back in the SDM's: busy bit
# (type bit 1) cleared on the way in, set on the way out, for the TSS types 1/3 and 9/B.
def _tr_to_qemu(attr: int) -> int:
    return attr & ~0x2 if _is_tss(attr) else attr


def _tr_from_qemu(attr: int) -> int:
    return attr | 0x2 if _is_tss(attr) else attr


class Watchdog:
    """Bounds a Machine's runs in wall-clock time, besides the Machine's own instruction bound
    (its code hook stops before a second instruction; REP loops stop at ``max_iterations``).

    Unicorn's own ``emu_start(timeout=...)`` starts a timer thread per run (about 170 us, more
    than the run itself), so one long-lived thread checks a deadline instead and calls
    ``emu_stop`` when a run outlives it (Unicorn releases the GIL while it emulates); the run
    then raises ``IncompleteRun`` instead of returning a half-executed result.
    """

    def __init__(self, machine: Machine, seconds: float = 2.0):
        import threading
        self.m, self.seconds = machine, seconds
        self.deadline: float | None = None
        self.fired = False
        self._thread = threading.Thread(target=self._loop, name="pgvirt-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(max(self.seconds / 4, 0.01))
            d = self.deadline
            if d is not None and time.monotonic() > d:
                self.fired = True
                try:
                    self.m.uc.emu_stop()
                except Exception:   # not running any more: nothing to stop
                    pass

    def run(self, state, code: bytes, **kw):
        self.fired = False
        self.deadline = time.monotonic() + self.seconds
        try:
            out = self.m.run(state, code, **kw)
        finally:
            self.deadline = None
        if self.fired:
            raise IncompleteRun(f"the run took longer than {self.seconds} s and was stopped")
        return out
