"""Hand encoders for the few instructions the test kernel itself runs (SDM Vol. 2, ch. 2-5).

No assembler is involved: each helper returns the bytes of one instruction, in the encodings the
SDM's opcode tables give (``/r`` forms with a 32-bit absolute displacement, ModRM mod=00 rm=101,
unless said otherwise).  ``Code`` collects bytes at a fixed origin with labels and fixups for
relative jumps and absolute addresses.  The instruction *under test* never comes from here: it
is the form's own bytes.
"""

from __future__ import annotations

import struct

MASK32 = 0xFFFFFFFF
GPR = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}
SREG = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}
CS_OVERRIDE = b"\x2e"


def d32(v: int) -> bytes:
    return struct.pack("<I", v & MASK32)


def w16(v: int) -> bytes:
    return struct.pack("<H", v & 0xFFFF)


def _modrm_abs(op: bytes, reg: int, addr: int) -> bytes:
    return op + bytes([reg << 3 | 0x05]) + d32(addr)


# --- 32-bit code ---------------------------------------------------------------------------------
def mov_r_imm(r: str, v: int) -> bytes:            # B8+rd id
    return bytes([0xB8 + GPR[r]]) + d32(v)


def mov_r_abs(r: str, a: int, cs: bool = False) -> bytes:     # 8B /r
    return (CS_OVERRIDE if cs else b"") + _modrm_abs(b"\x8b", GPR[r], a)


def mov_abs_r(a: int, r: str) -> bytes:             # 89 /r
    return _modrm_abs(b"\x89", GPR[r], a)


def mov_sreg_abs(s: str, a: int, cs: bool = True) -> bytes:   # 8E /r, a word operand
    return (CS_OVERRIDE if cs else b"") + _modrm_abs(b"\x8e", SREG[s], a)


def mov_sreg_ax(s: str) -> bytes:                   # 8E /r, register form
    return bytes([0x8E, 0xC0 | SREG[s] << 3])


def mov_ax_imm16(v: int) -> bytes:                  # 66 B8 iw
    return b"\x66\xb8" + w16(v)


def lgdt(a: int) -> bytes:                          # 0F 01 /2
    return CS_OVERRIDE + _modrm_abs(b"\x0f\x01", 2, a)


def lidt(a: int) -> bytes:                          # 0F 01 /3
    return CS_OVERRIDE + _modrm_abs(b"\x0f\x01", 3, a)


def sgdt(a: int) -> bytes:                          # 0F 01 /0
    return _modrm_abs(b"\x0f\x01", 0, a)


def sidt(a: int) -> bytes:                          # 0F 01 /1
    return _modrm_abs(b"\x0f\x01", 1, a)


def lldt(a: int) -> bytes:                          # 0F 00 /2
    return CS_OVERRIDE + _modrm_abs(b"\x0f\x00", 2, a)


def ltr(a: int) -> bytes:                           # 0F 00 /3
    return CS_OVERRIDE + _modrm_abs(b"\x0f\x00", 3, a)


def mov_cr_eax(n: int) -> bytes:                    # 0F 22 /r
    return bytes([0x0F, 0x22, 0xC0 | n << 3])


def mov_eax_cr(n: int) -> bytes:                    # 0F 20 /r
    return bytes([0x0F, 0x20, 0xC0 | n << 3])


def mov_dr_eax(n: int) -> bytes:                    # 0F 23 /r
    return bytes([0x0F, 0x23, 0xC0 | n << 3])


def mov_eax_dr(n: int) -> bytes:                    # 0F 21 /r
    return bytes([0x0F, 0x21, 0xC0 | n << 3])


def jmp_far_abs(a: int) -> bytes:                   # FF /5 m16:32, CS-relative
    return CS_OVERRIDE + _modrm_abs(b"\xff", 5, a)


def jmp_far(sel: int, off: int) -> bytes:           # EA cd iw
    return b"\xea" + d32(off) + w16(sel)


def push_imm(v: int) -> bytes:                      # 68 id
    return b"\x68" + d32(v)


WRMSR, RDMSR, IRETD, PUSHFD, POPFD = b"\x0f\x30", b"\x0f\x32", b"\xcf", b"\x9c", b"\x9d"
CLD, CLI, CLTS, HLT, UD2 = b"\xfc", b"\xfa", b"\x0f\x06", b"\xf4", b"\x0f\x0b"
REP_MOVSB, REP_STOSB, REP_OUTSB = b"\xf3\xa4", b"\xf3\xaa", b"\xf3\x6e"
LODSD, LODSB, STOSD, STOSB, STOSW = b"\xad", b"\xac", b"\xab", b"\xaa", b"\x66\xab"


# --- a code buffer with labels ---------------------------------------------------------------------
class Code:
    """Bytes at ``org`` with labels; ``rel8``/``rel32`` and ``abs32`` fixups resolved by ``finish``."""

    def __init__(self, org: int):
        self.org = org
        self.b = bytearray()
        self.labels: dict[str, int] = {}
        self._fix: list[tuple[int, str, str]] = []

    @property
    def here(self) -> int:
        return self.org + len(self.b)

    def label(self, name: str) -> int:
        if name in self.labels:
            raise ValueError(f"label {name} defined twice")
        self.labels[name] = self.here
        return self.here

    def __call__(self, *parts: bytes) -> "Code":
        for p in parts:
            self.b += p
        return self

    def align(self, n: int) -> None:
        self.b += bytes(-len(self.b) % n)

    def rel(self, op: bytes, name: str, size: int = 4) -> None:
        """``op`` then a ``size``-byte displacement to label ``name`` (jmp/jcc/call)."""
        self.b += op
        self._fix.append((len(self.b), name, f"rel{size}"))
        self.b += bytes(size)

    def abs32(self, op: bytes, name: str, tail: bytes = b"") -> None:
        """``op`` then label ``name``'s address as 4 bytes, then ``tail``."""
        self.b += op
        self._fix.append((len(self.b), name, "abs32"))
        self.b += bytes(4) + tail

    def abs16(self, op: bytes, name: str) -> None:
        """``op`` then label ``name``'s address as 2 bytes (16-bit code below 64 KiB)."""
        self.b += op
        self._fix.append((len(self.b), name, "abs16"))
        self.b += bytes(2)

    def jmp(self, name: str) -> None:
        self.rel(b"\xe9", name)

    def jcc(self, cc: int, name: str) -> None:     # 0F 80+cc cd
        self.rel(bytes([0x0F, 0x80 | cc]), name)

    def call(self, name: str) -> None:
        self.rel(b"\xe8", name)

    def finish(self) -> bytes:
        for at, name, kind in self._fix:
            target = self.labels[name]
            if kind == "abs32":
                self.b[at:at + 4] = d32(target)
            elif kind == "abs16":
                if target > 0xFFFF:
                    raise ValueError(f"label {name} above 64 KiB in 16-bit code")
                self.b[at:at + 2] = w16(target)
            else:
                size = int(kind[3:])
                disp = target - (self.org + at + size)
                lo, hi = -(1 << (8 * size - 1)), 1 << (8 * size - 1)
                if not lo <= disp < hi:
                    raise ValueError(f"jump to {name} out of rel{size} range")
                self.b[at:at + size] = disp.to_bytes(size, "little", signed=True)
        return bytes(self.b)


# condition codes (SDM Vol. 2 Appendix B.1.4.7)
JB, JAE, JE, JNE, JBE, JA = 0x2, 0x3, 0x4, 0x5, 0x6, 0x7
