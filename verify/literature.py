"""What the literature says, kept apart from every verdict.

Nothing here feeds a classification: reports only *compare* the solver's answers with this list
so a reader sees where the derivation departs from the paper; tests use it as an oracle.
"""

from __future__ import annotations

import re

_SREG = r"\b(cs|ss|ds|es|fs|gs)\b"
_FAR_MEM = r"^ptr \["

# Robin & Irvine 2000, "Analysis of the Intel Pentium's Ability to Support a Secure VMM", §4.
# Each entry: Capstone mnemonic (upper case), a pattern its operands must match (None: any),
# and the paper's wording.
ROBIN_IRVINE: tuple[tuple[str, str | None, str], ...] = (
    ("SGDT", None, "SGDT"), ("SIDT", None, "SIDT"), ("SLDT", None, "SLDT"),
    ("SMSW", None, "SMSW"), ("STR", None, "STR"),
    ("PUSHFD", None, "PUSHF"), ("POPFD", None, "POPF"),
    ("PUSHF", None, "PUSHF"), ("POPF", None, "POPF"),       # the 16-bit operand-size forms
    ("LAR", None, "LAR"), ("LSL", None, "LSL"), ("VERR", None, "VERR"), ("VERW", None, "VERW"),
    ("PUSH", rf"^{_SREG}$", "PUSH (segment register)"),
    ("POP", rf"^{_SREG}$", "POP (segment register)"),
    ("MOV", _SREG, "MOV (segment register)"),
    ("LCALL", None, "CALL (far)"), ("CALL", _FAR_MEM, "CALL (far)"),
    ("LJMP", None, "JMP (far)"), ("JMP", _FAR_MEM, "JMP (far)"),
    ("RETF", None, "RET (far)"), ("INT", None, "INT n"),
)

# The mnemonics as the paper names them (the oracle: every one must appear among violations).
ROBIN_IRVINE_MNEMONICS = tuple(dict.fromkeys(e[2].split()[0] for e in ROBIN_IRVINE))


def robin_irvine_entry(mnemonic: str, asm: str) -> str | None:
    """The paper's wording for this form, or None when the paper does not list it."""
    ops = asm.split(" ", 1)[1] if " " in asm else ""
    for mn, pattern, words in ROBIN_IRVINE:
        if mn == mnemonic and (pattern is None or re.search(pattern, ops)):
            return words
    return None


# SDM Vol. 3A 5.9 "Privileged Instructions" (plus RDTSCP, gated like RDTSC): Capstone mnemonic and
# an operand pattern.  The oracle: each is privileged under every profile and never a violation.
SDM_CPL0: tuple[tuple[str, str | None], ...] = (
    ("LGDT", None), ("LLDT", None), ("LTR", None), ("LIDT", None),
    ("MOV", r"\bcr[0-8]\b"), ("LMSW", None), ("CLTS", None), ("MOV", r"\bdr[0-7]\b"),
    ("INVD", None), ("WBINVD", None), ("INVLPG", None), ("HLT", None), ("RDMSR", None),
    ("WRMSR", None), ("RDPMC", None), ("RDTSC", None), ("RDTSCP", None),
)


def sdm_cpl0_entry(mnemonic: str, asm: str) -> str | None:
    ops = asm.split(" ", 1)[1] if " " in asm else ""
    for mn, pattern in SDM_CPL0:
        if mn == mnemonic and (pattern is None or re.search(pattern, ops)):
            return mn if pattern is None else f"{mn} {pattern}"
    return None
