"""What a concrete state must satisfy before an emulator harness can put it on a CPU.

``check`` completes a state (missing scalars are 0, as ``state.concrete``) and refuses, with a
one-line message, states no IA-32 processor can be in (``ImpossibleState``: an architectural
invariant is broken, SDM Vol. 3A ch. 2-7) and states a harness cannot reproduce
(``UnsupportedState``).  The invariants are the same for every harness; the few refusals that
depend on the harness (armed breakpoints, a 32-bit IA32_SYSENTER_CS) are named by a ``Harness``.
Nothing here imports an emulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from pgvirt.model import state as st

from . import states as layout

# CR0 bits (SDM Vol. 3A 2.5).
_PE, _PG, _NW, _CD = 1 << st.CR0_PE, 1 << st.CR0_PG, 1 << st.CR0_NW, 1 << st.CR0_CD


class StateError(ValueError):
    """The state cannot be put on the emulator; the message is one line."""


class ImpossibleState(StateError):
    """No IA-32 processor can be in this state (it breaks an architectural invariant)."""


class UnsupportedState(StateError):
    """A legal state this harness (or its emulator) cannot reproduce faithfully."""


@dataclass(frozen=True)
class Harness:
    """The harness-specific refusals: why armed breakpoints cannot be reproduced, and why a
    value of IA32_SYSENTER_CS above 16 bits cannot (None: it can)."""

    dr7_reason: str
    sysenter_cs_reason: str | None = None


UNICORN = Harness(
    "DR7 enables breakpoints: Unicorn does not arm breakpoints written through its register API",
    "sysenter_cs has bits 31:16 set: Unicorn keeps only bits 15:0 of IA32_SYSENTER_CS")


# --- what a state must satisfy ------------------------------------------------------------------
def scalars(state: Mapping) -> dict:
    """The scalar fields of ``state``, missing ones at their defaults; ``StateError`` for a field
    the state does not have or a value outside its width."""
    unknown = set(state) - set(st.FIELD)
    if unknown:
        raise StateError(f"no such state field: {', '.join(sorted(unknown))}")
    s: dict = {}
    for name in st.SCALARS:
        v = state.get(name, st.FIELD[name].default)
        width = st.FIELD[name].width
        if not isinstance(v, int) or not 0 <= v < 1 << width:
            raise StateError(f"{name} = {v!r} is not a {width}-bit unsigned integer")
        s[name] = v
    return s


def check(state: Mapping, harness: "Harness | None" = None) -> dict:
    """``state`` completed (missing scalars take their defaults, as ``state.concrete``) and
    validated for ``harness`` (default: the Unicorn Machine's)."""
    s = scalars(state)
    for arr in ("mem", "io"):
        cells = state.get(arr, {})
        if not isinstance(cells, Mapping):
            raise StateError(f"{arr} must be a dict {{address: byte}}, not {type(cells).__name__}")
        s[arr] = cells
    for a, b in s["io"].items():   # mem is validated when its page image is built
        if not (type(a) is int and 0 <= a <= 0xFFFF and type(b) is int and 0 <= b <= 0xFF):
            raise StateError(f"io[{a!r}] = {b!r} is not a byte at a 16-bit port")
    _check_architecture(s, harness or UNICORN)
    return s


def _is_tss(attr: int) -> bool:
    return not attr & 0x10 and attr & 0x5 == 0x1



def _fail(cls, msg: str):
    raise cls(msg)


def _check_architecture(s: dict, h: "Harness") -> None:
    cpl, cr0 = s["cpl"], s["cr0"]
    if not cr0 & _PE:
        _fail(ImpossibleState if cpl else UnsupportedState,
              f"CPL {cpl} with CR0.PE = 0: real mode runs at CPL 0" if cpl
              else "CR0.PE = 0 (real mode) is outside the protected-mode model")
    if cr0 & _NW and not cr0 & _CD:
        _fail(ImpossibleState, "CR0.NW = 1 with CR0.CD = 0 (MOV CR0 refuses it, SDM Vol. 3A 2.5)")
    if cr0 & _PG:
        _fail(UnsupportedState, "CR0.PG = 1: paging is outside the model (linear = physical)")
    if s["flags"] & ~st.USER_FLAGS_MASK or s["sysflags"] & ~st.SYS_FLAGS_MASK:
        _fail(StateError, "flags/sysflags hold bits outside their EFLAGS masks")
    if s["sysflags"] & (1 << st.VM):
        _fail(UnsupportedState, "EFLAGS.VM = 1: virtual-8086 mode is outside the model")
    if s["dr7"] & 0xFF:
        _fail(UnsupportedState, h.dr7_reason)
    if h.sysenter_cs_reason and s["sysenter_cs"] > 0xFFFF:
        _fail(UnsupportedState, h.sysenter_cs_reason)
    if s["halted"]:
        _fail(UnsupportedState, "halted = 1: a halted processor runs no instruction")
    if s["tr_attr"] & 0x0F00:
        _fail(ImpossibleState, f"tr_attr {s['tr_attr']:#x} has bits in the limit[19:16] position")
    if _is_tss(s["tr_attr"]) and not s["tr_attr"] & 0x2:
        _fail(ImpossibleState, f"tr_attr {s['tr_attr']:#x} is an available TSS: LTR and task switches "
                               "leave TR holding a busy one (SDM Vol. 3A 7.2.2)")
    if s["ldtr"] & 0xFFFC == 0 and (s["ldtr_base"] or s["ldtr_limit"]):
        _fail(UnsupportedState, "null LDTR with a non-empty cache: Unicorn would still use it")
    if s["cs"] & 3 != cpl:
        _fail(ImpossibleState,
              f"CPL {cpl} with CS.RPL {s['cs'] & 3}: CPL is CS.RPL (SDM Vol. 3A 5.5)")
    if s["ss"] & 3 != cpl:
        _fail(ImpossibleState,
              f"CPL {cpl} with SS.RPL {s['ss'] & 3}: SS.RPL equals CPL (SDM Vol. 3A 5.7)")
    for seg in st.SREGS:
        sel, limit, attr = s[seg], s[f"{seg}_limit"], s[f"{seg}_attr"]
        null = sel & 0xFFFC == 0
        if null:
            if seg in ("cs", "ss"):
                _fail(ImpossibleState, f"{seg.upper()} holds a null selector in protected mode")
            if s[f"{seg}_base"] or limit or attr:
                _fail(UnsupportedState, f"{seg.upper()} is null but its cache is not empty: Unicorn "
                                        "loads a null selector with base 0, limit 0, attr 0")
            continue
        try:
            layout.descriptor(s[f"{seg}_base"], limit, attr)
        except layout.EncodingError as e:
            _fail(ImpossibleState, f"{seg}_attr/{seg}_limit: {e}; caches come from descriptors")
        typ, dpl = attr & 0xF, (attr >> 5) & 3
        is_code = bool(typ & 8)
        what = seg.upper()
        if not attr & 0x10 or not attr & 0x80:
            _fail(ImpossibleState, f"{what} cache is not a present code/data segment "
                                   f"(attr {attr:#x}); loads check S and P")
        if not typ & 1:
            _fail(ImpossibleState, f"{what} cache has the accessed bit clear; every segment load "
                                   "sets it (SDM Vol. 3A 3.4.5.1)")
        if seg == "cs":
            if not is_code:
                _fail(ImpossibleState, f"CS cache is a data segment (attr {attr:#x})")
            if (typ & 4 and dpl > cpl) or (not typ & 4 and dpl != cpl):
                kind = "conforming" if typ & 4 else "non-conforming"
                _fail(ImpossibleState, f"CS DPL {dpl} at CPL {cpl} ({kind} code)")
            if s["eip"] > limit:
                _fail(ImpossibleState, f"EIP {s['eip']:#x} lies beyond the CS limit {limit:#x}")
        elif seg == "ss":
            if is_code or not typ & 2 or dpl != cpl:
                _fail(ImpossibleState,
                      f"SS cache must be writable data with DPL = CPL (attr {attr:#x})")
        else:
            if is_code and not typ & 2:
                _fail(ImpossibleState,
                      f"{what} cache is execute-only code; loads need readable segments")
            if (sel & 3) > dpl and not (is_code and typ & 4):
                _fail(ImpossibleState, f"{what} selector RPL {sel & 3} above its cache DPL {dpl}; "
                                       "loads refuse it (SDM Vol. 3A 5.6)")
            if dpl < cpl and not (is_code and typ & 4):
                _fail(UnsupportedState, f"{what} cache DPL {dpl} < CPL {cpl}: only SYSEXIT reaches this, "
                                        "and the IRETD the Machine enters through would null it")
