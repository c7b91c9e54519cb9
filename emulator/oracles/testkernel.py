"""The test kernel: a 1.44 MB boot floppy, written from Python, that runs a batch of cases per boot.

No assembler: the kernel's own code comes from the encoders in ``x86``, the instruction under
test is the case's own bytes.  One boot does this (every address below is linear = physical;
paging stays off):

1. **Boot sector** (real mode, 0x7C00): reads the image track by track with INT 13h and copies
   it to ``IMAGE_BASE`` (1 MiB) with INT 15h AH=87h, enables A20 (port 0x92), enters 32-bit
   protected mode and jumps to the kernel.
2. **Kernel** (``KCODE``): its own GDT, IDT and TSS; masks the PICs and NMI; zeroes low memory
   (whatever the BIOS left there); prints a boot frame.  Then for each *record*:
   copies the case's memory runs into place and jumps to the record's *stub*.
3. **Stub** (generated per case, CPL 0): writes the MSRs, DR0-DR3/DR6, CR2, CR3, CR0, CR4 and
   DR7; loads ES/DS/FS/GS (and SS at CPL 0) from temporary descriptor tables that encode the
   state's hidden caches (one LGDT/LLDT per register, so stale caches are reproduced), LDTR and
   TR the same way; then LGDT/LIDT the state's own GDTR/IDTR, the general registers, and enters
   CS:EIP - at CPL 0 by a far JMP (EFLAGS set before by an IRETD to itself), at CPL 1-3 by IRETD,
   which loads CS, EFLAGS, SS and ESP in one step.  CS (and SS at CPL > 0) are read from the
   state's own tables there, whose slot for them is made to hold the cache's descriptor for the
   run.  A null ES/DS/FS/GS with RPL > 0 cannot survive that IRETD (it sets such selectors to
   0), so a few *pre-code* bytes before EIP load them at the state's CPL.
4. **The instruction** runs once.  Every exception it raises reaches the kernel through a *task
   gate* the harness put in the state's IDT (for the vectors the instruction does not itself
   deliver through, ``CATCH_VECTORS``): a task switch needs no valid stack in the state, saves
   EIP, EFLAGS, the general registers and the selectors into the state's TSS, and pushes the
   error code on the kernel's stack.  An instruction that completes lands on ``UD2`` placed at
   the fall-through address (and at the model's predicted landing): the same catch, at another
   EIP.  One catch TSS serves four vectors: the gate's TSS selector carries the vector's low
   two bits as its RPL, and TR keeps that RPL after the switch (checked at boot by
   ``vectors_per_tss``).
5. **Catch** (kernel): reads TR, the old task's save area, GDTR, IDTR, CR0-CR4, DR0-DR7 (a DR7.GD
   left set is noted and cleared by the #DB it raises), the MSRs and every memory byte the
   record asks for, sends one *frame* over port 0xE9, zeroes every byte the case wrote or could
   have touched, and takes the next record.

Frames are ``"PG" type:u8 case:u32 len:u16 payload[len] s1:u32 s2:u32``: ``s1`` the sum of the
bytes from ``type`` to the end of the payload, ``s2`` the sum of the running ``s1`` (a Fletcher
sum mod 2**32), so a dropped, repeated or changed byte is noticed.  Types: ``B`` boot, ``R`` a
result, ``S`` a fault of the stub itself (the emulator refuses the state), ``E`` end of batch; the VMX
mode (``vmxkernel``) adds ``L`` (a VM instruction failed).

What this harness observes (``OBSERVED``) and what it does not - the hidden segment caches, LDTR,
CR0.TS and EFLAGS.RF after a task switch, port values - is data, so comparisons skip exactly the
unobserved fields.  The VMX mode (``vmxkernel``) replaces steps 3-5 (the VMCS guest-state area
instead of the stub, VM exits instead of task gates) behind the same record and frame format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from pgvirt.model import state as st
from pgvirt.model.outcome import Fault, Next

from .. import states as layout
from ..validity import Harness, ImpossibleState, UnsupportedState, check
from . import x86
from .x86 import Code, d32, w16

MASK32 = 0xFFFFFFFF
MODES = ("protected", "vmx")    # vmx: vmxkernel (VM exits instead of task gates); svm: not yet

# --- where everything lives -----------------------------------------------------------------------
IMAGE_BASE = 0x100000           # the boot sector copies the whole image here
KCODE = IMAGE_BASE + 0x200
KGDT = IMAGE_BASE + 0x3000      # null, kernel code 0x08, kernel data 0x10, main TSS 0x18
KIDT = IMAGE_BASE + 0x3400      # 32 interrupt gates: faults of the stub itself
MAIN_TSS = IMAGE_BASE + 0x3C00
CATCH_TSS = IMAGE_BASE + 0x4000  # one TSS per group of four vectors, 0x80 apart
BOOT_RECORD = IMAGE_BASE + 0x5F00
RECORDS = IMAGE_BASE + 0x6000
VARS = 0x300000
KSTACK = 0x318000
CATCH_TOP = 0x31C000
OUTBUF = 0x320000
KERNEL_LO, KERNEL_HI = IMAGE_BASE, 0x340000
FILL_TOP = 0x1000000
FILLED = ((0, 0xA0000), (KERNEL_HI, FILL_TOP))
# What memory no case has set holds: INT1 (ICEBP), a one-byte trap that needs no gate privilege,
# so a run that goes somewhere no landing pad is stops at its first instruction (#DB, caught).
# The instruction under test never sees it: every byte it reads is written before the run.
FILL = 0xF1
FLOPPY = 1474560
TRACK = 18 * 512
VERSION = 2

KCS, KDS, KTSS = 0x08, 0x10, 0x18
NCATCH = 20                     # vectors 0..19 are caught: every exception IA-32 defines
CATCH_VECTORS = tuple(range(NCATCH))
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))
ESSENTIAL = frozenset((1, 6, 8, 10, 11, 12, 13, 17))   # what the forms and the landing pads raise

# kernel variables (VARS + offset)
V_CUR, V_ESP, V_GROUP, V_PHASE, V_GD, V_TR = 0, 4, 8, 9, 10, 12
V_GDTR, V_IDTR, V_REGS = 16, 24, 32           # V_REGS: cr0 cr2 cr3 cr4 dr0 dr1 dr2 dr3 dr6 dr7
V_VIFESP = 80
V86_STACK = 0x31A000                           # SS0:ESP0 of the main TSS: the way back from v86
REG_NAMES = ("cr0", "cr2", "cr3", "cr4", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")

# the old task's save area in a 32-bit TSS (SDM Vol. 3A 7.2.1): EIP at 0x20 up to GS at 0x5C
TSS_SAVED = (0x20, 0x60)
SAVED = ("eip", "eflags", "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
         "es", "cs", "ss", "ds", "fs", "gs")


def v(off: int) -> int:
    return VARS + off


# --- the boot sector (16-bit real mode) -----------------------------------------------------------
def boot_sector(tracks: int, entry: int = KCODE) -> bytes:
    """Loads ``tracks`` tracks (cylinder/head order) to 0x10000 one at a time, copies each to
    IMAGE_BASE + n * 9 KiB (INT 15h AH=87h), then enters protected mode at ``entry``."""
    c = Code(0x7C00)
    c(b"\xfa\x31\xc0\x8e\xd8\x8e\xd0\xbc\x00\x7c\xfc")     # cli; ds = ss = 0; sp = 7C00; cld
    c.abs16(b"\x88\x16", "drive")                          # mov [drive], dl
    c.label("next")
    c.abs16(b"\xa1", "track")                              # mov ax, [track]
    c.abs16(b"\x3b\x06", "ntracks")                        # cmp ax, [ntracks]
    c.rel(b"\x0f\x83", "done", 2)                          # jae done
    c.abs16(b"\xc6\x06", "tries"); c(b"\x05")             # mov byte [tries], 5
    c.label("read")
    c.abs16(b"\xa1", "track")
    # ch = track >> 1 (cylinder), cl = 1 (first sector), dh = track & 1 (head)
    c(b"\x89\xc1\xd1\xe9\x88\xcd\xb1\x01\x88\xc6\x80\xe6\x01")
    c.abs16(b"\x8a\x16", "drive")                          # mov dl, [drive]
    c(b"\xbb\x00\x10\x8e\xc3\x31\xdb\xb8\x12\x02\xcd\x13")   # es:bx = 1000:0; ah=2 al=18; int 13h
    c.rel(b"\x73", "copy", 1)                              # jnc copy
    c.abs16(b"\xfe\x0e", "tries")                          # dec byte [tries]
    c.rel(b"\x0f\x84", "fail", 2)
    c(b"\x31\xc0"); c.abs16(b"\x8a\x16", "drive"); c(b"\xcd\x13")   # reset the drive
    c.rel(b"\xe9", "read", 2)
    c.label("copy")
    c(b"\x31\xc0\x8e\xc0"); c.abs16(b"\xbe", "gdt15")     # es = 0; si = gdt15
    c(b"\xb9" + w16(TRACK // 2) + b"\xb4\x87\xcd\x15")    # cx = words; ah = 87h; int 15h
    c.rel(b"\x0f\x82", "fail", 2)
    c.abs16(b"\x81\x06", "dst"); c(w16(TRACK))            # add word [dst], 9216
    c.abs16(b"\x80\x16", "dsthi"); c(b"\x00")             # adc byte [dsthi], 0
    c.abs16(b"\xff\x06", "track")                          # inc word [track]
    c.rel(b"\xe9", "next", 2)
    c.label("fail")                                        # '!' on port 0xE9, then halt
    c(b"\xb0\x21\xe6\xe9\xf4"); c.rel(b"\xeb", "fail", 1)
    c.label("done")
    c(b"\xfa\xe4\x92\x0c\x02\x24\xfe\xe6\x92")             # A20 on through port 0x92
    c.abs16(b"\x0f\x01\x16", "gdtr")                       # lgdt [gdtr]
    c(b"\x0f\x20\xc0\x0c\x01\x0f\x22\xc0")                 # CR0.PE = 1
    c.abs32(b"\x66\xea", "pm", w16(0x08))                  # jmp 08:pm (ptr16:32)
    c.label("pm")                                          # 32-bit code from here
    c(b"\x66\xb8\x10\x00\x8e\xd8\x8e\xc0\x8e\xd0\x8e\xe0\x8e\xe8")
    c(x86.mov_r_imm("esp", 0x9F000), x86.mov_r_imm("eax", entry), b"\xff\xe0")
    c.label("drive"); c(b"\x00")
    c.label("tries"); c(b"\x00")
    c.label("track"); c(w16(0))
    c.label("ntracks"); c(w16(tracks))
    c.align(8)
    c.label("gdt")
    c(bytes(8), layout.descriptor(0, MASK32, layout.code_attr(0)),
      layout.descriptor(0, MASK32, layout.data_attr(0)))
    c.label("gdtr"); c.abs16(b"\x17\x00", "gdt"); c(b"\x00\x00")
    c.align(8)
    c.label("gdt15")                                       # INT 15h AH=87h's six descriptors
    c(bytes(16), b"\xff\xff\x00\x00\x01\x93\x00\x00")     # source: 0x10000
    c(b"\xff\xff"); c.label("dst"); c(w16(IMAGE_BASE & 0xFFFF)); c.label("dsthi")
    c(bytes([IMAGE_BASE >> 16 & 0xFF]), b"\x93\x00\x00", bytes(16))
    body = c.finish()
    if len(body) > 510:
        raise AssertionError(f"boot sector is {len(body)} bytes")
    return body + bytes(510 - len(body)) + b"\x55\xaa"


# --- the kernel (32-bit, CPL 0, flat segments) ------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """The kernel's bytes from KCODE up to RECORDS and the addresses records refer to."""

    blob: bytes
    labels: Mapping[str, int]
    groups: int

    def catch_entry(self, g: int) -> int:
        return self.labels[f"catch{g}"]


def _gate(sel: int, off: int, typ: int, dpl: int = 0) -> bytes:
    return layout.gate(sel, off, typ, dpl)


def _tss(eip: int, esp: int, cs: int, ds: int) -> bytes:
    """A 32-bit TSS (SDM Vol. 3A 7.2.1) a task switch enters at ``eip`` on stack ``esp``."""
    t = bytearray(0x68)
    t[0x04:0x0A] = d32(KSTACK) + w16(KDS)                 # SS0:ESP0 (never used: all at CPL 0)
    t[0x20:0x28] = d32(eip) + d32(0x2)
    t[0x38:0x3C] = d32(esp)
    for off, sel in ((0x48, ds), (0x4C, cs), (0x50, ds), (0x54, ds)):
        t[off:off + 2] = w16(sel)
    t[0x66:0x68] = w16(0x68)                             # no I/O bitmap
    return bytes(t)


@lru_cache(maxsize=None)
def kernel(groups: int = NCATCH // 4) -> Kernel:
    c = Code(KCODE)
    A = x86

    def store_eax(off):                       # mov [VARS+off], eax
        c(b"\xa3" + d32(v(off)))

    kernel_start(c, VARS, KERNEL_HI, v(V_CUR), BOOT_RECORD)         # entry from the boot sector
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb8" + d32(VERSION) + A.STOSD)
    c(b"\xb8" + d32(groups) + A.STOSD)
    c(b"\xb0\x42"); c.call("send")                                      # 'B'
    c(b"\xbe" + d32(RECORDS))                                           # esi = first record

    # the record loop: esi = record
    c.label("record")
    c(b"\x89\x35" + d32(v(V_CUR)))                                     # mov [cur], esi
    c(b"\x8b\x46\x08\x85\xc0"); c.jcc(x86.JE, "finish")                 # stub 0: end
    c(b"\x8b\x76\x0c"); c.call("copy_runs")                             # esi = [esi+12]
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x00")
    c(b"\xa1" + d32(v(V_CUR)) + b"\xff\x60\x08")                        # jmp [record+8]

    c.label("after")                                                    # the case is done
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x0c"); c.call("fill_copied") # esi = [rec+12]
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x14"); c.call("fill_runs")   # esi = [rec+20]
    c(b"\x8b\x35" + d32(v(V_CUR)) + b"\x8b\x36"); c.jmp("record")       # esi = [rec]

    c.label("finish")
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb0\x45"); c.call("send")          # 'E'
    c(b"\xb0\x01\xe6\xf4")                                              # QEMU isa-debug-exit
    c(b"\x66\xba\x00\x89")                                              # Bochs: "Shutdown"
    for ch in b"Shutdown":
        c(b"\xb0" + bytes([ch]) + b"\xee")
    c.label("halt")
    c(A.CLI, A.HLT); c.rel(b"\xeb", "halt", 1)

    routines(c)

    # catch: entered by a task switch (the case's exception or its landing pad's #UD)
    for g in range(groups):
        c.label(f"catch{g}")
        c(b"\x89\x25" + d32(v(V_ESP)))                                  # mov [esp_at_entry], esp
        c(b"\xc6\x05" + d32(v(V_GROUP)) + bytes([g]))
        c.jmp("catch")
    c.label("catch")
    c(A.sgdt(v(V_GDTR)), A.sidt(v(V_IDTR)))
    c(b"\x0f\x00\xc8\x66\xa3" + d32(v(V_TR)))                           # str ax; mov [tr], ax
    for k, n in enumerate((0, 2, 3, 4)):
        c(A.mov_eax_cr(n)); store_eax(V_REGS + 4 * k)
    c.abs32(b"\x2e\x0f\x01\x15", "kgdtr")
    c.abs32(b"\x2e\x0f\x01\x1d", "kidtr")
    c.abs32(b"\xea", "catch_kernel", w16(KCS))
    c.label("catch_kernel")
    _kernel_segments(c)
    c(x86.mov_r_imm("esp", KSTACK), b"\x6a\x02\x9d")                  # EFLAGS = 2 (NT off)
    c(b"\xc6\x05" + d32(v(V_GD)) + b"\x00")
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x01")                          # a #DB now is DR7.GD
    for k, n in enumerate((0, 1, 2, 3, 6, 7)):
        c(A.mov_eax_dr(n)); store_eax(V_REGS + 16 + 4 * k)
    c(x86.mov_r_imm("eax", 0x400), A.mov_dr_eax(7))
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x02", A.CLTS)
    c(b"\xbf" + d32(OUTBUF + 9))
    c(b"\xa0" + d32(v(V_GROUP)), A.STOSB)                               # group
    c(b"\x66\xa1" + d32(v(V_TR)), A.STOSW)                              # TR (RPL = vector & 3)
    c(b"\xa1" + d32(v(V_ESP)), A.STOSD)                                 # ESP at entry
    c(b"\xa1" + d32(CATCH_TOP - 4), A.STOSD)                            # the error code slot
    c(b"\x0f\xb6\x1d" + d32(v(V_GROUP)) + b"\xc1\xe3\x07\x81\xc3" + d32(CATCH_TSS))
    c(b"\x0f\xb7\x03", A.STOSW)                                         # back link: the old TR
    c(b"\xbe" + d32(v(V_GDTR)) + b"\xa5\x66\xa5")                       # GDTR
    c(b"\xbe" + d32(v(V_IDTR)) + b"\xa5\x66\xa5")                       # IDTR
    c(b"\xbe" + d32(v(V_REGS)) + b"\xb9" + d32(10) + b"\xf3\xa5")       # CRs, DRs
    c(b"\xa0" + d32(v(V_GD)), A.STOSB)
    # the old task's save area: at the base of the TSS in TR when the catch happened, which the
    # record names ([record+28]; TR's cache cannot be read, and its descriptor may be elsewhere)
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x40\x1c", A.STOSD)
    c(b"\x8d\x70" + bytes([TSS_SAVED[0]]) + b"\xb9" + d32(TSS_SAVED[1] - TSS_SAVED[0]), A.REP_MOVSB)
    # MSRs: [record+24] -> u32 ids until 0xFFFFFFFF
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x18")
    c.label("msr")
    c(A.LODSD, b"\x83\xf8\xff"); c.jcc(x86.JE, "msr_done")
    c(b"\x89\xc1\x56", A.RDMSR, A.STOSD, b"\x89\xd0", A.STOSD, b"\x5e"); c.jmp("msr")
    c.label("msr_done")
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x10"); c.call("dump_runs")   # memory
    c(b"\xb0\x52"); c.call("send")                                      # 'R'
    c.jmp("after")

    # faults of the stub itself (kernel IDT, interrupt gates): vector, code, EIP -> an 'S' frame
    for vec in range(32):
        c.label(f"fault{vec}")
        if vec == 6:        # the UD2 that ends the v86 round trip of ``vif``
            c(b"\x2e\x80\x3d" + d32(v(V_PHASE)) + b"\x03"); c.jcc(x86.JE, "vif_back")
        if vec == 1:        # DR7.GD left set by the case: the #DB clears it; note it, re-run the MOV
            c(b"\x2e\x80\x3d" + d32(v(V_PHASE)) + b"\x01"); c.jcc(x86.JNE, "fault1b")
            c(b"\xc6\x05" + d32(v(V_GD)) + b"\x01", A.IRETD)
            c.label("fault1b")
        if vec not in ERROR_CODE_VECTORS:
            c(b"\x6a\x00")
        c(b"\x6a" + bytes([vec])); c.jmp("fault")
    c.label("fault")
    c(b"\x58\x5b\x59")                                                  # vector, code, EIP
    c.abs32(b"\x2e\x0f\x01\x15", "kgdtr")
    c.abs32(b"\xea", "fault_kernel", w16(KCS))
    c.label("fault_kernel")
    _kernel_segments(c)
    c(x86.mov_r_imm("esp", KSTACK), b"\x6a\x02\x9d")
    c(b"\xbf" + d32(OUTBUF + 9), A.STOSD, b"\x89\xd8", A.STOSD, b"\x89\xc8", A.STOSD)
    c(b"\xb0\x53"); c.call("send")                                      # 'S'
    c.jmp("after")

    # vif: EFLAGS.VIF/VIP := EAX's.  QEMU loads them only on an IRETD to virtual-8086 mode, so
    # every case takes that path: IRETD to a UD2 in v86 mode (at FFFF:xxxx, in the image above
    # 1 MiB), whose #UD comes back through the kernel's IDT with VIF/VIP as the frame had them.
    c.label("vif")
    c(b"\x89\xc3\x31\xc0", A.mov_cr_eax(4), b"\x89\xd8")                     # CR4 = 0 (no VME)
    c(b"\x80\x25" + d32(KGDT + KTSS + 5) + bytes([0xFD]))                      # main TSS available
    c(b"\x66\xb9" + w16(KTSS) + b"\x0f\x00\xd9")                            # ltr cx
    c(b"\x89\x25" + d32(v(V_VIFESP)))
    c(b"\x6a\x00" * 5 + b"\x68" + d32(0xFFF0))                               # GS..SS, SP
    c(b"\x0d" + d32((1 << 17) | 2), b"\x50")                                 # EFLAGS | VM
    c(b"\x68" + d32(0xFFFF))
    c.abs32(b"\x68", "v86_ip")                                                # patched below
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x03", A.IRETD)
    c.label("vif_back")                 # DS..GS are null on the way out of v86 mode
    _kernel_segments(c)
    c(b"\x8b\x25" + d32(v(V_VIFESP)))
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x00\xc3")
    c.label("v86_trap")
    c(A.UD2)
    c.align(8)
    c.label("kgdtr"); c(w16(KGDT_LIMIT) + d32(KGDT), bytes(2))
    c.label("kidtr"); c(w16(32 * 8 - 1) + d32(KIDT), bytes(2))
    c.labels["v86_ip"] = c.labels["v86_trap"] - 0xFFFF0
    code = c.finish()
    if c.here > KGDT:
        raise AssertionError(f"kernel code runs to {c.here:#x}, past the GDT at {KGDT:#x}")
    img = bytearray(RECORDS - KCODE)

    def put(addr: int, data: bytes) -> None:
        img[addr - KCODE:addr - KCODE + len(data)] = data

    put(KCODE, code)
    put(KGDT, bytes(8) + layout.descriptor(0, MASK32, layout.code_attr(0))
        + layout.descriptor(0, MASK32, layout.data_attr(0))
        + layout.descriptor(MAIN_TSS, 0x67, layout.TSS_AVAIL_ATTR))
    put(KIDT, b"".join(_gate(KCS, c.labels[f"fault{n}"], 0xE) for n in range(32)))
    main = bytearray(_tss(c.labels["halt"], KSTACK, KCS, KDS))
    main[0x04:0x08] = d32(V86_STACK)
    put(MAIN_TSS, bytes(main))
    put(BOOT_RECORD, d32(0) + d32(0xFFFFFFFF))
    return Kernel(bytes(img), dict(c.labels), groups)


KGDT_LIMIT = 4 * 8 - 1


def routines(c: Code) -> None:
    """The kernel's subroutines, shared with the VMX kernel (``vmxkernel``): ``copy_runs``,
    ``fill_copied``, ``fill_runs``, ``dump_runs`` (the record's lists) and ``send`` (one frame)."""
    A = x86
    # copy_runs: esi -> (addr u32, len u32, bytes) ... until len 0
    c.label("copy_runs")
    c(A.LODSD, b"\x89\xc7", A.LODSD, b"\x89\xc1\x85\xc9"); c.jcc(x86.JE, "copy_done")
    c(A.REP_MOVSB); c.jmp("copy_runs")
    c.label("copy_done"); c(b"\xc3")
    # fill_copied: the copy list again (addr, len, bytes) ... : its bytes get FILL back
    c.label("fill_copied")
    c(A.LODSD, b"\x89\xc7", A.LODSD, b"\x89\xc1\x85\xc9"); c.jcc(x86.JE, "copied_done")
    c(b"\x01\xce\xb0" + bytes([FILL]), A.REP_STOSB); c.jmp("fill_copied")   # add esi, ecx
    c.label("copied_done"); c(b"\xc3")
    # fill_runs: esi -> (addr, len) ... until len 0: the bytes get FILL back
    c.label("fill_runs")
    c(A.LODSD, b"\x89\xc7", A.LODSD, b"\x89\xc1\x85\xc9"); c.jcc(x86.JE, "zero_done")
    c(b"\xb0" + bytes([FILL]), A.REP_STOSB); c.jmp("fill_runs")
    c.label("zero_done"); c(b"\xc3")
    # dump_runs: esi -> (addr, len) ... until len 0; appended at edi
    c.label("dump_runs")
    c(A.LODSD, b"\x89\xc3", A.LODSD, b"\x89\xc1\x85\xc9"); c.jcc(x86.JE, "dump_done")
    c(b"\x56\x89\xde", A.REP_MOVSB, b"\x5e"); c.jmp("dump_runs")
    c.label("dump_done"); c(b"\xc3")

    # send: al = type, edi = end of the payload at OUTBUF+9
    c.label("send")
    c(b"\xa2" + d32(OUTBUF + 2))                                        # type
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x40\x04\xa3" + d32(OUTBUF + 3))  # case id
    c(b"\x89\xf8\x2d" + d32(OUTBUF + 9) + b"\x66\xa3" + d32(OUTBUF + 7))   # len
    c(b"\xbe" + d32(OUTBUF + 2) + b"\x89\xf9\x29\xf1\x31\xdb\x31\xd2")
    c.label("sum")
    c(b"\x0f\xb6\x06\x46\x01\xc3\x01\xda\x49"); c.jcc(x86.JNE, "sum")
    c(b"\x89\xd8", A.STOSD, b"\x89\xd0", A.STOSD)
    c(b"\x66\xc7\x05" + d32(OUTBUF) + b"PG")
    c(b"\xbe" + d32(OUTBUF) + b"\x89\xf9\x29\xf1\x66\xba\xe9\x00", A.REP_OUTSB, b"\xc3")




def _kernel_segments(c: Code) -> None:
    c(b"\x66\xb8" + w16(KDS) + b"\x8e\xd8\x8e\xc0\x8e\xd0\x8e\xe0\x8e\xe8")


# --- what a full-system harness is --------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One emulator as the test kernel sees it: its CPU's MSRs (state fields), its usable RAM
    (below ``ram_top``; the top MiB holds BIOS tables) and the ports it must not be written to."""

    name: str
    ram_top: int
    msrs: tuple[tuple[str, int], ...]
    io_unsafe: tuple[tuple[int, int, str], ...]     # (first, last, what)
    groups: int = NCATCH // 4                        # catch TSSs; 4 vectors each (TR keeps RPL)
    cannot: object = None                            # state -> why this emulator cannot hold it

    def usable(self, a: int) -> bool:
        return a < 0xA0000 or KERNEL_HI <= a < self.ram_top - 0x100000

    @property
    def vectors_per_tss(self) -> int:
        return -(-NCATCH // self.groups)


HARNESS = Harness("DR7 enables breakpoints: the test kernel's own code and data would hit them")
# CR4 bits above the model's (UMIP, bit 11) that change how the test kernel's own code runs
# (LA57, PCIDE, CET and later); VMXE, FSGSBASE and OSXSAVE leave it alone, and SMEP, SMAP and PKE
# act only on paged accesses (SDM Vol. 3A 4.6), which the kernel never makes.
CR4_UNSAFE = 0xFFFFF000 & ~((1 << 13) | (1 << 16) | (1 << 18) | (1 << st.CR4_SMEP)
                            | (1 << st.CR4_SMAP) | (1 << st.CR4_PKE))
# DR6: bits 4-11 and 16-31 read as 1, bit 12 as 0 (RTM's bit 16 aside: no RTM here); DR7: bit 10
# reads as 1, bits 11-12 and 14-15 as 0 (SDM Vol. 3B 17.2.3-17.2.4)
DR_FIXED = (("dr6", 0xFFFF0FF0, 0x1000), ("dr7", 0x400, 0xD800))

# What a catch observes, as (field, mask of the bits observed).  Not observed: the hidden segment
# caches, LDTR (the task switch loads the kernel's), TR's cache, CR0.TS and EFLAGS.RF (the task
# switch sets TS; RF is the fault's), the TSC and performance counters (they run), port values
# (devices, not memory), halted/caches/tlb (no instruction reads them).
_ALL = MASK32
OBSERVED_BASE = dict(
    [(r, _ALL) for r in st.GPRS] + [("eip", _ALL), ("flags", st.USER_FLAGS_MASK),
                                     ("sysflags", st.SYS_FLAGS_MASK & ~(1 << st.RF)), ("cpl", 3)]
    + [(s, 0xFFFF) for s in st.SREGS]
    + [("gdtr_base", _ALL), ("gdtr_limit", 0xFFFF), ("idtr_base", _ALL), ("idtr_limit", 0xFFFF),
       ("tr", 0xFFFF), ("cr0", _ALL & ~(1 << st.CR0_TS)), ("cr2", _ALL), ("cr3", _ALL),
       ("cr4", _ALL)]
    + [(d, _ALL) for d in ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")])


def observed(target: Target) -> dict[str, int]:
    out = dict(OBSERVED_BASE)
    for name, _ in target.msrs:
        if name != "tsc":
            out[name] = (1 << st.FIELD[name].width) - 1
    return out


# --- one case as a record ------------------------------------------------------------------------
@dataclass
class Decoder:
    """What reading a case's frame needs: the state as loaded, where the instruction is, which
    stub bytes did what, the addresses dumped and the MSR fields read."""

    state: dict
    code_at: int
    entry: tuple[int, int]                 # (CS, EIP) of the instruction
    precode: tuple[int, int]               # EIP range of the pre-code (empty at CPL 0)
    stub: tuple[int, int]
    steps: list                            # (stub offset, label)
    dumps: list
    msr_fields: list
    clobber: frozenset                     # addresses the catch's task switch writes (planned)
    landings: tuple


def _runs(addrs: Iterable[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a in sorted(set(addrs)):
        if out and out[-1][0] + out[-1][1] == a:
            out[-1][1] += 1
        else:
            out.append([a, 1])
    return [(a, n) for a, n in out]


def _table(runs: Sequence[tuple[int, int]]) -> bytes:
    return b"".join(d32(a) + d32(n) for a, n in runs) + d32(0) + d32(0)


def _pseudo(base: int, limit: int) -> bytes:
    return w16(limit) + d32(base) + bytes(2)


class _Layout:
    """Memory the run needs, built with every conflict refused by name."""

    def __init__(self, target: Target, state: dict, reserved: set[int]):
        self.t = target
        self.writes: dict[int, int] = {}
        self.harness: dict[int, int] = {}
        self.reserved = reserved                    # bytes the instruction reads or writes
        self.avoid: set[int] = set()                # bytes the harness must leave alone
        for a, b in state["mem"].items():
            self.writes[a] = b

    def free(self, addr: int, n: int) -> bool:
        for k in range(n):
            a = (addr + k) & MASK32
            if (a in self.writes or a in self.reserved or a in self.avoid or a in self.harness
                    or not self.t.usable(a)):
                return False
        return True

    def place(self, addr: int, data: bytes, what: str) -> None:
        for k, b in enumerate(data):
            a = (addr + k) & MASK32
            if not self.t.usable(a):
                raise UnsupportedState(f"{what} at {a:#x} would lie outside {self.t.name}'s usable "
                                       "RAM")
            if a in self.harness and self.harness[a] != b:
                raise UnsupportedState(f"{what} at {a:#x} collides with another of the harness's "
                                       "own bytes")
            if a in self.avoid:
                raise UnsupportedState(f"{what} at {a:#x} lies where the catch's task switch "
                                       "saves the registers")
            if a in self.reserved and self.writes.get(a, 0) != b:
                raise UnsupportedState(f"{what} at {a:#x} would change a byte the instruction "
                                       "reads or writes")
            self.harness[a] = b
            self.writes[a] = b


def _cache_descriptor(s: Mapping, seg: str) -> bytes:
    try:
        return layout.descriptor(s[f"{seg}_base"], s[f"{seg}_limit"], s[f"{seg}_attr"])
    except layout.EncodingError as e:
        raise ImpossibleState(f"{seg}_attr/{seg}_limit: {e}; caches come from descriptors") from None


def _system_descriptor(base: int, limit: int, attr: int, what: str) -> bytes:
    if limit > 0xFFFFF:
        if limit & 0xFFF != 0xFFF:
            raise ImpossibleState(f"{what} limit {limit:#x} cannot come from a descriptor")
        attr |= layout.G_BIT
    try:
        return layout.descriptor(base, limit, attr)
    except layout.EncodingError as e:
        raise ImpossibleState(f"{what}: {e}") from None


def build_record(case, target: Target, kern: Kernel, base: int, case_id: int
                 ) -> tuple[bytes, Decoder]:
    """The record of ``case`` at address ``base`` and how to read its frame.  Raises ``StateError`` (one line) for a state this harness cannot
    run (see the module docstring)."""
    s = check(case.state, HARNESS)
    s["mem"] = dict(s["mem"])
    code = bytes(case.code)
    if not code or len(code) > 15:
        raise UnsupportedState(f"an instruction is 1 to 15 bytes, not {len(code)}")
    cpl = s["cpl"]
    for name, fixed1, fixed0 in DR_FIXED:
        if s[name] & fixed1 != fixed1 or s[name] & fixed0:
            raise UnsupportedState(f"{name} = {s[name]:#x}: its reserved bits read as fixed values "
                                   f"(ones {fixed1:#x}, zeros {fixed0:#x}; SDM Vol. 3B 17.2.3-17.2.4), "
                                   "which no MOV can change")
    why = target.cannot(s) if target.cannot else None
    if why:
        raise UnsupportedState(why)
    code_at, foot = place_instruction(s, code, case.mem, target,
                                f" (0-0x9ffff, {KERNEL_HI:#x}-{target.ram_top - 0x100001:#x})")
    stores = {a & MASK32 for a in getattr(case, "stores", ())}
    for p in sorted(set(case.io)):
        for lo, hi, what in target.io_unsafe:
            if lo <= p <= hi:
                raise UnsupportedState(f"port {p:#x} is {what} on {target.name}")
    post = case.expect.state if isinstance(case.expect, Next) else None
    if post is not None:
        if post["cr0"] >> st.CR0_PG & 1:
            raise UnsupportedState("the instruction turns paging on: the test kernel has no page "
                                   "tables")
        if not post["cr0"] & 1:
            raise UnsupportedState("the instruction leaves protected mode")
        if post.get("halted"):
            raise UnsupportedState("the instruction halts the CPU, and nothing would wake it "
                                   "(interrupts are masked)")
        if post["dr7"] & 0xFF:
            raise UnsupportedState("the instruction arms breakpoints the test kernel would hit")
        if post["sysflags"] >> st.VM & 1:
            raise UnsupportedState("the instruction enters virtual-8086 mode")
    unchecked = getattr(case, "unchecked", None)
    if unchecked is not None and post is None:
        # a fault the emulator might not raise must not leave the test kernel without a machine
        if unchecked["cr0"] >> st.CR0_PG & 1 or not unchecked["cr0"] & 1:
            raise UnsupportedState("were its check skipped, the instruction would turn paging on "
                                   "or leave protected mode, and the test kernel with it")
        if unchecked["cr4"] & CR4_UNSAFE:
            raise UnsupportedState(f"were its check skipped, the instruction would set CR4 bits "
                                   f"{unchecked['cr4'] & CR4_UNSAFE:#x} the test kernel cannot run under")
    L = _Layout(target, s, foot)
    for a in foot:
        L.writes.setdefault(a, 0)           # unspecified bytes read 0 (state.concrete)

    # where the catch's task switch will save the registers: the TSS in TR afterwards
    clobber: set[int] = set()
    for tr_base in {s["tr_base"], (post or s)["tr_base"]}:
        clobber |= {(tr_base + k) & MASK32 for k in range(*TSS_SAVED)}
    for a in sorted(clobber):
        if not target.usable(a):
            raise UnsupportedState(f"the TSS save area at {a:#x} lies outside {target.name}'s "
                                   "usable RAM")
        if a in stores:
            raise UnsupportedState(f"the instruction stores to {a:#x}, in its TSS's save area, "
                                   "which the catch's task switch overwrites")
    L.avoid = set(clobber)

    # CS (and SS above CPL 0) are entered through the state's own table
    def slot(seg: str) -> int:
        sel = s[seg]
        if sel & 4:
            if s["ldtr"] & 0xFFFC == 0:
                raise UnsupportedState(f"{seg.upper()} names the LDT but LDTR is null: the harness "
                                       f"enters {seg.upper()} through the state's own tables")
            tbase, tlimit = s["ldtr_base"], s["ldtr_limit"]
        else:
            tbase, tlimit = s["gdtr_base"], s["gdtr_limit"]
        if (sel | 7) > tlimit:
            raise UnsupportedState(f"{seg.upper()} selector {sel:#x} lies beyond its table's limit "
                                   f"{tlimit:#x}: the harness enters {seg.upper()} through the "
                                   "state's own table")
        return (tbase + (sel & 0xFFF8)) & MASK32

    entered = ["cs"] + (["ss"] if cpl else [])
    if cpl and s["cs"] & 0xFFFC == s["ss"] & 0xFFFC:
        raise UnsupportedState(f"CS {s['cs']:#x} and SS {s['ss']:#x} name one descriptor but hold "
                               "different caches; one IRETD cannot load both")
    for seg in entered:
        L.place(slot(seg), _cache_descriptor(s, seg), f"{seg.upper()}'s descriptor")

    # pre-code: null ES/DS/FS/GS with RPL > 0 are loaded after the IRETD, at the state's CPL
    late = [g for g in ("es", "ds", "fs", "gs") if cpl and s[g] & 0xFFFC == 0 and s[g] & 3]
    pre = b"".join(x86.mov_ax_imm16(s[g]) + x86.mov_sreg_ax(g) for g in late)
    if pre:
        pre += x86.mov_r_imm("eax", s["eax"])
        if s["eip"] < len(pre):
            raise UnsupportedState("no room before EIP for the pre-code that loads the null "
                                   f"selectors of {', '.join(g.upper() for g in late)}")
        L.place(code_at - len(pre), pre, "the pre-code loading null selectors")
    entry_eip = s["eip"] - len(pre)

    # landing pads: the fall-through address, and where the model says the instruction goes
    fall = (code_at + len(code)) & MASK32
    landings = [fall]
    if post is not None:
        land = (post["cs_base"] + post["eip"]) & MASK32
        if land == code_at:
            raise UnsupportedState("the instruction lands on itself: a catch there cannot tell it "
                                   "from a fault")
        if land != fall:
            landings.append(land)
    for pad in landings:
        L.place(pad, x86.UD2, "a landing pad (UD2)")
    # where the instruction would go if the emulator skipped a check the model makes: a pad there
    # too, so such a deviation is caught at once instead of running on
    for pad in getattr(case, "landings", ()):
        pad &= MASK32
        if pad in landings or pad == code_at:
            continue
        if not target.usable(pad) or not target.usable(pad + 1):
            raise UnsupportedState(f"the instruction's unchecked landing {pad:#x} lies outside "
                                   f"{target.name}'s usable RAM: a deviation there would run on")
        if L.free(pad, 2):
            L.place(pad, x86.UD2, "a landing pad (UD2)")
            landings.append(pad)

    # the catch: task gates in the IDT(s) the instruction leaves, TSS descriptors in the GDT(s)
    gdts = {(s["gdtr_base"], s["gdtr_limit"])}
    idts = {(s["idtr_base"], s["idtr_limit"])}
    if post is not None:
        gdts.add((post["gdtr_base"], post["gdtr_limit"]))
        idts.add((post["idtr_base"], post["idtr_limit"]))
    # the catch gates' bytes first: the GDT slots below must not take them
    for b, lim in idts:
        for vec in CATCH_VECTORS:
            at = b + 8 * vec
            if not any(((at + k) & MASK32) in foot for k in range(8)):
                L.avoid |= {(at + k) & MASK32 for k in range(8)}
    need = 2 + target.groups
    found: list[int] = []
    top = min(lim for _, lim in gdts) // 8
    for i in range(1, min(top, 8191) + 1):
        if all(L.free(b + 8 * i, 8) for b, lim in gdts if 8 * i + 7 <= lim):
            found.append(i)
            if len(found) == need:
                break
    if len(found) < need:
        raise UnsupportedState(f"the GDT (limit {min(l for _, l in gdts):#x}) has no room for the "
                               f"harness's {need} descriptors")
    kcs, kds, tss_idx = found[0] << 3, found[1] << 3, found[2:]
    for b, _ in gdts:
        L.place(b + kcs, layout.descriptor(0, MASK32, layout.code_attr(0)), "the catch's code descriptor")
        L.place(b + kds, layout.descriptor(0, MASK32, layout.data_attr(0)), "the catch's data descriptor")
        for g, i in enumerate(tss_idx):
            L.place(b + 8 * i, layout.descriptor(CATCH_TSS + 0x80 * g, 0x67, layout.TSS_AVAIL_ATTR),
                    "a catch TSS descriptor")
    vpt = target.vectors_per_tss
    idt_foot = set()
    for b, lim in idts:
        if lim < 8 * NCATCH - 1:
            raise UnsupportedState(f"the IDT limit {lim:#x} is below {8 * NCATCH - 1:#x}: the "
                                   f"harness catches vectors 0-{NCATCH - 1} through it")
        for vec in CATCH_VECTORS:
            at = b + 8 * vec
            if any(((at + k) & MASK32) in foot for k in range(8)):
                if vec in ESSENTIAL:
                    raise UnsupportedState(f"the instruction reads IDT entry {vec}, through which "
                                           "the harness catches its faults")
                idt_foot.add(vec)
                continue
            g = vec // vpt
            sel = (tss_idx[g] << 3) | (vec % vpt if vpt == 4 else 0)
            L.avoid -= {(at + k) & MASK32 for k in range(8)}
            L.place(at, layout.gate(sel, 0, 0x5, 0), f"the task gate for vector {vec}")
    kwrites = [(CATCH_TSS + 0x80 * g, _tss(kern.catch_entry(g), CATCH_TOP, kcs, kds))
               for g in range(target.groups)]

    # the stub
    stub_at = base + 0x20

    def generate(data_at: int):
        """The stub at stub_at with its data at data_at (every operand is a fixed-size
        absolute address, so the code's length does not depend on data_at)."""
        c = Code(stub_at)
        data = bytearray()
        steps: list[tuple[int, str]] = []

        def datum(b: bytes, align: int = 8) -> int:
            data.extend(bytes(-len(data) % align))
            at = data_at + len(data)
            data.extend(b)
            return at

        def step(label: str) -> None:
            steps.append((c.here - stub_at, label))

        for name, msr in target.msrs:
            value = s[name]
            step(f"WRMSR {msr:#x} ({name} = {value:#x})")
            c(x86.mov_r_imm("ecx", msr), x86.mov_r_imm("eax", value & MASK32),
              x86.mov_r_imm("edx", value >> 32), x86.WRMSR)
        vif = s["sysflags"] & (1 << st.VIF | 1 << st.VIP)
        step(f"setting EFLAGS.VIF/VIP to {vif:#x} by a round trip through virtual-8086 mode")
        c(x86.mov_r_imm("eax", vif), x86.mov_r_imm("ebx", kern.labels["vif"]), b"\xff\xd3")
        for n in (0, 1, 2, 3, 6):
            step(f"MOV DR{n} ({s[f'dr{n}']:#x})")
            c(x86.mov_r_imm("eax", s[f"dr{n}"]), x86.mov_dr_eax(n))
        for n in (2, 3, 0, 4):
            step(f"MOV CR{n} ({s[f'cr{n}']:#x})")
            c(x86.mov_r_imm("eax", s[f"cr{n}"]), x86.mov_cr_eax(n))
        if cpl == 0:
            step(f"IRETD setting EFLAGS {st.EFLAGS_FIXED | s['flags'] | s['sysflags']:#x}")
            c(x86.push_imm(st.EFLAGS_FIXED | s["flags"] | s["sysflags"]), x86.push_imm(KCS))
            c.abs32(b"\x68", "after_eflags", x86.IRETD)
            c.label("after_eflags")
        step(f"MOV DR7 ({s['dr7']:#x})")
        c(x86.mov_r_imm("eax", s["dr7"]), x86.mov_dr_eax(7))

        anchors = 0

        def anchor() -> int:
            nonlocal anchors
            anchors += 1
            return datum(bytes(8))

        kgdt = _pseudo(KGDT, KGDT_LIMIT)
        regs = ["es", "ds", "fs", "gs"] + (["ss"] if cpl == 0 else [])
        for g in regs:
            sel = s[g]
            step(f"loading {g.upper()}={sel:#x} with the state's cache")
            if sel & 0xFFFC == 0:
                gdtr, ldt_sel, gdtr2 = kgdt, 0, kgdt
            else:
                desc = _cache_descriptor(s, g)
                at = anchor()
                data[at - data_at:at - data_at + 8] = desc
                table = (at - (sel & 0xFFF8)) & MASK32
                if sel & 4:
                    holder = datum(bytes(8) + layout.descriptor(table, 0xFFFF, layout.LDT_ATTR))
                    gdtr, ldt_sel, gdtr2 = _pseudo(holder, 15), 0x08, kgdt
                else:
                    gdtr, ldt_sel, gdtr2 = kgdt, 0, _pseudo(table, 0xFFFF)
            rec = datum(gdtr + w16(ldt_sel) + bytes(6) + gdtr2 + w16(sel) + bytes(6))
            c(x86.lgdt(rec), x86.lldt(rec + 8), x86.lgdt(rec + 0x10), x86.mov_sreg_abs(g, rec + 0x18))
        # LDTR and TR from temporary GDT entries holding their caches
        for what, sel, desc in (
                ("LDTR", s["ldtr"], None if s["ldtr"] & 0xFFFC == 0 else
                 _system_descriptor(s["ldtr_base"], s["ldtr_limit"], layout.LDT_ATTR, "LDTR")),
                ("TR", s["tr"], _system_descriptor(s["tr_base"], s["tr_limit"],
                                                   (s["tr_attr"] & ~0x2) & ~layout.G_BIT, "TR"))):
            if sel & 4:
                raise ImpossibleState(f"{what} {sel:#x} names the LDT: {what} selectors index the GDT")
            if desc is None:
                step(f"LLDT {sel:#x} (null)")
                c(x86.lldt(datum(w16(sel))))
                continue
            if sel & 0xFFFC == 0:
                raise UnsupportedState(f"{what} holds a null selector with a loaded cache: LTR cannot "
                                       "load a null selector")
            at = anchor()
            data[at - data_at:at - data_at + 8] = desc
            rec = datum(_pseudo((at - (sel & 0xFFF8)) & MASK32, 0xFFFF) + w16(sel))
            step(f"{'LLDT' if what == 'LDTR' else 'LTR'} {sel:#x} with the state's cache")
            c(x86.lgdt(rec), (x86.lldt if what == "LDTR" else x86.ltr)(rec + 8))
        step("LGDT/LIDT the state's GDTR and IDTR")
        c(x86.lgdt(datum(_pseudo(s["gdtr_base"], s["gdtr_limit"]))),
          x86.lidt(datum(_pseudo(s["idtr_base"], s["idtr_limit"]))))
        step("loading the general registers")
        for r in st.GPRS:
            if r != "esp":
                c(x86.mov_r_imm(r, s[r]))
        if cpl == 0:
            ptr = datum(d32(entry_eip) + w16(s["cs"]))
            c(x86.mov_r_imm("esp", s["esp"]))
            step(f"far JMP to CS:EIP {s['cs']:#x}:{entry_eip:#x}")
            c(x86.jmp_far_abs(ptr))
        else:
            frame = datum(d32(entry_eip) + d32(s["cs"])
                          + d32(st.EFLAGS_FIXED | s["flags"] | s["sysflags"]) + d32(s["esp"])
                          + d32(s["ss"]))
            c(x86.mov_r_imm("esp", frame))
            step(f"IRETD to CS:EIP {s['cs']:#x}:{entry_eip:#x} at CPL {cpl}")
            c(x86.IRETD)
        return c.finish(), data, steps

    stub, _, _ = generate(stub_at + 0x400)
    data_at = stub_at + len(stub) + (-len(stub) % 8)
    stub, data, steps = generate(data_at)
    if stub_at + len(stub) > data_at:
        raise AssertionError(f"stub of {len(stub)} bytes overruns its data")
    stub_end = data_at + len(data)

    # the lists the kernel walks
    dumps = sorted(a for a in foot if a not in clobber)
    cleans = (foot | clobber) - set(L.writes)          # what the copy list does not cover
    esp_at = (s["ss_base"] + s["esp"]) & MASK32
    cleans |= {(esp_at + k) & MASK32 for k in range(-64, 64)}
    cleans = {a for a in cleans if target.usable(a) and a not in L.writes}
    wr_runs = _runs(L.writes)
    runs_blob = b"".join(d32(a) + d32(n) + bytes(L.writes[a + k] for k in range(n))
                         for a, n in wr_runs)
    runs_blob += b"".join(d32(a) + d32(len(b)) + b for a, b in kwrites) + d32(0) + d32(0)
    at = stub_end + (-stub_end % 8)
    runs_at, at = at, at + len(runs_blob)
    dump_blob = _table(_runs(dumps))
    dumps_at, at = at, at + len(dump_blob)
    clean_blob = _table(_runs(cleans))
    cleans_at, at = at, at + len(clean_blob)
    msr_blob = b"".join(d32(m) for _, m in target.msrs) + d32(MASK32)
    msrs_at, at = at, at + len(msr_blob)
    end = at + (-at % 16)
    save_at = (post or s)["tr_base"]
    header = d32(end) + d32(case_id) + d32(stub_at) + d32(runs_at) + d32(dumps_at) + d32(cleans_at) \
        + d32(msrs_at) + d32(save_at)
    rec = bytearray(end - base)
    rec[0:len(header)] = header
    rec[stub_at - base:stub_at - base + len(stub)] = stub
    rec[data_at - base:data_at - base + len(data)] = data
    for off, blob in ((runs_at, runs_blob), (dumps_at, dump_blob), (cleans_at, clean_blob),
                      (msrs_at, msr_blob)):
        rec[off - base:off - base + len(blob)] = blob
    dec = Decoder(s, code_at, (s["cs"], s["eip"]), (entry_eip, s["eip"]), (stub_at, stub_end),
                  steps, dumps, [n for n, _ in target.msrs], frozenset(clobber), tuple(landings))
    return bytes(rec), dec


# --- frames ------------------------------------------------------------------------------------------
# B boot, R result, S the stub faulted, E end; the VMX mode's L (a VM instruction failed:
# VMCLEAR, VMPTRLD, VMWRITE or VMLAUNCH)
FRAME_TYPES = "BRSEL"


class FrameError(ValueError):
    """The emulator's output is not a well-formed frame where one must be."""


@dataclass(frozen=True)
class Frame:
    type: str
    case: int
    payload: bytes


def checksum(body: bytes) -> tuple[int, int]:
    s1 = s2 = 0
    for b in body:
        s1 = (s1 + b) & MASK32
        s2 = (s2 + s1) & MASK32
    return s1, s2


def frame_bytes(ftype: str, case: int, payload: bytes) -> bytes:
    """A frame as the kernel writes it (for tests of the parser)."""
    body = ftype.encode() + d32(case) + w16(len(payload)) + payload
    s1, s2 = checksum(body)
    return b"PG" + body + d32(s1) + d32(s2)


def parse(stream: bytes) -> tuple[list[Frame], str]:
    """The frames in ``stream`` from the boot frame on, and why parsing stopped ("" at the end
    frame; otherwise a one-line reason: truncated, corrupt or no boot).  Bytes before the boot
    frame are the emulator's own chatter."""
    start = stream.find(b"PGB")
    if start < 0:
        return [], "the kernel never printed its boot frame"
    out: list[Frame] = []
    at = start
    while True:
        if at == len(stream):
            return out, "output ends before the end frame"
        if stream[at:at + 2] != b"PG":
            return out, f"stray output at byte {at}: {stream[at:at + 16]!r}"
        if len(stream) < at + 9:
            return out, "output ends inside a frame header"
        ftype = chr(stream[at + 2])
        case, n = struct.unpack_from("<IH", stream, at + 3)
        end = at + 9 + n + 8
        if len(stream) < end:
            return out, "output ends inside a frame"
        body = stream[at + 2:at + 9 + n]
        if struct.unpack_from("<II", stream, at + 9 + n) != checksum(body):
            return out, f"frame {len(out)} ({ftype}, case {case}) fails its checksum"
        if ftype not in FRAME_TYPES:
            return out, f"frame {len(out)} has unknown type {ftype!r}"
        out.append(Frame(ftype, case, stream[at + 9:at + 9 + n]))
        at = end
        if ftype == "E":
            return out, ""


_FIXED = struct.Struct("<BHIIH6s6s10IBI64s")


@dataclass
class Reading:
    """One case's result as the test kernel read it."""

    outcome: Fault | Next | None
    refused: str
    observed: dict
    unobserved_mem: frozenset
    note: str = ""


def decode(dec: Decoder, target: Target, frame: Frame) -> Reading:
    """The outcome a frame reports (see the module docstring)."""
    s = dec.state
    if frame.type == "S":
        vec, code, eip = struct.unpack_from("<III", frame.payload)
        label = _step_at(dec, eip) or f"the test kernel at EIP {eip:#x}"
        from pgvirt.model.outcome import vector_name
        what = vector_name(vec) + (f"({code:#x})" if vec in ERROR_CODE_VECTORS else "")
        return Reading(None, f"{target.name} refuses the state: {label} raises {what}", {}, frozenset())
    if frame.type != "R":
        raise FrameError(f"frame of type {frame.type} where a result belongs")
    p = frame.payload
    need = _FIXED.size + 8 * len(dec.msr_fields) + len(dec.dumps)
    if len(p) != need:
        raise FrameError(f"result frame of {len(p)} bytes, {need} expected")
    (group, tr, esp, code, backlink, gdtr, idtr, *regs) = _FIXED.unpack_from(p)
    gd, old_base, save = regs[10], regs[11], regs[12]
    regs = dict(zip(REG_NAMES, regs[:10]))
    vpt = target.vectors_per_tss
    vector = group * vpt + (tr & 3 if vpt == 4 else 0)
    has_code = esp == CATCH_TOP - 4
    if has_code != (vector in ERROR_CODE_VECTORS):
        raise FrameError(f"vector {vector} caught {'with' if has_code else 'without'} an error code")
    saved = dict(zip(SAVED, struct.unpack("<16I", save)))
    for sreg in st.SREGS:
        saved[sreg] &= 0xFFFF
    from pgvirt.model.outcome import vector_name
    name = vector_name(vector) + (f"({code:#x})" if has_code else "")
    if (saved["cs"], saved["eip"]) == dec.entry:
        return Reading(Fault(vector, code if has_code else None,
                             f"{target.name} raised {name} at the instruction"), "", {}, frozenset())
    if saved["cs"] == dec.entry[0] and dec.precode[0] <= saved["eip"] < dec.precode[1]:
        return Reading(None, f"{target.name} refuses the state: the pre-code loading null selectors "
                             f"raises {name}", {}, frozenset())
    if saved["cs"] == KCS and dec.stub[0] <= saved["eip"] < dec.stub[1]:
        label = _step_at(dec, saved["eip"]) or "the stub"
        return Reading(None, f"{target.name} refuses the state: {label} raises {name}", {},
                       frozenset())
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in s.items()}
    for r in st.GPRS:
        out[r] = saved[r]
    out["eip"] = saved["eip"]
    out["flags"] = saved["eflags"] & st.USER_FLAGS_MASK
    out["sysflags"] = saved["eflags"] & st.SYS_FLAGS_MASK
    for sreg in st.SREGS:
        out[sreg] = saved[sreg]
    out["cpl"] = saved["cs"] & 3
    out["gdtr_limit"], out["gdtr_base"] = struct.unpack("<HI", gdtr)
    out["idtr_limit"], out["idtr_base"] = struct.unpack("<HI", idtr)
    out["tr"] = backlink
    for k, val in regs.items():
        out[k] = val
    obs = observed(target)
    if gd:          # the first MOV DR of the catch raised #DB: GD was set, and DR6 is now the #DB's
        out["dr7"] |= 1 << 13
        obs["dr6"] = 0
    at = _FIXED.size
    for fname in dec.msr_fields:
        lo, hi = struct.unpack_from("<II", p, at)
        at += 8
        if fname in obs:
            out[fname] = (lo | hi << 32) & ((1 << st.FIELD[fname].width) - 1)
    for a, b in zip(dec.dumps, p[at:]):
        out["mem"][a] = b
    clobbered = {(old_base + k) & MASK32 for k in range(*TSS_SAVED)}
    unobserved = frozenset(a for a in dec.state["mem"] if a in clobbered) | frozenset(
        a for a in dec.dumps if a in clobbered)
    where = f"{saved['cs']:#x}:{saved['eip']:#x}"
    return Reading(Next(out), "", obs, unobserved, f"completed; caught {name} at {where}")


def _step_at(dec: Decoder, eip: int) -> str:
    off = eip - dec.stub[0]
    label = ""
    for start, what in dec.steps:
        if start <= off:
            label = what
    return label


# --- the image ----------------------------------------------------------------------------------
@dataclass
class Batch:
    image: bytes
    decoders: list            # per record, in order
    ids: list                 # the caller's index of each record's case


def image(records: Sequence[bytes], kern: Kernel) -> bytes:
    """Boot sector + kernel + ``records`` (already placed from RECORDS on) + an end record."""
    body = bytearray(kern.blob)
    for r in records:
        body += r
    body += d32(0) * 8                      # the end record: stub 0
    total = 512 + len(body)
    if total > FLOPPY:
        raise ValueError(f"batch of {total} bytes does not fit a 1.44 MB floppy")
    img = boot_sector(-(-total // TRACK)) + bytes(body)
    return img + bytes(FLOPPY - len(img))


def build_batch(cases: Sequence, target: Target, ids: Sequence[int] | None = None,
                limit: int = FLOPPY) -> tuple[Batch, list[tuple[int, str]], int]:
    """As many of ``cases`` as fit one floppy: the batch, the refused ones (index, reason) and
    how many cases were consumed."""
    kern = kernel(target.groups)
    recs, decs, taken, refused, used = pack(
        cases, ids, limit, RECORDS, lambda case, at, idx: build_record(case, target, kern, at, idx))
    return Batch(image(recs, kern), decs, taken), refused, used


def place_instruction(s: dict, code: bytes, accessed: Iterable[int], target: Target,
                      ram: str = "") -> tuple[int, set[int]]:
    """Lay ``code`` at CS:EIP in ``s``'s memory (a byte the state already holds there must be the
    instruction's) and refuse a case whose footprint (``accessed`` and the instruction bytes)
    leaves ``target``'s usable RAM (``ram`` describes it in the message); bytes outside RAM are
    dropped, as the instruction never accesses them.  Returns the code's linear address and the
    footprint."""
    code_at = (s["cs_base"] + s["eip"]) & MASK32
    for k, b in enumerate(code):
        a = (code_at + k) & MASK32
        old = s["mem"].get(a)
        if old is not None and old != b:
            raise UnsupportedState(f"mem[{a:#x}] = {old:#x} but the instruction byte there is {b:#x}")
        s["mem"][a] = b
    foot = {a & MASK32 for a in accessed} | {(code_at + k) & MASK32 for k in range(len(code))}
    for a in sorted(foot):
        if not target.usable(a):
            raise UnsupportedState(f"the instruction accesses {a:#x}, outside {target.name}'s usable RAM{ram}")
    s["mem"] = {a: b for a, b in s["mem"].items() if target.usable(a)}
    return code_at, foot


def kernel_start(c: "Code", vars_lo: int, vars_hi: int, cur: int, first: int) -> None:
    """Every test kernel's first steps in protected mode (this one's, the VMX and SVM ones'): the
    kernel's GDT, IDT and flat segments, its variables zeroed (``vars_lo``..``vars_hi``), the
    filled ranges filled with FILL (a one-byte trap: a run that goes astray stops at once
    instead of executing zeros), the stack and TR loaded, both PICs and NMI masked, the
    current-record variable ``cur`` set to ``first``."""
    c.label("entry")
    c(x86.CLI, x86.CLD)
    c.abs32(b"\x2e\x0f\x01\x15", "kgdtr")                          # lgdt cs:[kgdtr]
    c.abs32(b"\x2e\x0f\x01\x1d", "kidtr")                          # lidt cs:[kidtr]
    c.abs32(b"\xea", "init", w16(KCS))                                # jmp far KCS:init
    c.label("init")
    _kernel_segments(c)
    c(b"\x31\xc0\xbf" + d32(vars_lo) + b"\xb9" + d32((vars_hi - vars_lo) // 4) + b"\xf3\xab")
    c(b"\xb8" + bytes([FILL]) * 4)
    for lo, hi in FILLED:
        c(b"\xbf" + d32(lo) + b"\xb9" + d32((hi - lo) // 4) + b"\xf3\xab")
    c(x86.mov_r_imm("esp", KSTACK))
    c(b"\x66\xb8" + w16(KTSS) + b"\x0f\x00\xd8")                  # ltr ax
    c(b"\xb0\xff\xe6\x21\xe6\xa1\xb0\x80\xe6\x70")           # mask both PICs, NMI
    c(b"\xc7\x05" + d32(cur) + d32(first))


def vm_kernel_image(c: "Code", code: bytes, records: int, main_tss: int):
    """The VMX and SVM kernels' image up to their records: ``code`` at KCODE, the kernel's GDT
    (null, flat code, flat data, the main TSS), its IDT of 32 fault handlers and the main TSS;
    returns (image, put(addr, bytes)) for what each kernel adds."""
    img = bytearray(records - KCODE)

    def put(addr: int, data: bytes) -> None:
        img[addr - KCODE:addr - KCODE + len(data)] = data

    put(KCODE, code)
    put(KGDT, bytes(8) + layout.descriptor(0, MASK32, layout.code_attr(0))
        + layout.descriptor(0, MASK32, layout.data_attr(0))
        + layout.descriptor(main_tss, 0x67, layout.TSS_AVAIL_ATTR))
    put(KIDT, b"".join(layout.gate(KCS, c.labels[f"fault{n}"], 0xE) for n in range(32)))
    put(main_tss, _tss(c.labels["halt"], KSTACK, KCS, KDS))
    return img, put


def pack(cases: Sequence, ids: Sequence[int] | None, limit: int, start: int, record
         ) -> tuple[list, list, list, list[tuple[int, str]], int]:
    """The records of as many of ``cases`` as fit a ``limit``-byte image, laid from ``start``
    (this kernel's and the VMX/SVM kernels' batches alike): (records, their decoders, the case
    ids taken, the refused ones (id, reason), how many cases were consumed).  ``record(case, at,
    id)`` builds one record, raising ``StateError`` for a state the harness cannot set up."""
    from ..validity import StateError
    at = start
    recs, decs, taken, refused = [], [], [], []
    used = 0
    for k, case in enumerate(cases):
        idx = ids[k] if ids is not None else k
        try:
            rec, dec = record(case, at, idx)
        except StateError as e:
            refused.append((idx, str(e)))
            used = k + 1
            continue
        if 512 + (at + len(rec) - KCODE) + 32 > limit:
            break
        recs.append(rec)
        decs.append(dec)
        taken.append(idx)
        at += len(rec)
        used = k + 1
    return recs, decs, taken, refused, used
