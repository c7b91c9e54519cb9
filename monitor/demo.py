"""The demonstration guest: a small multiboot kernel written by pgvirt from the forms' own bytes.

Every instruction is encoded from its form's encoding (``Form.enc``: opcode bytes, ModRM
extension, immediates) by ``Asm`` and checked on the way out: the monitor's matcher must name
exactly that form for the bytes, and the form's decoder must read them back at that length.  So
every instruction of the kernel is modelled, and every monitor can emulate any of them.

The kernel prints over VGA and port 0xE9, installs its own GDT (with a call gate) and IDT,
programs the 8259A pair and the 8254 (100 Hz), takes timer and keyboard interrupts, and uses one
instance of each class of Robin and Irvine's sensitive instructions so that the result shows on
the screen:

1. ``mov eax, cs`` reads the RPL of CS to pick its first message (the first of them to run);
2. ``sgdt`` finds its GDT and prints the base;
3. ``smsw`` prints the machine status word;
4. ``pushfd`` tests IF (before STI: it should be clear) and prints EFLAGS;
5. ``lar`` prints the access rights of its data segment, ``verr`` tries it with RPL 3;
6. a far ``call`` through a call gate, whose target prints the RPL of the caller's CS;
7. ``pushfd; cli; ...; popfd`` restores IF around a critical section, then the kernel waits for
   timer ticks with HLT, echoes scan codes from the keyboard, prints "done" and stops
   (``cli; hlt``).

Run natively it finishes; trap-and-emulate diverges at (1), and after (7) its ticks stop because
the POPFD that should have set IF again was never seen by the monitor.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from pgvirt.emulator import states as layout
from pgvirt.model import isa

from . import decode

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)

LOAD = 0x100000
TEXT = 0x101000
DATA = 0x104000
BSS = 0x106000
STACK_TOP = 0x108000
VGA = 0xB8000
TICKS_WANTED = 90         # 0.9 virtual seconds: every key of KEYS arrives meanwhile
PIT_COUNT = 11932          # 1193182 Hz / 11932 = 100 Hz
CODE_SEL, DATA_SEL, GATE_SEL = 0x08, 0x10, 0x18
TIMER_VECTOR, KBD_VECTOR = 0x20, 0x21


class AsmError(ValueError):
    pass


@dataclass
class _Ins:
    at: int
    form: str
    code: bytearray
    fixups: list = field(default_factory=list)     # (offset in code, size, label, relative)


class Asm:
    """Instructions by form name; operands as the form's encoding takes them."""

    def __init__(self, base: int):
        self.base = base
        self.ins: list[_Ins] = []
        self.labels: dict[str, int] = {}
        self.size = 0

    def label(self, name: str) -> None:
        if name in self.labels:
            raise AsmError(f"label {name} defined twice")
        self.labels[name] = self.base + self.size

    def here(self, name: str, offset: int) -> None:
        """A label ``offset`` bytes past the current position (inside the next instruction:
        an immediate a program rewrites)."""
        self.labels[name] = self.base + self.size + offset

    def i(self, form: str, *, reg: int | None = None, rm: int | None = None,
          mem: tuple | int | None = None, imm=None, imm2: int | None = None) -> None:
        """Emit ``form``.  ``reg``: the register of a +r opcode or of ModRM.reg; ``rm``: a
        register operand; ``mem``: an absolute address or (base register, displacement);
        ``imm``: an immediate or a label (relative for cb/cd, absolute for id and cp)."""
        f = isa.get(form)
        e = f.enc
        code = bytearray(e.opcode)
        fix = []
        if e.plus_r:
            r = e.fixed_reg if e.fixed_reg is not None else reg
            if r is None:
                raise AsmError(f"{form}: needs a register")
            code[-1] += r
        if e.modrm is not None:
            field_ = int(e.modrm) if e.modrm != "r" else reg
            if field_ is None:
                raise AsmError(f"{form}: needs ModRM.reg")
            if mem is None:
                if rm is None:
                    raise AsmError(f"{form}: needs a register or memory operand")
                code.append(0xC0 | field_ << 3 | rm)
            elif isinstance(mem, (int, str)):
                code.append(0x05 | field_ << 3)
                fix.append((len(code), 4, mem, False))
                code += bytes(4)
            else:
                base_r, disp = mem              # disp: a number, or a label (32 bits)
                if isinstance(disp, str):
                    mod = 2
                else:
                    mod = 0 if disp == 0 and base_r != EBP else (1 if -128 <= disp < 128 else 2)
                code.append(mod << 6 | field_ << 3 | (4 if base_r == ESP else base_r))
                if base_r == ESP:
                    code.append(0x24)           # SIB: base ESP, no index
                if isinstance(disp, str):
                    fix.append((len(code), 4, disp, False))
                    code += bytes(4)
                elif mod == 1:
                    code += struct.pack("<b", disp)
                elif mod == 2:
                    code += struct.pack("<i", disp)
        for t in e.immediates:
            if t in ("ib", "iw", "id"):
                n = {"ib": 1, "iw": 2, "id": 4}[t]
                if isinstance(imm, str):
                    if n != 4:
                        raise AsmError(f"{form}: a label needs a 32-bit immediate")
                    fix.append((len(code), 4, imm, False))
                    code += bytes(4)
                else:
                    code += (imm & ((1 << 8 * n) - 1)).to_bytes(n, "little")
            elif t in ("cb", "cd"):
                n = 1 if t == "cb" else 4
                fix.append((len(code), n, imm, True))
                code += bytes(n)
            elif t == "cp":
                fix.append((len(code), 4, imm, False))
                code += bytes(4) + (imm2 & 0xFFFF).to_bytes(2, "little")
        self.ins.append(_Ins(self.base + self.size, form, code, fix))
        self.size += len(code)

    def link(self, extern: dict[str, int]) -> bytes:
        names = {**extern, **self.labels}
        out = bytearray()
        for ins in self.ins:
            code = bytearray(ins.code)
            end = ins.at + len(code)
            for off, n, target, rel in ins.fixups:
                if isinstance(target, str):
                    if target not in names:
                        raise AsmError(f"undefined label {target}")
                    v = names[target]
                else:
                    v = target
                if rel:
                    v -= end
                    lo, hi = -(1 << (8 * n - 1)), 1 << (8 * n - 1)
                    if not lo <= v < hi:
                        raise AsmError(f"{ins.form} at {ins.at:#x}: target out of reach")
                code[off:off + n] = (v & ((1 << 8 * n) - 1)).to_bytes(n, "little")
            m = decode.match(bytes(code))
            if m is None or m[0].name != ins.form or m[1] != len(code):
                got = "nothing" if m is None else f"{m[0].name} ({m[1]} bytes)"
                raise AsmError(f"{ins.form} at {ins.at:#x} encodes as {code.hex()}, which the "
                               f"matcher reads as {got}")
            if isa.get(ins.form).decode(bytes(code)).length != len(code):
                raise AsmError(f"{ins.form} at {ins.at:#x}: the form decodes another length")
            out += code
        return bytes(out)


class Data:
    """The data section: bytes with labels and 32-bit fields filled in at link time."""

    def __init__(self, base: int):
        self.base = base
        self.buf = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list = []        # (offset, kind, label)

    def label(self, name: str) -> None:
        self.labels[name] = self.base + len(self.buf)

    def bytes(self, b: bytes) -> None:
        self.buf += b

    def string(self, name: str, text: str) -> None:
        self.label(name)
        self.buf += text.encode("cp437") + b"\0"

    def align(self, n: int) -> None:
        while len(self.buf) % n:
            self.buf.append(0)

    def gate(self, kind: int, label: str) -> None:
        """An interrupt (0xE) or call (0xC) gate to CODE_SEL:label, DPL 0."""
        self.fixups.append((len(self.buf), kind, label))
        self.buf += bytes(8)

    def link(self, names: dict[str, int]) -> bytes:
        out = bytearray(self.buf)
        for off, kind, label in self.fixups:
            out[off:off + 8] = layout.gate(CODE_SEL, names[label], typ=kind)
        return bytes(out)


def _row(r: int, col: int = 0) -> int:
    return VGA + (r * 80 + col) * 2


def _program(a: Asm, d: Data) -> None:
    i = a.i

    def prints(label: str, row: int, col: int = 0, attr: int = 0x07) -> None:
        i("mov_r32_imm32", reg=ESI, imm=label)
        i("mov_r32_imm32", reg=EDI, imm=_row(row, col))
        i("mov_r32_imm32", reg=EBX, imm=attr)
        i("call_rel32", imm="print")

    def printhex(row: int, col: int, digits: int = 8, attr: int = 0x0F) -> None:
        i("mov_r32_imm32", reg=EDI, imm=_row(row, col))
        i("mov_r32_imm32", reg=EBX, imm=attr)
        i("mov_r32_imm32", reg=ECX, imm=4 * (digits - 1))
        i("call_rel32", imm="print_hex")

    def pick(cond_jump: str, yes: str, no: str, row: int, col: int) -> None:
        n = a.size
        i(cond_jump, imm=f"pick{n}_yes")
        prints(no, row, col, 0x0C)
        i("jmp_rel32", imm=f"pick{n}_end")
        a.label(f"pick{n}_yes")
        prints(yes, row, col, 0x0A)
        a.label(f"pick{n}_end")

    # --- entry: EAX = 0x2BADB002, EBX = the multiboot information ---------------------------
    a.label("_start")
    i("mov_r32_imm32", reg=ESP, imm=STACK_TOP)
    i("call_rel32", imm="clear")
    prints("s_banner", 0, 0, 0x1F)
    # (1) the RPL of CS picks the first message
    prints("s_cs", 2)
    i("mov_r_cs", rm=EAX)
    i("and_rm32_imm8", rm=EAX, imm=3)
    i("push_r32", reg=EAX)
    printhex(2, 10, 1)
    i("pop_r32", reg=EAX)
    i("cmp_rm32_imm8", rm=EAX, imm=0)
    pick("je_rel8", "s_ring0", "s_ring3", 2, 13)
    # (2) its own GDT, then SGDT to find it
    i("lgdt_m", mem="gdt_desc")
    i("sgdt_m", mem="sgdt_buf")
    prints("s_gdt", 3)
    i("mov_r32_rm32", reg=EAX, mem="sgdt_base")
    printhex(3, 10)
    i("lidt_m", mem="idt_desc")
    # (3) SMSW
    prints("s_msw", 4)
    i("smsw_r", rm=EAX)
    printhex(4, 10, 4)
    # (4) PUSHFD tests IF, before any STI
    prints("s_flags", 5)
    i("pushfd")
    i("pop_r32", reg=EAX)
    i("push_r32", reg=EAX)
    printhex(5, 10)
    i("pop_r32", reg=EAX)
    i("test_rm32_imm32", rm=EAX, imm=0x200)
    pick("je_rel8", "s_if_off", "s_if_on", 5, 20)
    # (5) LAR and VERR
    prints("s_lar", 6)
    i("mov_r32_imm32", reg=ECX, imm=DATA_SEL)
    i("lar_r", reg=EAX, rm=ECX)
    printhex(6, 10)
    prints("s_verr", 7)
    i("mov_r32_imm32", reg=ECX, imm=DATA_SEL | 3)
    i("verr_r", rm=ECX)
    pick("jne_rel8", "s_verr_no", "s_verr_yes", 7, 20)
    # (6) a far call through the call gate
    prints("s_gate", 8)
    i("call_far_ptr", imm=0, imm2=GATE_SEL)
    # (7) the PICs, the PIT, interrupts on; PUSHFD/CLI/POPFD around a critical section
    for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, TIMER_VECTOR), (0xA1, 0x28),
                        (0x21, 0x04), (0xA1, 0x02), (0x21, 0x01), (0xA1, 0x01),
                        (0x21, 0xFC), (0xA1, 0xFF)):
        i("mov_r32_imm32", reg=EAX, imm=value)
        i("out_imm8_al", imm=port)
    i("mov_r32_imm32", reg=EAX, imm=0x34)          # channel 0, LSB then MSB, mode 2
    i("out_imm8_al", imm=0x43)
    i("mov_r32_imm32", reg=EAX, imm=PIT_COUNT & 0xFF)
    i("out_imm8_al", imm=0x40)
    i("mov_r32_imm32", reg=EAX, imm=PIT_COUNT >> 8)
    i("out_imm8_al", imm=0x40)
    i("sti")
    i("pushfd")
    i("cli")
    i("mov_r32_rm32", reg=EAX, mem="ticks")        # the critical section
    i("mov_rm32_r32", reg=EAX, mem="ticks_seen")
    i("popfd")
    prints("s_wait", 10)
    prints("s_keys", 11)
    a.label("idle")
    i("hlt")
    i("mov_r32_rm32", reg=EAX, mem="ticks")
    i("cmp_rm32_imm8", rm=EAX, imm=TICKS_WANTED)
    i("jb_rel8", imm="idle")
    prints("s_done", 13, 0, 0x0A)
    i("cli")
    a.label("stop")
    i("hlt")
    i("jmp_rel8", imm="stop")

    # --- the call gate's target: the RPL of the CS the far CALL pushed ---------------------
    a.label("gate_target")
    i("mov_r32_rm32", reg=EAX, mem=(ESP, 4))
    i("and_rm32_imm8", rm=EAX, imm=3)
    printhex(8, 29, 1)
    i("retf")

    # --- interrupt handlers ---------------------------------------------------------------------
    saved = (EAX, ECX, EDX, EBX, ESI, EDI)
    a.label("timer")
    for r in saved:
        i("push_r32", reg=r)
    i("mov_r32_rm32", reg=EAX, mem="ticks")
    i("inc_r32", reg=EAX)
    i("mov_rm32_r32", reg=EAX, mem="ticks")
    printhex(10, 30, 4, 0x0E)
    i("mov_r32_imm32", reg=EAX, imm=0x20)
    i("out_imm8_al", imm=0x20)
    for r in reversed(saved):
        i("pop_r32", reg=r)
    i("iretd")

    a.label("keyboard")
    for r in saved:
        i("push_r32", reg=r)
    i("xor_rm32_r32", reg=EAX, rm=EAX)
    i("in_al_imm8", imm=0x60)
    i("test_rm32_imm32", rm=EAX, imm=0x80)
    i("jne_rel8", imm="kbd_eoi")                   # a key release
    i("mov_r32_rm32", reg=EDI, mem="key_at")
    i("mov_r32_imm32", reg=EBX, imm=0x0B)
    i("mov_r32_imm32", reg=ECX, imm=4)
    i("call_rel32", imm="print_hex")
    i("add_rm32_imm8", rm=EDI, imm=2)
    i("mov_rm32_r32", reg=EDI, mem="key_at")
    a.label("kbd_eoi")
    i("mov_r32_imm32", reg=EAX, imm=0x20)
    i("out_imm8_al", imm=0x20)
    for r in reversed(saved):
        i("pop_r32", reg=r)
    i("iretd")

    a.label("unexpected")
    prints("s_unexpected", 20, 0, 0x4F)
    i("cli")
    a.label("dead")
    i("hlt")
    i("jmp_rel8", imm="dead")

    # --- print: ESI = NUL-terminated string, EDI = screen cell, BL = attribute; also to 0xE9
    a.label("print")
    i("movzx_r32_rm8", reg=EAX, mem=(ESI, 0))
    i("cmp_rm32_imm8", rm=EAX, imm=0)
    i("je_rel8", imm="print_end")
    i("out_imm8_al", imm=0xE9)
    i("mov_rm8_r8", reg=EAX, mem=(EDI, 0))
    i("mov_rm8_r8", reg=EBX, mem=(EDI, 1))
    i("add_rm32_imm8", rm=EDI, imm=2)
    i("inc_r32", reg=ESI)
    i("jmp_rel8", imm="print")
    a.label("print_end")
    i("mov_r32_imm32", reg=EAX, imm=0x0A)
    i("out_imm8_al", imm=0xE9)
    i("ret_near")

    # --- print_hex: EAX, from bit ECX down in nibbles, at EDI with attribute BL -----------
    a.label("print_hex")
    i("mov_rm32_r32", reg=EAX, rm=EDX)
    i("shr_rm32_cl", rm=EDX)
    i("and_rm32_imm8", rm=EDX, imm=0x0F)
    i("movzx_r32_rm8", reg=EDX, mem=(EDX, "hex"))
    i("mov_rm8_r8", reg=EDX, mem=(EDI, 0))
    i("mov_rm8_r8", reg=EBX, mem=(EDI, 1))
    i("add_rm32_imm8", rm=EDI, imm=2)
    i("sub_rm32_imm8", rm=ECX, imm=4)
    i("jge_rel8", imm="print_hex")
    i("ret_near")

    # --- clear: the screen to grey on black ----------------------------------------------------
    a.label("clear")
    i("mov_r32_imm32", reg=EDI, imm=VGA)
    i("mov_r32_imm32", reg=EAX, imm=0x07200720)
    a.label("clear_loop")
    i("mov_rm32_r32", reg=EAX, mem=(EDI, 0))
    i("add_rm32_imm8", rm=EDI, imm=4)
    i("cmp_rm32_imm32", rm=EDI, imm=VGA + 80 * 25 * 2)
    i("jb_rel8", imm="clear_loop")
    i("ret_near")

    # --- data ----------------------------------------------------------------------------------
    d.align(8)
    d.label("gdt")
    d.bytes(bytes(8) + layout.descriptor(0, 0xFFFFFFFF, layout.code_attr(0))
            + layout.descriptor(0, 0xFFFFFFFF, layout.data_attr(0)))
    d.gate(0xC, "gate_target")                     # 0x18: call gate, DPL 0
    d.label("gdt_end")
    d.align(8)
    d.label("idt")
    for v in range(0x30):
        d.gate(0xE, "timer" if v == TIMER_VECTOR else "keyboard" if v == KBD_VECTOR else "unexpected")
    d.label("idt_end")
    d.align(4)
    d.bytes(b"\0\0")
    d.label("gdt_desc")
    d.bytes(struct.pack("<HI", 4 * 8 - 1, 0))      # base filled by _fill
    d.bytes(b"\0\0")
    d.label("idt_desc")
    d.bytes(struct.pack("<HI", 0x30 * 8 - 1, 0))
    d.bytes(b"\0\0")
    d.label("sgdt_buf")
    d.bytes(b"\0\0")
    d.label("sgdt_base")
    d.bytes(bytes(4))
    d.align(4)
    d.label("ticks")
    d.bytes(bytes(4))
    d.label("ticks_seen")
    d.bytes(bytes(4))
    d.label("key_at")
    d.bytes(struct.pack("<I", _row(11, 10)))
    d.string("hex", "0123456789ABCDEF")
    d.string("s_banner", " pgvirt demonstration guest: Robin & Irvine's instructions, visibly ".ljust(80))
    d.string("s_cs", "CS.RPL  =")
    d.string("s_ring0", "ring 0: the kernel runs as the kernel")
    d.string("s_ring3", "not ring 0: the kernel runs deprivileged")
    d.string("s_gdt", "SGDT    =")
    d.string("s_msw", "SMSW    =")
    d.string("s_flags", "PUSHFD  =")
    d.string("s_if_off", "IF = 0 before STI, as loaded")
    d.string("s_if_on", "IF = 1 before any STI")
    d.string("s_lar", "LAR 10h =")
    d.string("s_verr", "VERR 13h ")
    d.string("s_verr_yes", "readable at RPL 3")
    d.string("s_verr_no", "not readable at RPL 3")
    d.string("s_gate", "call gate: caller's CS.RPL =")
    d.string("s_wait", f"timer ticks (want {TICKS_WANTED}):")
    d.string("s_keys", "keys    :")
    d.string("s_done", "done: every tick arrived")
    d.string("s_unexpected", "unexpected interrupt or exception")


def _fill_tables(data: bytearray, names: dict[str, int]) -> None:
    for desc, table in (("gdt_desc", "gdt"), ("idt_desc", "idt")):
        off = names[desc] - DATA + 2
        data[off:off + 4] = names[table].to_bytes(4, "little")


def kernel(program=None) -> tuple[bytes, bytes, dict[str, int], int]:
    """(text, data, symbols, entry) of ``program(asm, data)`` (default: the demonstration)."""
    a, d = Asm(TEXT), Data(DATA)
    (program or _program)(a, d)
    names = {**a.labels, **d.labels}
    text = a.link(names)
    data = bytearray(d.link(names))
    if "gdt_desc" in names:
        _fill_tables(data, names)
    if TEXT + len(text) > DATA or DATA + len(data) > BSS:
        raise AsmError("the kernel outgrew its layout")
    return text, bytes(data), names, a.labels["_start"]


# --- the ELF file ------------------------------------------------------------------------------
def _multiboot_header() -> bytes:
    magic, flags = 0x1BADB002, 0x00000003              # page-aligned, memory information
    return struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)


def image(program=None) -> bytes:
    """The demonstration kernel (or ``program``'s) as an ELF32 executable with a multiboot
    header; ``program(asm, data)`` emits the code at ``TEXT`` and the data at ``DATA``, and its
    entry point is the label ``_start``."""
    text, data, names, entry = kernel(program)
    header = _multiboot_header()
    # File: ELF header, program headers, then each section at a file offset congruent to its
    # address modulo 4 KiB (so the PT_LOAD segments map them), then the section headers.
    phnum, shstr = 3, b"\0.multiboot\0.text\0.data\0.bss\0.symtab\0.strtab\0.shstrtab\0"
    off_hdr, off_text, off_data = 0x1000, 0x2000, 0x4000
    syms = sorted((v, k) for k, v in names.items() if TEXT <= v < TEXT + len(text))
    strtab = b"\0"
    symtab = bytes(16)
    for addr, name in syms:
        symtab += struct.pack("<IIIBBH", len(strtab), addr, 0, 0x12 if not name.startswith(
            ("pick", "print_end", "clear_loop", "kbd_eoi", "idle", "stop", "dead")) else 0x10,
            0, 2)
        strtab += name.encode() + b"\0"
    body = bytearray(off_data + len(data))
    body[off_hdr:off_hdr + len(header)] = header
    body[off_text:off_text + len(text)] = text
    body[off_data:off_data + len(data)] = data
    off_sym = len(body)
    body += symtab
    off_str = len(body)
    body += strtab
    off_shstr = len(body)
    body += shstr
    while len(body) % 4:
        body.append(0)
    off_sh = len(body)
    name = {n: shstr.index(n.encode() + b"\0") for n in
            (".multiboot", ".text", ".data", ".bss", ".symtab", ".strtab", ".shstrtab")}
    SHF_W, SHF_A, SHF_X = 1, 2, 4
    shdrs = [bytes(40),
             struct.pack("<10I", name[".multiboot"], 1, SHF_A, LOAD, off_hdr, len(header), 0, 0, 4, 0),
             struct.pack("<10I", name[".text"], 1, SHF_A | SHF_X, TEXT, off_text, len(text), 0, 0, 16, 0),
             struct.pack("<10I", name[".data"], 1, SHF_A | SHF_W, DATA, off_data, len(data), 0, 0, 8, 0),
             struct.pack("<10I", name[".bss"], 8, SHF_A | SHF_W, BSS, off_data + len(data),
                         STACK_TOP - BSS, 0, 0, 16, 0),
             struct.pack("<10I", name[".symtab"], 2, 0, 0, off_sym, len(symtab), 6, 1, 4, 16),
             struct.pack("<10I", name[".strtab"], 3, 0, 0, off_str, len(strtab), 0, 0, 1, 0),
             struct.pack("<10I", name[".shstrtab"], 3, 0, 0, off_shstr, len(shstr), 0, 0, 1, 0)]
    body += b"".join(shdrs)
    ehdr = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
        "<HHIIIIIHHHHHH", 2, 3, 1, entry, 52, off_sh, 0, 52, 32, phnum, 40, len(shdrs), 7)
    phdrs = (struct.pack("<8I", 1, off_hdr, LOAD, LOAD, len(header), len(header), 4, 0x1000)
             + struct.pack("<8I", 1, off_text, TEXT, TEXT, len(text), len(text), 5, 0x1000)
             + struct.pack("<8I", 1, off_data, DATA, DATA, len(data), STACK_TOP - DATA, 6, 0x1000))
    body[0:52] = ehdr
    body[52:52 + len(phdrs)] = phdrs
    return bytes(body)


def write(path: str | os.PathLike, program=None) -> str:
    """Write the demonstration guest (or ``program``'s) to ``path`` atomically; its path."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(image(program))
    os.replace(tmp, path)
    return path


# Keys to type at the demonstration (the kernel echoes their scan codes while it waits).
KEYS = "p g v i r t"

__all__ = ["Asm", "Data", "AsmError", "kernel", "image", "write", "TICKS_WANTED", "KEYS"]
