"""Instruction encodings in the SDM's opcode notation (SDM Vol. 2A 3.1.1.1) and a 32-bit decoder.

An encoding is written as in the opcode column: ``"0F 01 /0"``, ``"8E /r"``, ``"50+r"``,
``"CD ib"``, ``"9A cp"``; a trailing ``mem`` or ``reg`` restricts ModRM.mod, and ``rep`` admits
an F2/F3 prefix (a form without it does not describe REP-prefixed instances: they are other
instructions or loops the form does not model).  As in the SDM,
opcode bytes are upper-case hex and immediates lower case (``"CB"`` is RETF, ``"cb"`` a rel8). ``decode`` reads one
instance (prefixes, ModRM, SIB, displacement, immediates) so a form's semantics take their
operands from the actual bytes of a site, not from a canonical example.
"""

from __future__ import annotations

from dataclasses import dataclass

SEG_PREFIX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
REP_PREFIX = {0xF3: "rep", 0xF2: "repne"}
IMM_SIZE = {"ib": 1, "iw": 2, "id": 4, "cb": 1, "cd": 4, "cp": 6}


class EncodingError(ValueError):
    """Bytes that do not match an encoding, or an encoding string that is malformed."""


@dataclass(frozen=True)
class Encoding:
    opcode: bytes            # the fixed opcode bytes (for +r forms, the base byte)
    modrm: str | None        # None, "r" (reg is an operand) or "0".."7" (reg is an extension)
    plus_r: bool             # low three bits of the last opcode byte name a register
    immediates: tuple[str, ...]
    mod: str | None          # None, "mem" or "reg"
    fixed_reg: int | None = None  # for +r forms restricted to one register
    rep_ok: bool = False     # an F2/F3 prefix is part of what the form describes

    @classmethod
    def parse(cls, text: str) -> "Encoding":
        op = bytearray()
        modrm = None
        plus_r = False
        imms: list[str] = []
        mod = None
        fixed = None
        rep_ok = False
        for tok in text.split():
            t = tok.lower()
            if t.startswith("/"):
                modrm = t[1:]
                if modrm not in ("r", "0", "1", "2", "3", "4", "5", "6", "7"):
                    raise EncodingError(f"bad ModRM token {tok!r} in {text!r}")
            elif tok in IMM_SIZE:  # lower case, as the SDM writes them: "CB" is an opcode, "cb" a rel8
                imms.append(tok)
            elif t in ("mem", "reg"):
                mod = t
            elif t == "rep":
                rep_ok = True
            elif t.endswith("+r"):
                op.append(int(t[:-2], 16))
                plus_r = True
            elif "+" in t:  # e.g. "58+3": +r restricted to one register
                b, r = t.split("+")
                op.append(int(b, 16))
                plus_r, fixed = True, int(r)
            else:
                try:
                    op.append(int(t, 16))
                except ValueError:
                    raise EncodingError(f"bad token {tok!r} in {text!r}") from None
        if not op:
            raise EncodingError(f"no opcode bytes in {text!r}")
        return cls(bytes(op), modrm, plus_r, tuple(imms), mod, fixed, rep_ok)


@dataclass(frozen=True)
class Decoded:
    """Operands of one instruction instance (32-bit address and operand size)."""

    length: int
    prefixes: tuple[int, ...] = ()
    seg: str | None = None       # segment override
    rep: str | None = None
    mod: int | None = None
    reg: int | None = None       # ModRM.reg or the +r register
    rm: int | None = None
    base: int | None = None      # register numbers (GPRS order); None when absent
    index: int | None = None
    scale: int = 1
    disp: int = 0
    imm: int | None = None
    imm2: int | None = None      # selector of a ptr16:32, or the second immediate

    @property
    def is_mem(self) -> bool:
        return self.mod is not None and self.mod != 3


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _read(enc: Encoding, code: bytes) -> tuple | str:
    """The fields of ``Decoded`` for ``code`` as an instance of ``enc``, or why it is not one
    (a string: matching many candidates costs no exceptions)."""
    i = 0
    prefixes: list[int] = []
    seg = rep = None
    while i < len(code) and (code[i] in SEG_PREFIX or code[i] in REP_PREFIX):
        prefixes.append(code[i])
        if code[i] in SEG_PREFIX:
            seg = SEG_PREFIX[code[i]]
        else:
            rep = REP_PREFIX[code[i]]
        i += 1
    if rep is not None and not enc.rep_ok:
        return f"{rep.upper()} prefix: not an instance of this form"
    n = len(enc.opcode)
    body = code[i:i + n]
    if len(body) < n:
        return "truncated opcode"
    reg = None
    if enc.plus_r:
        if body[:-1] != enc.opcode[:-1] or (body[-1] & 0xF8) != enc.opcode[-1]:
            return "opcode does not match"
        reg = body[-1] & 7
        if enc.fixed_reg is not None and reg != enc.fixed_reg:
            return "opcode register does not match"
    elif body != enc.opcode:
        return "opcode does not match"
    i += n
    mod = rm = base = index = None
    scale, disp = 1, 0
    if enc.modrm is not None:
        if i >= len(code):
            return "truncated ModRM"
        m = code[i]
        i += 1
        mod, reg, rm = m >> 6, (m >> 3) & 7, m & 7
        if enc.modrm != "r" and reg != int(enc.modrm):
            return "ModRM.reg does not match the opcode extension"
        if enc.mod == "mem" and mod == 3:
            return "register operand where memory is required"
        if enc.mod == "reg" and mod != 3:
            return "memory operand where a register is required"
        if mod != 3:
            if rm == 4:
                if i >= len(code):
                    return "truncated SIB"
                sib = code[i]
                i += 1
                scale = 1 << (sib >> 6)
                idx = (sib >> 3) & 7
                index = None if idx == 4 else idx
                base = sib & 7
                if base == 5 and mod == 0:
                    base = None
                    dsz = 4
                else:
                    dsz = {0: 0, 1: 1, 2: 4}[mod]
            elif rm == 5 and mod == 0:
                base, dsz = None, 4
            else:
                base, dsz = rm, {0: 0, 1: 1, 2: 4}[mod]
            if i + dsz > len(code):
                return "truncated displacement"
            raw = code[i:i + dsz]
            i += dsz
            disp = _le(raw)
            if dsz == 1 and disp >= 0x80:
                disp -= 0x100
            disp &= 0xFFFFFFFF
    imm = imm2 = None
    for t in enc.immediates:
        sz = IMM_SIZE[t]
        if i + sz > len(code):
            return "truncated immediate"
        raw = code[i:i + sz]
        i += sz
        if t == "cp":
            imm, imm2 = _le(raw[:4]), _le(raw[4:6])
        elif imm is None:
            imm = _le(raw)
        else:
            imm2 = _le(raw)
    return (i, tuple(prefixes), seg, rep, mod, reg, rm, base, index, scale, disp, imm, imm2)


def decode(enc: Encoding, code: bytes) -> Decoded:
    """Decode ``code`` as an instance of ``enc``; raise EncodingError if it is not one."""
    r = _read(enc, code)
    if isinstance(r, str):
        raise EncodingError(r)
    return Decoded(*r)


def matches(enc: Encoding, code: bytes) -> Decoded | None:
    r = _read(enc, code)
    return None if isinstance(r, str) else Decoded(*r)


def instance_length(enc: Encoding, code: bytes) -> int | None:
    """How many bytes of ``code`` an instance of ``enc`` takes, or None if it is not one."""
    r = _read(enc, code)
    return None if isinstance(r, str) else r[0]
