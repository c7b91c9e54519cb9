"""Operands of one instance of a derived code, read from its bytes (SDM Vol. 2A ch. 2).

The guest layer names the code (its decoder said which) and gives the bytes; ``decode`` reads
the prefixes, the VEX/XOP/EVEX prefix, the opcode the table's ``layout`` names, ModRM/SIB and
displacement (32- or 16-bit addressing), and the immediates.  It answers an ``Instance`` or,
for bytes that are not an instance of the code, a string saying why (no exceptions).
"""

from __future__ import annotations

from dataclasses import dataclass

SEG_PREFIX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x66, 0x67, *SEG_PREFIX))
IMM_BYTES = {"ib": 1, "iw": 2, "id": 4, "cb": 1, "cw": 2, "cd": 4}
ESCAPES = {0: b"", 1: b"\x0f", 2: b"\x0f\x38", 3: b"\x0f\x3a"}
# 16-bit ModRM.rm: (base, index) as GPR numbers (SDM Vol. 2A Table 2-1).
RM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, None), (7, None), (5, None), (3, None))
EBP, ESP = 5, 4


@dataclass(frozen=True)
class Instance:
    """Where one instance's operands are: register numbers, the memory operand, immediates."""

    length: int
    seg: str | None = None          # segment override prefix
    rep: str | None = None          # "rep" (F3) or "repne" (F2) when not a mandatory prefix
    lock: bool = False
    addr16: bool = False            # 16-bit addressing (67 prefix, or a16 code)
    mod: int | None = None
    reg: int | None = None
    rm: int | None = None
    base: int | None = None         # memory operand (GPR numbers)
    index: int | None = None
    sib_index: int | None = None    # SIB.index as encoded (a VSIB operand's vector register)
    scale: int = 1
    disp: int = 0
    moffs: int | None = None        # MOV AL/AX/EAX, moffs: the offset
    vvvv: int | None = None
    aaa: int = 0                    # EVEX opmask register
    z: bool = False
    b: bool = False
    ll: int = 0
    opreg: int | None = None        # +r / +i register in the opcode's low bits
    imm: bytes = b""                # every immediate byte, in order

    @property
    def is_mem(self) -> bool:
        return self.mod is not None and self.mod != 3

    @property
    def is4(self) -> int:
        return (self.imm[-1] >> 4) & 7 if self.imm else 0

    def imm_value(self, k: int, size: int) -> int:
        return int.from_bytes(self.imm[k:k + size], "little")

    @property
    def static_bits(self) -> int:
        """Encoding bits a result may depend on besides the operands (EVEX b/z/L'L: rounding
        control and masking mode; REP)."""
        return (self.b << 0) | (self.z << 1) | (self.ll << 2) | ((self.aaa != 0) << 4) | \
            ((self.rep is not None) << 5)

    @property
    def default_seg(self) -> str:
        if self.seg:
            return self.seg
        return "ss" if self.base in (EBP, ESP) else "ds"


def _modrm(code: bytes, i: int, addr16: bool, disp8n: int):
    """ModRM/SIB/displacement from ``code[i]``: (next index, fields) or an error string."""
    if i >= len(code):
        return "truncated ModRM"
    m = code[i]
    i += 1
    mod, reg, rm = m >> 6, (m >> 3) & 7, m & 7
    f = dict(mod=mod, reg=reg, rm=rm)
    if mod == 3:
        return i, f
    if addr16:
        if mod == 0 and rm == 6:
            base, index, dsz = None, None, 2
        else:
            (base, index), dsz = RM16[rm], {0: 0, 1: 1, 2: 2}[mod]
        if i + dsz > len(code):
            return "truncated displacement"
        disp = int.from_bytes(code[i:i + dsz], "little", signed=dsz == 1)
        if dsz == 1:
            disp *= disp8n          # EVEX compressed displacement, in 16-bit addressing too
        f.update(base=base, index=index, scale=1, disp=disp & 0xFFFF)
        return i + dsz, f
    scale, index = 1, None
    if rm == 4:
        if i >= len(code):
            return "truncated SIB"
        sib = code[i]
        i += 1
        scale, idx, base = 1 << (sib >> 6), (sib >> 3) & 7, sib & 7
        index = None if idx == 4 else idx
        f["sib_index"] = idx
        if base == 5 and mod == 0:
            base, dsz = None, 4
        else:
            dsz = {0: 0, 1: 1, 2: 4}[mod]
    elif rm == 5 and mod == 0:
        base, dsz = None, 4
    else:
        base, dsz = rm, {0: 0, 1: 1, 2: 4}[mod]
    if i + dsz > len(code):
        return "truncated displacement"
    disp = int.from_bytes(code[i:i + dsz], "little", signed=dsz == 1)
    if dsz == 1:
        disp *= disp8n
    f.update(base=base, index=index, scale=scale, disp=disp & 0xFFFFFFFF)
    return i + dsz, f


def decode(layout: dict, encoding: str, code: bytes) -> Instance | str:
    """The operands of ``code`` as an instance of the code ``layout`` describes, or why not."""
    i = 0
    seg = rep = None
    lock = has66 = has67 = False
    while i < len(code) and code[i] in LEGACY_PREFIXES:
        p = code[i]
        if p in SEG_PREFIX:
            seg = SEG_PREFIX[p]
        elif p == 0xF0:
            lock = True
        elif p == 0x66:
            has66 = True
        elif p == 0x67:
            has67 = True
        else:
            rep = "rep" if p == 0xF3 else "repne"
        i += 1
    addr16 = has67 or layout["addrsize"] == 16
    f: dict = {}
    opcode = bytes.fromhex(layout["opcode"])
    mandatory_rep = False
    if encoding in ("legacy", "3dnow"):
        esc = ESCAPES[layout["map"]] if encoding == "legacy" else b"\x0f\x0f"
        if code[i:i + len(esc)] != esc:
            return "escape bytes do not match"
        i += len(esc)
        if encoding == "legacy":
            body = code[i:i + len(opcode)]
            if len(body) < len(opcode):
                return "truncated opcode"
            if layout["plus"]:
                if body[:-1] != opcode[:-1] or body[-1] & 0xF8 != opcode[-1] & 0xF8:
                    return "opcode does not match"
                f["opreg"] = body[-1] & 7
            elif body != opcode:
                return "opcode does not match"
            i += len(opcode)
        # A mandatory F2/F3 is part of the opcode, not a REP prefix (SDM Vol. 2A 2.1.2).
        mandatory_rep = layout.get("mandatory") in ("f2", "f3")
    elif encoding in ("vex", "xop"):
        lead = 0xC4 if encoding == "vex" else 0x8F
        if i < len(code) and encoding == "vex" and code[i] == 0xC5:
            if i + 1 >= len(code):
                return "truncated VEX"
            b1 = code[i + 1]
            mmap, w, vvvv, ll = 1, 0, (~b1 >> 3) & 0xF, (b1 >> 2) & 1
            i += 2
        elif i < len(code) and code[i] == lead:
            if i + 2 >= len(code):
                return "truncated VEX/XOP"
            b1, b2 = code[i + 1], code[i + 2]
            mmap, vvvv, ll = b1 & 0x1F, (~b2 >> 3) & 0xF, (b2 >> 2) & 1
            i += 3
        else:
            return "no VEX/XOP prefix"
        if mmap != layout["map"]:
            return "VEX/XOP map does not match"
        f.update(vvvv=vvvv & 7, ll=ll)
    elif encoding == "evex":
        if i + 3 >= len(code) or code[i] != 0x62:
            return "no EVEX prefix"
        p0, p1, p2 = code[i + 1], code[i + 2], code[i + 3]
        if p0 & 7 != layout["map"]:
            return "EVEX map does not match"
        f.update(vvvv=(~p1 >> 3) & 7, aaa=p2 & 7, z=bool(p2 >> 7), b=bool(p2 & 0x10),
                 ll=(p2 >> 5) & 3)
        i += 4
    else:
        return f"unknown encoding {encoding!r}"
    if encoding in ("vex", "xop", "evex"):
        body = code[i:i + len(opcode)]
        if body != opcode:
            return "opcode does not match"
        i += len(opcode)
    if layout["modrm"]:
        n = layout.get("disp8n_bcst", 1) if f.get("b") else layout.get("disp8n", 1)
        r = _modrm(code, i, addr16, n)
        if isinstance(r, str):
            return r
        i, more = r
        f.update(more)
    imm = bytearray()
    for t in layout["imm"]:
        if t == "mo":
            size = 2 if addr16 else 4
            if i + size > len(code):
                return "truncated offset"
            f["moffs"] = int.from_bytes(code[i:i + size], "little")
            i += size
            continue
        size = IMM_BYTES[t]
        if i + size > len(code):
            return "truncated immediate"
        imm += code[i:i + size]
        i += size
    if encoding == "3dnow":
        if i >= len(code) or code[i] != opcode[-1]:
            return "3DNow! suffix does not match"
        i += 1
    if i != len(code):
        return f"{len(code) - i} bytes left over"
    if mandatory_rep:
        rep = None
    return Instance(i, seg, rep, lock, addr16, imm=bytes(imm), **f)
