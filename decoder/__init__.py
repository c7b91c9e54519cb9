"""iced-x86, the one decoder of guest code: the decoder whose tables the derived forms come from.

The scan's linear sweep (``guest.decode``) and the monitors' recursive descent (``monitor.scan``)
both decode here, with the same options and the same Intel-syntax spelling, so a site one finds
is the instruction the other sees.  Only the decoder lives here: which form an instruction is
stays the model's (``model/derived``, ``model/encoding``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import iced_x86 as iced

__all__ = ["MAX_INSN", "UNDECODABLE", "INVALID", "OPTIONS", "code_name", "code_names", "decoder", "one", "text_of",
           "asm", "text", "mnemonic", "Flow", "flow"]

MAX_INSN = 15               # longest legal x86 instruction
UNDECODABLE = "(bad)"       # mnemonic of a byte the decoder cannot decode (objdump's spelling)
INVALID = iced.Code.INVALID
# Prefixes the instruction does not admit (LOCK on CLI, REP on SGDT) are decoded, not refused:
# what they mean is the model's to say (a form accepts them and faults, or no form does and the
# instruction is unmodelled), and the sweep then meets objdump's instruction boundaries.
OPTIONS = iced.DecoderOptions.NO_INVALID_CHECK


@lru_cache(maxsize=1)
def code_names() -> dict[int, str]:
    """iced-x86 Code value -> its name."""
    return {v: k for k, v in vars(iced.Code).items() if not k.startswith("_") and isinstance(v, int)}


def code_name(code: int) -> str:
    """The iced-x86 Code's name (``ADD_R8_RM8``), as model/derived's table spells it."""
    return code_names()[code]


def decoder(code: bytes, addr: int) -> iced.Decoder:
    """A 32-bit decoder of ``code`` loaded at ``addr``."""
    return iced.Decoder(32, code, OPTIONS, ip=addr)


def one(code: bytes, addr: int):
    """The first instruction of ``code`` at ``addr`` (its ``code`` is INVALID if undecodable)."""
    return decoder(code, addr).decode()


def _formatter() -> iced.Formatter:
    """Intel syntax spelled as Capstone and objdump -M intel spell it."""
    f = iced.Formatter(iced.FormatterSyntax.INTEL)
    f.space_after_operand_separator = True
    f.space_between_memory_add_operators = True
    f.memory_size_options = iced.MemorySizeOptions.ALWAYS
    f.hex_prefix, f.hex_suffix, f.uppercase_hex = "0x", "", False
    f.show_branch_size = False
    f.leading_zeros = f.branch_leading_zeros = False
    return f


_FMT = _formatter()
_FAR = (iced.OpKind.FAR_BRANCH16, iced.OpKind.FAR_BRANCH32)


def text_of(ins) -> tuple[str, str]:
    """Mnemonic (with its prefixes) and operands of a decoded instruction."""
    if ins.code == INVALID:
        return UNDECODABLE, ""
    if ins.op0_kind in _FAR:    # selector:offset, as the SDM and objdump write a far pointer
        off = ins.far_branch16 if ins.op0_kind == _FAR[0] else ins.far_branch32
        return _FMT.format_mnemonic(ins), f"{ins.far_branch_selector:#x}:{off:#x}"
    return _FMT.format_mnemonic(ins), _FMT.format_all_operands(ins)


def asm(code: bytes, addr: int) -> str:
    """The Intel-syntax text of the one instruction ``code`` at ``addr``."""
    mnem, op = text_of(one(code, addr))
    return f"{mnem} {op}".rstrip()


def text(code: bytes, addr: int) -> tuple[str, str]:
    """Mnemonic (with its prefixes: ``rep movsb``) and operands of the instruction ``code``."""
    return text_of(one(code, addr))


def mnemonic(code: bytes) -> str:
    """The mnemonic alone (it does not depend on the address)."""
    ins = one(code, 0)
    return UNDECODABLE if ins.code == INVALID else _FMT.format_mnemonic(ins)


# --- control flow, for a recursive descent ---------------------------------------------------------

class Flow(NamedTuple):
    """Where control can go after one instruction: its length, the direct near target it names
    (None: none, or a far pointer), and whether execution can fall through to the next one."""

    length: int
    target: int | None
    falls_through: bool


_FC = iced.FlowControl
_NEAR = (iced.OpKind.NEAR_BRANCH16, iced.OpKind.NEAR_BRANCH32)
_ENDS = (_FC.UNCONDITIONAL_BRANCH, _FC.INDIRECT_BRANCH, _FC.RETURN, _FC.EXCEPTION)


def flow(code: bytes, addr: int) -> Flow | None:
    """The flow of the instruction ``code`` begins with at ``addr``, or None if undecodable.

    A direct near JMP, Jcc, LOOP/JCXZ or CALL names its target (truncated to 16 bits with an
    operand-size prefix, as the processor does); JMP, indirect jumps, RET/RETF/IRET and the
    instructions that always raise #UD (UD0/UD1/UD2) end a path; a CALL, an interrupt and
    everything else falls through (iced-x86's FlowControl)."""
    ins = one(code, addr)
    if ins.code == INVALID:
        return None
    fc = ins.flow_control
    target = None
    if fc in (_FC.UNCONDITIONAL_BRANCH, _FC.CONDITIONAL_BRANCH, _FC.CALL) and ins.op0_kind in _NEAR:
        target = ins.near_branch_target
    return Flow(ins.len, target, fc not in _ENDS)
