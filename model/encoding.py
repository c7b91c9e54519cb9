"""Instruction encodings in the SDM's opcode notation (SDM Vol. 2A 3.1.1.1) and a 32-bit decoder.

An encoding is written as in the opcode column, with iced-x86's ``op_code_string`` tokens for
what the SDM leaves to the operand-size and address-size attributes:

* opcode bytes in upper-case hex (``"0F 01 /0"``); a leading ``66``, ``F2`` or ``F3`` followed by
  more opcode bytes is a *mandatory prefix* (``"66 0F C7 /6"`` VMCLEAR, ``"F3 90"`` PAUSE, and
  ``"F3 A4"`` REP MOVSB: the REP form of a string instruction is a form of its own);
* ``/r`` or ``/0``..``/7`` for ModRM, with ``mem`` or ``reg`` restricting ModRM.mod;
  ``"50+r"`` (also ``+rw``/``+rd``) for a register in the opcode, ``"58+3"`` for one register;
* immediates in lower case: ``ib iw id`` (``"CB"`` is RETF, ``"cb"`` a rel8), ``cb cw cd`` code
  offsets, ``cp`` a ptr16:32 (a ptr16:16 is ``cd``, split by the form);
* ``o16``/``o32``: the 16- or 32-bit operand-size variant (``o16`` requires a 66 prefix, ``o32``
  forbids it); without either the instruction has no operand size and a 66 prefix has no effect;
* ``a16``/``a32``: an encoding whose address size is fixed (MONITOR, VMRUN: rAX is the address);
  otherwise a 67 prefix gives 16-bit addressing to a ModRM memory operand and, with the token
  ``addr``, to implicit memory operands (string instructions: SI/DI/CX instead of ESI/EDI/ECX);
* ``NP``: no 66, F2 or F3 prefix; ``lock``: the form is lockable (SDM Vol. 2A LOCK).

Prefixes the decoder reads, and what it does with them (SDM Vol. 2A 2.1.1):

* segment overrides: the last one applies to the memory operand (when there is none it has no
  effect, as on the P6 and later);
* 66: selects ``o16`` forms, is part of mandatory-66 forms, has no effect on the rest;
* 67: 16-bit addressing (Table 2-1); on a form with no memory operand it is *reserved*, so such
  bytes are no instance of the form;
* F2/F3: mandatory prefixes (the last of them counts) and the REP forms; on any other form they
  are reserved ("use of repeat prefixes ... with other instructions is reserved"), so the bytes
  are no instance of it.  Nowhere is a REP prefix modelled as ignored;
* F0 (LOCK): decoded on every form; ``Form.run`` makes an instance #UD unless the form is
  lockable and its destination is in memory (SDM Vol. 2A LOCK, Vol. 3A 8.1.2.2).

``decode`` reads one instance (prefixes, ModRM, SIB, displacement, immediates) so a form's
semantics take their operands from the actual bytes of a site, not from a canonical example.
Instances longer than 15 bytes are none (they raise #GP(0), SDM Vol. 2A 2.3.11).
"""

from __future__ import annotations

from dataclasses import dataclass

SEG_PREFIX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
REP_PREFIX = {0xF3: "rep", 0xF2: "repne"}
OSIZE_PREFIX, ASIZE_PREFIX, LOCK_PREFIX = 0x66, 0x67, 0xF0
LEGACY_PREFIXES = frozenset(SEG_PREFIX) | frozenset(REP_PREFIX) | {OSIZE_PREFIX, ASIZE_PREFIX, LOCK_PREFIX}
IMM_SIZE = {"ib": 1, "iw": 2, "id": 4, "cb": 1, "cw": 2, "cd": 4, "cp": 6}
MAX_LENGTH = 15

# 16-bit ModRM addressing (SDM Vol. 2A Table 2-1): rm -> (base, index) as GPR numbers.
_BX, _BP, _SI, _DI = 3, 5, 6, 7
MODRM16 = {0: (_BX, _SI), 1: (_BX, _DI), 2: (_BP, _SI), 3: (_BP, _DI), 4: (_SI, None),
           5: (_DI, None), 6: (_BP, None), 7: (_BX, None)}


class EncodingError(ValueError):
    """Bytes that do not match an encoding, or an encoding string that is malformed."""


@dataclass(frozen=True)
class Encoding:
    opcode: bytes            # the fixed opcode bytes (for +r forms, the base byte), no prefix
    modrm: str | None        # None, "r" (reg is an operand) or "0".."7" (reg is an extension)
    plus_r: bool             # low three bits of the last opcode byte name a register
    immediates: tuple[str, ...]
    mod: str | None          # None, "mem" or "reg"
    fixed_reg: int | None = None  # for +r forms restricted to one register
    mandatory: int | None = None  # 0x66, 0xF2 or 0xF3: a mandatory prefix (REP for string forms)
    osize: int | None = None      # 16 or 32: the operand-size variant; None: no operand size
    asize: int | None = None      # 16 or 32 when the encoding fixes the address size
    no_prefix: bool = False       # NP: no 66/F2/F3 prefix
    lockable: bool = False
    implicit_mem: bool = False    # ``addr``: implicit memory operands follow the address size

    @classmethod
    def parse(cls, text: str) -> "Encoding":
        op = bytearray()
        modrm = None
        plus_r = False
        imms: list[str] = []
        mod = None
        fixed = None
        kw: dict = {}
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
            elif t in ("o16", "o32"):
                kw["osize"] = int(t[1:])
            elif t in ("a16", "a32"):
                kw["asize"] = int(t[1:])
            elif tok == "NP":
                kw["no_prefix"] = True
            elif t == "lock":
                kw["lockable"] = True
            elif t == "addr":
                kw["implicit_mem"] = True
            elif t.endswith(("+r", "+rw", "+rd", "+rb")):
                op.append(int(t.split("+")[0], 16))
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
        if len(op) > 1 and op[0] in (OSIZE_PREFIX, 0xF2, 0xF3):
            kw["mandatory"] = op.pop(0)
        if not op:
            raise EncodingError(f"no opcode bytes in {text!r}")
        if kw.get("no_prefix") and kw.get("mandatory"):
            raise EncodingError(f"NP with a mandatory prefix in {text!r}")
        if kw.get("mandatory") == OSIZE_PREFIX and kw.get("osize"):
            raise EncodingError(f"mandatory 66 with an operand-size token in {text!r}")
        return cls(bytes(op), modrm, plus_r, tuple(imms), mod, fixed, **kw)


@dataclass(frozen=True)
class Decoded:
    """Operands of one instruction instance in 32-bit code (CS.D = 1)."""

    length: int
    prefixes: tuple[int, ...] = ()
    seg: str | None = None       # segment override
    rep: str | None = None       # the last F2/F3 prefix, mandatory or not
    mod: int | None = None
    reg: int | None = None       # ModRM.reg or the +r register
    rm: int | None = None
    base: int | None = None      # register numbers (GPRS order); None when absent
    index: int | None = None
    scale: int = 1
    disp: int = 0
    imm: int | None = None
    imm2: int | None = None      # selector of a ptr16:32, or the second immediate
    osize: int = 32              # operand-size attribute (16 with a 66 that is not mandatory)
    asize: int = 32              # address-size attribute (16 with 67, or as the encoding fixes)
    lock: bool = False           # an F0 prefix

    @property
    def is_mem(self) -> bool:
        return self.mod is not None and self.mod != 3


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _read(enc: Encoding, code: bytes) -> tuple | str:
    """The fields of ``Decoded`` for ``code`` as an instance of ``enc``, or why it is not one
    (a string: matching many candidates costs no exceptions)."""
    i = 0
    n_code = len(code)
    seg = rep = None
    o66 = a67 = lock = False
    while i < n_code:
        c = code[i]
        if c in SEG_PREFIX:
            seg = SEG_PREFIX[c]
        elif c in REP_PREFIX:
            rep = REP_PREFIX[c]
        elif c == OSIZE_PREFIX:
            o66 = True
        elif c == ASIZE_PREFIX:
            a67 = True
        elif c == LOCK_PREFIX:
            lock = True
        else:
            break
        i += 1
    prefixes = tuple(code[:i])
    mand = enc.mandatory
    if mand is None:
        if rep is not None:
            return f"{rep.upper()} prefix: reserved on this instruction (SDM Vol. 2A 2.1.1)"
        if enc.no_prefix and o66:
            return "66 prefix on an NP encoding"
    elif mand == OSIZE_PREFIX:
        if not o66:
            return "mandatory 66 prefix missing"
        if rep is not None:
            return f"{rep.upper()} prefix selects another instruction"
        o66 = False                # consumed as the mandatory prefix
    else:
        if rep != REP_PREFIX[mand]:
            return f"mandatory {mand:02X} prefix missing"
        # F2/F3 take precedence over 66, which stays the operand-size prefix (REP MOVSW)
    if enc.osize == 16 and not o66:
        return "16-bit operand-size form without a 66 prefix"
    if enc.osize == 32 and o66:
        return "66 prefix: the 16-bit operand-size form, not this one"
    asize = 16 if a67 else 32
    if enc.asize is not None and enc.asize != asize:
        return f"{asize}-bit address size: the a{enc.asize} form is another one"
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
        if i >= n_code:
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
        if mod != 3 and asize == 16:
            if rm == 6 and mod == 0:
                base, dsz = None, 2
            else:
                base, index = MODRM16[rm]
                dsz = (0, 1, 2)[mod]
            if i + dsz > n_code:
                return "truncated displacement"
            disp = _le(code[i:i + dsz])
            i += dsz
            if dsz == 1 and disp >= 0x80:
                disp -= 0x100
            disp &= 0xFFFF
        elif mod != 3:
            if rm == 4:
                if i >= n_code:
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
                    dsz = (0, 1, 4)[mod]
            elif rm == 5 and mod == 0:
                base, dsz = None, 4
            else:
                base, dsz = rm, (0, 1, 4)[mod]
            if i + dsz > n_code:
                return "truncated displacement"
            raw = code[i:i + dsz]
            i += dsz
            disp = _le(raw)
            if dsz == 1 and disp >= 0x80:
                disp -= 0x100
            disp &= 0xFFFFFFFF
    if a67 and enc.asize is None and not enc.implicit_mem and not (mod is not None and mod != 3):
        return "67 prefix without a memory operand: reserved (SDM Vol. 2A 2.1.1)"
    imm = imm2 = None
    for t in enc.immediates:
        sz = IMM_SIZE[t]
        if i + sz > n_code:
            return "truncated immediate"
        raw = code[i:i + sz]
        i += sz
        if t == "cp":
            imm, imm2 = _le(raw[:4]), _le(raw[4:6])
        elif imm is None:
            imm = _le(raw)
        else:
            imm2 = _le(raw)
    if i > MAX_LENGTH:
        return f"{i} bytes: longer than {MAX_LENGTH} (#GP(0))"
    return (i, prefixes, seg, rep, mod, reg, rm, base, index, scale, disp, imm, imm2,
            16 if o66 else 32, asize, lock)


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
