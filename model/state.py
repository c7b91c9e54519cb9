"""IA-32 protected-mode machine state as Z3 terms (SDM Vol. 1 ch. 3, Vol. 3A ch. 2-3).

Every field carries a tag that says who owns it under a trap-and-emulate monitor:

* ``USER``  - what a guest reads and writes directly: general registers, EIP, the arithmetic
  flags, the visible segment selectors, the x87/MMX, SSE/AVX and AVX-512 registers and memory.
  Popek and Goldberg's *E* and *P*.
* ``SYSTEM`` - what the monitor must own: CPL, the system EFLAGS bits, the hidden descriptor
  caches, GDTR/IDTR/LDTR/TR, control and debug registers, MSRs, I/O ports.  Their *M* and *R*.

Which SYSTEM fields form the *mode* and which the *relocation* is decided by a profile (the host
settings a monitor imposes); see ``pgvirt.model.profiles``.

A state is a frozen record; ``replace`` makes the next one.  Concrete states are plain dicts of
integers (``mem``/``io`` are ``{address: byte}``), the format witnesses, replays and the emulator share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import z3
from z3.z3 import _to_expr_ref   # the wrapper z3.substitute returns its result in

USER = "user"
SYSTEM = "system"

SREGS = ("es", "cs", "ss", "ds", "fs", "gs")  # ModRM.reg encoding order (SDM Vol. 2A 3.1.1.1)
GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")

# EFLAGS (SDM Vol. 1 3.4.3): arithmetic flags and DF are the guest's, the rest the monitor's.
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0, 2, 4, 6, 7, 8, 9, 10, 11
IOPL_LO, NT, RF, VM, AC, VIF, VIP, ID = 12, 14, 16, 17, 18, 19, 20, 21
USER_FLAGS_MASK = (1 << CF) | (1 << PF) | (1 << AF) | (1 << ZF) | (1 << SF) | (1 << DF) | (1 << OF)
SYS_FLAGS_MASK = ((1 << TF) | (1 << IF) | (3 << IOPL_LO) | (1 << NT) | (1 << RF) | (1 << VM)
                  | (1 << AC) | (1 << VIF) | (1 << VIP) | (1 << ID))
EFLAGS_FIXED = 1 << 1  # bit 1 always reads as 1

# CR0 / CR4 bits used by the semantics (SDM Vol. 3A 2.5).
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = (
    0, 1, 2, 3, 4, 5, 16, 18, 29, 30, 31)
CR0_DEFINED = sum(1 << b for b in (CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE, CR0_WP,
                                   CR0_AM, CR0_NW, CR0_CD, CR0_PG))
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE, CR4_MCE, CR4_PGE, CR4_PCE = range(9)
CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_UMIP = 9, 10, 11
CR4_VMXE, CR4_SMXE, CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE = 13, 14, 16, 17, 18
CR4_SMEP, CR4_SMAP, CR4_PKE, CR4_CET = 20, 21, 22, 23
CR4_DEFINED = (1 << 12) - 1  # the IA-32 bits up to UMIP; the later ones only with their feature
# CR4 bits that exist only on a processor with the feature (SDM Vol. 3A 2.5).
CR4_FEATURE_BITS = {CR4_UMIP: "umip", CR4_VMXE: "vmx", CR4_SMXE: "smx", CR4_FSGSBASE: "fsgsbase",
                    CR4_PCIDE: "pcid", CR4_OSXSAVE: "xsave", CR4_SMEP: "smep", CR4_SMAP: "smap",
                    CR4_PKE: "pku", CR4_CET: "cet_ss"}

# XCR0 state components (SDM Vol. 1 13.1): x87, SSE, AVX, MPX (2 bits), AVX-512 (3 bits).
XCR0_X87, XCR0_SSE, XCR0_AVX, XCR0_BNDREGS, XCR0_BNDCSR = 0, 1, 2, 3, 4
XCR0_OPMASK, XCR0_ZMM_HI256, XCR0_HI16_ZMM = 5, 6, 7
XCR0_AVX512 = (1 << XCR0_OPMASK) | (1 << XCR0_ZMM_HI256) | (1 << XCR0_HI16_ZMM)

FPRS = tuple(f"fpr{i}" for i in range(8))     # x87 physical registers R0-R7 (ST(i) = R[(TOP+i) % 8])
ZMMS = tuple(f"zmm{i}" for i in range(8))     # XMMi/YMMi are the low 128/256 bits
KREGS = tuple(f"k{i}" for i in range(8))
FSW_TOP_LO = 11                               # FSW bits 13:11 hold TOP (SDM Vol. 1 8.1.3)


def cr4_defined(features) -> int:
    """The CR4 bits a processor with ``features`` defines; every other bit is reserved."""
    mask = CR4_DEFINED & ~(1 << CR4_UMIP)
    for b, f in CR4_FEATURE_BITS.items():
        if f in features:
            mask |= 1 << b
    return mask


def xcr0_supported(features) -> int:
    """XCR0 bits this processor supports (SDM Vol. 1 13.3; CPUID.(EAX=0DH,ECX=0))."""
    if "xsave" not in features:
        return 1 << XCR0_X87
    bits = (1 << XCR0_X87) | (1 << XCR0_SSE)
    if "avx" in features:
        bits |= 1 << XCR0_AVX
        if "avx512f" in features:
            bits |= XCR0_AVX512
    if "mpx" in features:
        bits |= (1 << XCR0_BNDREGS) | (1 << XCR0_BNDCSR)
    return bits


# IA32_XSS bits the model's processors support (SDM Vol. 1 13.3; CPUID.(EAX=0DH,ECX=1):ECX): none,
# they have no supervisor state component (no Processor Trace; CET disabled), so IA32_XSS is 0.
XSS_SUPPORTED = 0


# IA32_EFER (MSR C0000080H; SDM Vol. 4 Table 2-2, AMD APM Vol. 2 3.1.7): SCE with AMD's
# legacy-mode SYSCALL, SVME with SVM.  LME/LMA/NXE belong to IA-32e mode and paging, which the
# model's states do not use; they stay 0.
MSR_EFER, MSR_STAR = 0xC0000080, 0xC0000081
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME = 0, 8, 10, 11, 12


def efer_defined(features) -> int:
    return ((1 << EFER_SCE) if "syscall" in features else 0) | \
        ((1 << EFER_SVME) if "svm" in features else 0)


def has_efer(features) -> bool:
    """IA32_EFER exists (RDMSR/WRMSR of C0000080H) on the processors the model gives it to."""
    return "syscall" in features or "svm" in features

MSR_TSC, MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x10, 0x174, 0x175, 0x176


@dataclass(frozen=True)
class Field:
    name: str
    width: int          # bits; 0 for byte arrays
    owner: str          # USER or SYSTEM
    doc: str
    index_width: int = 0  # for arrays: address width
    default: int = 0      # the value of a scalar a concrete state leaves out (its reset value where 0 is not legal)


def _fields() -> tuple[Field, ...]:
    out: list[Field] = []
    for r in GPRS:
        out.append(Field(r, 32, USER, "general register"))
    out.append(Field("eip", 32, USER, "instruction pointer (offset in CS)"))
    out.append(Field("flags", 32, USER, "EFLAGS arithmetic bits CF PF AF ZF SF DF OF"))
    out.append(Field("sysflags", 32, SYSTEM, "EFLAGS system bits TF IF IOPL NT RF VM AC VIF VIP ID"))
    out.append(Field("cpl", 2, SYSTEM, "current privilege level (SDM 3A 5.5)"))
    for s in SREGS:
        out.append(Field(s, 16, USER, f"{s.upper()} selector"))
        out.append(Field(f"{s}_base", 32, SYSTEM, f"{s.upper()} hidden base"))
        out.append(Field(f"{s}_limit", 32, SYSTEM, f"{s.upper()} hidden byte-granular limit"))
        out.append(Field(f"{s}_attr", 16, SYSTEM,
                         f"{s.upper()} hidden attributes: descriptor bits 40-55 (type S DPL P . AVL L DB G)"))
    out += [
        Field("gdtr_base", 32, SYSTEM, "GDTR base"), Field("gdtr_limit", 16, SYSTEM, "GDTR limit"),
        Field("idtr_base", 32, SYSTEM, "IDTR base"), Field("idtr_limit", 16, SYSTEM, "IDTR limit"),
        Field("ldtr", 16, SYSTEM, "LDTR selector"), Field("ldtr_base", 32, SYSTEM, "LDTR base"),
        Field("ldtr_limit", 32, SYSTEM, "LDTR byte limit"),
        Field("tr", 16, SYSTEM, "TR selector"), Field("tr_base", 32, SYSTEM, "TR base"),
        Field("tr_limit", 32, SYSTEM, "TR byte limit"), Field("tr_attr", 16, SYSTEM, "TR attributes"),
    ]
    for c in ("cr0", "cr2", "cr3", "cr4"):
        out.append(Field(c, 32, SYSTEM, f"control register {c.upper()}"))
    for d in ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7"):
        out.append(Field(d, 32, SYSTEM, f"debug register {d.upper()}"))
    out += [
        Field("tsc", 64, SYSTEM, "time-stamp counter, MSR 0x10"),
        Field("tsc_aux", 32, SYSTEM, "IA32_TSC_AUX, read by RDTSCP"),
        Field("pmc0", 64, SYSTEM, "performance counter 0"),
        Field("pmc1", 64, SYSTEM, "performance counter 1"),
        Field("sysenter_cs", 32, SYSTEM, "IA32_SYSENTER_CS, MSR 0x174"),
        Field("sysenter_esp", 32, SYSTEM, "IA32_SYSENTER_ESP, MSR 0x175"),
        Field("sysenter_eip", 32, SYSTEM, "IA32_SYSENTER_EIP, MSR 0x176"),
        Field("xcr0", 64, SYSTEM, "XCR0: the state components XSAVE and AVX may use (SDM Vol. 1 13.3)",
              default=1),
        Field("xss", 64, SYSTEM, "IA32_XSS, MSR DA0H: the supervisor state components XSAVES/XRSTORS "
              "manage (SDM Vol. 1 13.3); the model's processors support none, so it is 0"),
        Field("bndcfgs", 64, SYSTEM, "IA32_BNDCFGS, MSR D90H: MPX configuration at CPL 0 (EN is bit 0; "
              "SDM Vol. 1 17.3.2)"),
        Field("efer", 64, SYSTEM, "IA32_EFER, MSR C0000080H (SCE, SVME; SDM Vol. 4, AMD APM Vol. 2 3.1.7)"),
        Field("star", 64, SYSTEM, "STAR, MSR C0000081H: SYSCALL/SYSRET CS and EIP (AMD APM Vol. 2 6.1.1)"),
        Field("gif", 1, SYSTEM, "AMD SVM global interrupt flag (STGI/CLGI; AMD APM Vol. 2 15.17)"),
        Field("halted", 1, SYSTEM, "processor halted by HLT"),
        Field("caches", 1, SYSTEM, "1 while cache lines may hold data not yet in memory (INVD drops them)"),
        Field("tlb", 1, SYSTEM, "1 while the TLB may hold translations (INVLPG drops them)"),
        *[Field(r, 80, USER, f"x87 physical register R{r[3]}; MM{r[3]} is bits 63:0") for r in FPRS],
        Field("fcw", 16, USER, "x87 control word"),
        Field("fsw", 16, USER, "x87 status word (TOP in bits 13:11)"),
        Field("ftw", 8, USER, "x87 tag word, abridged as FXSAVE stores it: bit i = 1 when R_i is not empty"),
        Field("fop", 16, USER, "x87 last instruction opcode (11 bits)"),
        Field("fip", 32, USER, "x87 last instruction pointer offset"),
        Field("fcs", 16, USER, "x87 last instruction pointer selector"),
        Field("fdp", 32, USER, "x87 last data pointer offset"),
        Field("fds", 16, USER, "x87 last data pointer selector"),
        Field("mxcsr", 32, USER, "SSE control and status"),
        Field("xinuse", 64, USER, "XINUSE bits the processor keeps set for components in their initial "
              "configuration (SDM Vol. 1 13.6: it may); a component not in it is in use whatever they say"),
        Field("pkru", 32, USER, "PKRU: protection-key rights for user pages (SDM Vol. 3A 4.6.2)"),
        Field("bndcfgu", 64, USER, "BNDCFGU: MPX configuration at CPL 3 (EN is bit 0; SDM Vol. 1 17.3.2)"),
        *[Field(r, 512, USER, f"ZMM{r[3]}: XMM{r[3]} is bits 127:0, YMM{r[3]} bits 255:0") for r in ZMMS],
        *[Field(r, 64, USER, f"AVX-512 opmask register {r.upper()}") for r in KREGS],
        Field("io", 8, SYSTEM, "I/O port space, byte per port", index_width=16),
        Field("mem", 8, USER, "memory, byte addressed (linear = physical: no paging)", index_width=32),
    ]
    return tuple(out)


FIELDS: tuple[Field, ...] = _fields()
FIELD = {f.name: f for f in FIELDS}
ARRAYS = tuple(f.name for f in FIELDS if f.index_width)
SCALARS = tuple(f.name for f in FIELDS if not f.index_width)


def sort_of(f: Field) -> z3.SortRef:
    if f.index_width:
        return z3.ArraySort(z3.BitVecSort(f.index_width), z3.BitVecSort(f.width))
    return z3.BitVecSort(f.width)


@dataclass(frozen=True)
class State:
    """One IA-32 state: ``values`` maps every field name to a Z3 term of the field's sort."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def replace(self, **changes: Any) -> "State":
        unknown = set(changes) - set(FIELD)
        if unknown:
            raise KeyError(f"no such state field: {', '.join(sorted(unknown))}")
        new = dict(self.values)
        new.update(changes)
        return State(new)

    def __reduce__(self):  # dataclass with __getattr__ needs explicit pickling
        return (State, (dict(self.values),))


def fresh(prefix: str = "s") -> State:
    """A fully symbolic state whose fields are Z3 constants named ``prefix.field``."""
    out = {}
    for f in FIELDS:
        c = out[f.name] = z3.Const(f"{prefix}.{f.name}", sort_of(f))
        if not f.index_width:
            _FRESH[c.get_id()] = (c, f"{prefix}.{f.name}")
    return State(out)


def substitution(a: State, b: State):
    """The function taking a term over ``a``'s fields to the same term over ``b``'s: each field
    ``a`` holds a constant for (as ``fresh`` makes them) and ``b`` another term for is replaced,
    all at once (Z3's simultaneous substitution, the arrays built once for every term)."""
    pairs = [(a.values[f.name], b.values[f.name]) for f in FIELDS
             if not a.values[f.name].eq(b.values[f.name])]
    for x, _ in pairs:
        if not z3.is_const(x):
            raise ValueError(f"{x} is not a constant: only a fresh state's fields can be replaced")
    n = len(pairs)
    if not n:
        return lambda t: t
    ctx = pairs[0][0].ctx
    frm, to = (z3.Ast * n)(), (z3.Ast * n)()
    for i, (x, y) in enumerate(pairs):
        frm[i], to[i] = x.as_ast(), y.as_ast()

    def sub(t, _keep=pairs):            # _keep: the terms the arrays point at stay alive
        return _to_expr_ref(z3.Z3_substitute(ctx.ref(), t.as_ast(), n, frm, to), ctx)
    return sub


def concrete(values: Mapping[str, Any]) -> State:
    """A state of Z3 literals from plain integers; missing scalars take their field's default
    (0 but for XCR0, whose bit 0 is always set), arrays default to 0."""
    unknown = set(values) - set(FIELD)
    if unknown:
        raise KeyError(f"no such state field: {', '.join(sorted(unknown))}")
    out = {}
    for f in FIELDS:
        v = values.get(f.name, {} if f.index_width else f.default)
        if f.index_width:
            arr = z3.K(z3.BitVecSort(f.index_width), z3.BitVecVal(0, f.width))
            for a, b in sorted(dict(v).items()):
                arr = z3.Store(arr, z3.BitVecVal(int(a), f.index_width), z3.BitVecVal(int(b), f.width))
            out[f.name] = arr
        else:
            out[f.name] = z3.BitVecVal(int(v) & ((1 << f.width) - 1), f.width)
    return State(out)


def eflags(s: State) -> z3.BitVecRef:
    """The architectural EFLAGS image (bit 1 set)."""
    return (s.flags & USER_FLAGS_MASK) | (s.sysflags & SYS_FLAGS_MASK) | EFLAGS_FIXED


def split_eflags(value: z3.BitVecRef) -> tuple[z3.BitVecRef, z3.BitVecRef]:
    return value & USER_FLAGS_MASK, value & SYS_FLAGS_MASK


def bit(term: z3.BitVecRef, n: int) -> z3.BoolRef:
    return z3.Extract(n, n, term) == 1


def iopl(s: State) -> z3.BitVecRef:
    return z3.Extract(IOPL_LO + 1, IOPL_LO, s.sysflags)


def users() -> tuple[str, ...]:
    return tuple(f.name for f in FIELDS if f.owner == USER)


def systems() -> tuple[str, ...]:
    return tuple(f.name for f in FIELDS if f.owner == SYSTEM)


def _select(arr: z3.ArrayRef, address: int) -> z3.BitVecRef:
    """``Select(arr, address)`` built with the C API: witnesses read hundreds of cells."""
    ctx = arr.ctx
    dom = arr.domain()
    idx = z3.Z3_mk_unsigned_int64(ctx.ref(), address, dom.ast)
    return z3.BitVecRef(z3.Z3_mk_select(ctx.ref(), arr.as_ast(), idx), ctx)


# Constants made by ``fresh``, by AST id (held here, so an id is never reused for another term).
_FRESH: dict[int, tuple[z3.ExprRef, str]] = {}


def _free_const(term) -> str | None:
    """The name of ``term`` if it is a constant ``fresh`` made, else None."""
    hit = _FRESH.get(term.get_id())
    return hit[1] if hit is not None else None


_EVAL_BITS = 8192


def eval_many(model: z3.ModelRef, terms: list) -> list[int]:
    """Evaluate bit-vector terms under ``model`` with one solver call (Concat, then slice)."""
    if not terms:
        return []
    # In chunks of at most _EVAL_BITS: Python refuses to parse numerals of more than 4,300
    # digits, which an XSAVE image's thousand byte addresses would exceed in one concatenation.
    out: list[int] = []
    start = 0
    while start < len(terms):
        end, bits = start, 0
        while end < len(terms) and (end == start or bits + terms[end].size() <= _EVAL_BITS):
            bits += terms[end].size()
            end += 1
        chunk = terms[start:end]
        big = chunk[0] if len(chunk) == 1 else z3.Concat(*chunk)
        v = model.eval(big, model_completion=True).as_long()
        part = []
        for t in reversed(chunk):
            w = t.size()
            part.append(v & ((1 << w) - 1))
            v >>= w
        out.extend(reversed(part))
        start = end
    return out


_LAST_MODEL: list = [None, frozenset()]     # a witness reads several states from one model


def _mentioned(model: z3.ModelRef) -> frozenset[str]:
    """The names of the constants and functions ``model`` interprets (kept for the last model:
    the states of one witness and their outcomes are read from the same one)."""
    if _LAST_MODEL[0] is not model:
        _LAST_MODEL[:] = [model, frozenset(d.name() for d in model.decls())]
    return _LAST_MODEL[1]


def evaluate(s: State, model: z3.ModelRef, addresses: Mapping[str, set] | None = None,
             known: tuple["State", dict] | None = None) -> dict:
    """Read a state out of a Z3 model as plain integers.

    Arrays are read at the given ``addresses`` (per array field); a witness lists exactly the
    bytes the instruction reads or writes, so it is complete for replay.  ``known`` is a state
    already read (the one before an instruction, say) with its values: a field holding the very
    same term is copied instead of evaluated again.
    """
    addresses = addresses or {}
    terms, slots = [], []
    out: dict[str, Any] = {f.name: {} for f in FIELDS if f.index_width}
    # A free constant the model does not mention is 0 under model completion: most fields of
    # a witness are such constants (registers the instruction never touches), and evaluating
    # them in one concatenation would cost more than the rest of the witness.
    mentioned = None
    for f in FIELDS:
        term = s.values[f.name]
        free = None if f.index_width else _free_const(term)
        if free is not None:
            if mentioned is None:
                mentioned = _mentioned(model)
            if free not in mentioned:
                out[f.name] = 0
                continue
        if f.index_width:
            same = known is not None and term is known[0].values[f.name]
            for a in sorted(addresses.get(f.name, ())):
                if same and a in known[1][f.name]:
                    out[f.name][a] = known[1][f.name][a]
                    continue
                terms.append(_select(term, a))
                slots.append((f.name, a))
        elif known is not None and term is known[0].values[f.name]:
            out[f.name] = known[1][f.name]
        else:
            terms.append(term)
            slots.append((f.name, None))
    for (name, a), v in zip(slots, eval_many(model, terms)):
        if a is None:
            out[name] = v
        else:
            out[name][a] = v
    return {f.name: out[f.name] for f in FIELDS}


def fields_equal(a: State, b: State, names) -> z3.BoolRef:
    return z3.And([a[n] == b[n] for n in names])
