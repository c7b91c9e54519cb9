"""AMD SVM: the VMCB intercepts a monitor sets for a 32-bit guest, as data, with the consistency
checks VMRUN makes on them.

Citations are to the AMD64 Architecture Programmer's Manual Vol. 2 (APM), chapter 15 "Secure
Virtual Machine": 15.5.1 (VMRUN and its consistency checks), 15.7-15.14 (the intercepts: CR and
DR accesses 15.9, instructions 15.10-15.12, exceptions 15.12, I/O 15.10.1 with the IOPM, MSRs
15.11 with the MSRPM), 15.30 (TSC offset), and Appendix B (the VMCB layout, Table B-1, and the
exit codes, Table C-1 / Appendix C).

``Intercepts`` is one configuration; ``load`` reads one from JSON and refuses, in one line naming
the rule, an unknown intercept, a reserved bit or a combination VMRUN rejects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

_B = "APM Vol. 2 Table B-1 (VMCB offset {:03X}h)"


@dataclass(frozen=True)
class Intercept:
    name: str
    word: int         # the intercept vector's VMCB offset: 0x00C or 0x010 (0x014: INVPCID...)
    bit: int
    exit_code: int    # SVM exit code (APM Vol. 2 Appendix C)
    doc: str

    @property
    def cite(self) -> str:
        return _B.format(self.word)


def _i(word: int, bit: int, name: str, code: int, doc: str) -> Intercept:
    return Intercept(name, word, bit, code, doc)


INTERCEPTS: dict[str, Intercept] = {i.name: i for i in (
    _i(0x00C, 0, "intr", 0x60, "physical INTR"), _i(0x00C, 1, "nmi", 0x61, "physical NMI"),
    _i(0x00C, 2, "smi", 0x62, "physical SMI"), _i(0x00C, 3, "init", 0x63, "INIT"),
    _i(0x00C, 4, "vintr", 0x64, "virtual interrupt"),
    _i(0x00C, 5, "cr0_selective_write", 0x65, "writes of CR0 that change bits other than TS and MP"),
    _i(0x00C, 6, "idtr_read", 0x66, "SIDT"), _i(0x00C, 7, "gdtr_read", 0x67, "SGDT"),
    _i(0x00C, 8, "ldtr_read", 0x68, "SLDT"), _i(0x00C, 9, "tr_read", 0x69, "STR"),
    _i(0x00C, 10, "idtr_write", 0x6A, "LIDT"), _i(0x00C, 11, "gdtr_write", 0x6B, "LGDT"),
    _i(0x00C, 12, "ldtr_write", 0x6C, "LLDT"), _i(0x00C, 13, "tr_write", 0x6D, "LTR"),
    _i(0x00C, 14, "rdtsc", 0x6E, "RDTSC"), _i(0x00C, 15, "rdpmc", 0x6F, "RDPMC"),
    _i(0x00C, 16, "pushf", 0x70, "PUSHF"), _i(0x00C, 17, "popf", 0x71, "POPF"),
    _i(0x00C, 18, "cpuid", 0x72, "CPUID"), _i(0x00C, 19, "rsm", 0x73, "RSM"),
    _i(0x00C, 20, "iret", 0x74, "IRET"), _i(0x00C, 21, "intn", 0x75, "INT n"),
    _i(0x00C, 22, "invd", 0x76, "INVD"), _i(0x00C, 23, "pause", 0x77, "PAUSE"),
    _i(0x00C, 24, "hlt", 0x78, "HLT"), _i(0x00C, 25, "invlpg", 0x79, "INVLPG"),
    _i(0x00C, 26, "invlpga", 0x7A, "INVLPGA"),
    _i(0x00C, 27, "ioio_prot", 0x7B, "IN/OUT/INS/OUTS through the I/O permissions map"),
    _i(0x00C, 28, "msr_prot", 0x7C, "RDMSR/WRMSR through the MSR permissions map"),
    _i(0x00C, 29, "task_switch", 0x7D, "task switches"),
    _i(0x00C, 30, "ferr_freeze", 0x7E, "FERR_FREEZE"), _i(0x00C, 31, "shutdown", 0x7F, "shutdown"),
    _i(0x010, 0, "vmrun", 0x80, "VMRUN"), _i(0x010, 1, "vmmcall", 0x81, "VMMCALL"),
    _i(0x010, 2, "vmload", 0x82, "VMLOAD"), _i(0x010, 3, "vmsave", 0x83, "VMSAVE"),
    _i(0x010, 4, "stgi", 0x84, "STGI"), _i(0x010, 5, "clgi", 0x85, "CLGI"),
    _i(0x010, 6, "skinit", 0x86, "SKINIT"), _i(0x010, 7, "rdtscp", 0x87, "RDTSCP"),
    _i(0x010, 8, "icebp", 0x88, "INT1 (ICEBP)"), _i(0x010, 9, "wbinvd", 0x89, "WBINVD and WBNOINVD"),
    _i(0x010, 10, "monitor", 0x8A, "MONITOR and MONITORX"),
    _i(0x010, 11, "mwait", 0x8B, "MWAIT and MWAITX, unconditionally"),
    _i(0x010, 12, "mwait_armed", 0x8C, "MWAIT and MWAITX when the monitor hardware is armed"),
    _i(0x010, 13, "xsetbv", 0x8D, "XSETBV"), _i(0x010, 14, "rdpru", 0x8E, "RDPRU"),
    _i(0x014, 2, "invpcid", 0xA2, "INVPCID"),
)}
WORDS = (0x00C, 0x010, 0x014)

# Exit codes of the CR/DR and exception intercepts (Appendix C): CRn read 0x00+n, write 0x10+n,
# DRn read 0x20+n, write 0x30+n, exception vector v 0x40+v.
EXIT_READ_CR, EXIT_WRITE_CR, EXIT_READ_DR, EXIT_WRITE_DR, EXIT_EXCP = 0x00, 0x10, 0x20, 0x30, 0x40
EXIT_NPF = 0x400
EFER_SVME = 1 << 12


class InterceptsError(ValueError):
    """A VMCB configuration VMRUN would reject, or a file this tool cannot read (one line)."""


@dataclass(frozen=True)
class Intercepts:
    """One VMCB configuration: the CR/DR read and write intercepts (bit n: CRn/DRn), the
    exception intercepts (bit v: vector v), the instruction intercept vectors, the I/O and MSR
    permission maps (ports and MSRs whose accesses exit), nested paging, the TSC offset."""

    cr_read: int = 0
    cr_write: int = 0
    dr_read: int = 0
    dr_write: int = 0
    exceptions: int = 0
    vectors: tuple[int, int, int] = (0, 0, 0)      # VMCB 00Ch, 010h, 014h
    io_exits: frozenset[int] = frozenset()         # ports with their IOPM bit set
    msr_read_exits: frozenset[int] = frozenset()   # MSRs with their MSRPM read bit set
    msr_write_exits: frozenset[int] = frozenset()
    nested_paging: bool = False
    tsc_offset: int = 0
    asid: int = 1
    name: str = "custom"

    def on(self, intercept: str) -> bool:
        i = INTERCEPTS[intercept]
        return bool(self.vectors[WORDS.index(i.word)] >> i.bit & 1)

    def cr(self, n: int, write: bool) -> bool:
        return bool((self.cr_write if write else self.cr_read) >> n & 1)

    def dr(self, n: int, write: bool) -> bool:
        return bool((self.dr_write if write else self.dr_read) >> n & 1)

    def exception_exit(self, vector: int, reason: str, code=None):
        """(the #VMEXIT a fault with ``vector`` becomes under the exception intercepts, True), or
        (None, False) (APM Vol. 2 15.12: SVM has no error-code filter; ``code`` plays no part)."""
        if not self.exceptions >> vector & 1:
            return None, False
        from .outcome import Exit
        return Exit("svm", f"excp{vector}", EXIT_EXCP + vector, None,
                    f"{reason}; the exception {vector} intercept is set"), True

    def without(self, what: str) -> "Intercepts":
        """This configuration without one intercept: an instruction intercept by name, or
        ``cr3_read``-style names for the CR/DR ones, ``exception_13`` for an exception."""
        if what in INTERCEPTS:
            i = INTERCEPTS[what]
            k = WORDS.index(i.word)
            v = list(self.vectors)
            v[k] &= ~(1 << i.bit)
            return replace(self, vectors=tuple(v), name=f"{self.name} without {what}")
        kind, _, n = what.rpartition("_")
        if what.startswith(("cr", "dr")) and what[2:].split("_")[0].isdigit():
            reg, rw = what.split("_", 1)
            attr = f"{reg[:2]}_{rw}"
            return replace(self, **{attr: getattr(self, attr) & ~(1 << int(reg[2:]))},
                           name=f"{self.name} without {what}")
        if kind == "exception" and n.isdigit():
            return replace(self, exceptions=self.exceptions & ~(1 << int(n)), name=f"{self.name} without {what}")
        raise KeyError(f"unknown intercept {what!r}")

    def as_json(self) -> dict:
        return {"name": self.name, "intercepts": {n: self.on(n) for n in INTERCEPTS},
                "cr_read": f"{self.cr_read:#06x}", "cr_write": f"{self.cr_write:#06x}",
                "dr_read": f"{self.dr_read:#06x}", "dr_write": f"{self.dr_write:#06x}",
                "exceptions": f"{self.exceptions:#010x}", "nested_paging": self.nested_paging,
                "iopm_ports": "all" if len(self.io_exits) == 1 << 16 else sorted(self.io_exits),
                "msr_read_exits": [f"{m:#x}" for m in sorted(self.msr_read_exits)],
                "msr_write_exits": [f"{m:#x}" for m in sorted(self.msr_write_exits)],
                "tsc_offset": f"{self.tsc_offset:#x}", "asid": self.asid}


def _vectors(names) -> tuple[int, int, int]:
    v = [0, 0, 0]
    for n in names:
        i = INTERCEPTS[n]
        v[WORDS.index(i.word)] |= 1 << i.bit
    return tuple(v)   # type: ignore[return-value]


MSRS_OF_THE_MODEL = (0x10, 0x174, 0x175, 0x176, 0xC0000080, 0xC0000103)   # + EFER

# The documented default for a 32-bit guest with nested paging: every instruction intercept the
# APM offers for state the guest does not own, CR3 accesses left to the guest (nested paging
# gives it its own), CR0 writes that change more than TS/MP intercepted, all ports and MSRs.
DEFAULT = Intercepts(
    cr_read=0, cr_write=0,
    vectors=_vectors(["intr", "nmi", "smi", "init", "cr0_selective_write", "rdpmc", "cpuid", "rsm",
                      "invd", "hlt", "invlpga", "ioio_prot", "msr_prot", "task_switch", "shutdown",
                      "vmrun", "vmmcall", "vmload", "vmsave", "stgi", "clgi", "skinit", "wbinvd",
                      "monitor", "mwait", "xsetbv", "rdpru", "rdtsc", "rdtscp"]),
    io_exits=frozenset(range(1 << 16)),
    msr_read_exits=frozenset(MSRS_OF_THE_MODEL), msr_write_exits=frozenset(MSRS_OF_THE_MODEL),
    nested_paging=True, name="default")


def check(c: Intercepts) -> Intercepts:
    """``c`` if VMRUN accepts it; else InterceptsError naming the rule (APM Vol. 2 15.5.1)."""
    for name in ("cr_read", "cr_write", "dr_read", "dr_write"):
        v = getattr(c, name)
        if not 0 <= v < 1 << 16:
            raise InterceptsError(f"{name} {v:#x}: the CR/DR intercepts are 16 bits (Table B-1)")
    if not 0 <= c.exceptions < 1 << 32:
        raise InterceptsError(f"exceptions {c.exceptions:#x} is not a 32-bit vector (Table B-1)")
    for k, w in enumerate(WORDS):
        defined = sum(1 << i.bit for i in INTERCEPTS.values() if i.word == w)
        bad = c.vectors[k] & ~defined
        if bad:
            raise InterceptsError(f"reserved bit(s) {', '.join(str(b) for b in range(32) if bad >> b & 1)}"
                                  f" of the intercept vector at VMCB {w:03X}h set (Table B-1: reserved, SBZ)")
    if not c.on("vmrun"):
        raise InterceptsError("the VMRUN intercept is clear: VMRUN fails with VMEXIT_INVALID "
                              "(APM Vol. 2 15.5.1, consistency checks)")
    if c.asid == 0:
        raise InterceptsError("ASID 0 is the host's: VMRUN fails with VMEXIT_INVALID (APM Vol. 2 15.5.1)")
    if any(not 0 <= p < 1 << 16 for p in c.io_exits):
        raise InterceptsError("the IOPM covers ports 0-0xFFFF only (APM Vol. 2 15.10.1)")
    for what, msrs in (("read", c.msr_read_exits), ("write", c.msr_write_exits)):
        for m in msrs:
            if not (0 <= m <= 0x1FFF or 0xC0000000 <= m <= 0xC0001FFF or 0xC0010000 <= m <= 0xC0011FFF):
                raise InterceptsError(f"MSR {m:#x} is outside the MSRPM's ranges: its {what}s always "
                                      "exit (APM Vol. 2 15.11)")
    return c


KEYS = ("name", "base", "intercepts", "cr_read", "cr_write", "dr_read", "dr_write", "exceptions",
        "iopm_ports", "msr_read_exits", "msr_write_exits", "nested_paging", "tsc_offset", "asid")


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise InterceptsError(f"{where}: expected a number, got {v!r}")
    try:
        return int(v, 0) if isinstance(v, str) else v
    except ValueError:
        raise InterceptsError(f"{where}: {v!r} is not a number") from None


def from_json(doc: Mapping, where: str = "controls") -> Intercepts:
    """A configuration from JSON: ``{"intercepts": {"pushf": true, ...}}`` on top of nothing or of
    ``"base": "default"``, the CR/DR/exception vectors as numbers, the maps as lists (or "all")."""
    if not isinstance(doc, Mapping):
        raise InterceptsError(f"{where}: expected a JSON object")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise InterceptsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    base = doc.get("base")
    if base not in (None, "default"):
        raise InterceptsError(f"{where}: base {base!r}: the only base is \"default\"")
    c = DEFAULT if base == "default" else Intercepts(vectors=_vectors(["vmrun"]))
    changes: dict[str, Any] = {"name": str(doc.get("name", "custom"))}
    if "intercepts" in doc:
        ints = doc["intercepts"]
        if not isinstance(ints, Mapping):
            raise InterceptsError(f"{where}: intercepts must map names to true/false")
        v = list(c.vectors)
        for n, on in ints.items():
            i = INTERCEPTS.get(n)
            if i is None:
                close = [k for k in INTERCEPTS if n.split("_")[0] in k][:3]
                raise InterceptsError(f"{where}: unknown intercept {n!r}"
                                      + (f" (did you mean {', '.join(close)}?)" if close else ""))
            if not isinstance(on, bool):
                raise InterceptsError(f"{where}: intercepts.{n} must be true or false")
            k = WORDS.index(i.word)
            v[k] = v[k] | (1 << i.bit) if on else v[k] & ~(1 << i.bit)
        changes["vectors"] = tuple(v)
    for k in ("cr_read", "cr_write", "dr_read", "dr_write", "exceptions", "tsc_offset", "asid"):
        if k in doc:
            changes[k] = _int(doc[k], f"{where}: {k}")
    if "nested_paging" in doc:
        if not isinstance(doc["nested_paging"], bool):
            raise InterceptsError(f"{where}: nested_paging must be true or false")
        changes["nested_paging"] = doc["nested_paging"]
    if "iopm_ports" in doc:
        p = doc["iopm_ports"]
        if p == "all":
            changes["io_exits"] = frozenset(range(1 << 16))
        elif isinstance(p, list):
            changes["io_exits"] = frozenset(_int(x, f"{where}: iopm_ports") for x in p)
        else:
            raise InterceptsError(f"{where}: iopm_ports must be a list of ports or \"all\"")
    for k in ("msr_read_exits", "msr_write_exits"):
        if k in doc:
            if not isinstance(doc[k], list):
                raise InterceptsError(f"{where}: {k} must be a list of MSR numbers")
            changes[k] = frozenset(_int(x, f"{where}: {k}") for x in doc[k])
    return check(replace(c, **changes))


def load(path: str) -> Intercepts:
    from .files import InputError, read_regular

    try:
        doc = json.loads(read_regular(path, "controls file", 1 << 20))
    except InputError as e:
        raise InterceptsError(str(e)) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InterceptsError(f"{path}: not JSON ({str(e).splitlines()[0][:100]})") from None
    return from_json(doc, path)


check(DEFAULT)
