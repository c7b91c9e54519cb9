"""The test kernel's VMX mode: every case runs as the guest in VMX non-root operation, under a VMCS
built from the profile's controls (``model.vmx.Controls``), and the VM-exit handler in root mode
reports what happened over port 0xE9 in the test kernel's frames (``testkernel``).

One boot (SDM Vol. 3C chapters 23-27; every address is physical):

1. the boot sector of ``testkernel`` loads the image and enters 32-bit protected mode;
2. the kernel (CPL 0, flat segments) checks CPUID.1:ECX.VMX, reads the VMX capability MSRs
   (IA32_VMX_BASIC ... IA32_VMX_VMFUNC, 0x480-0x491; one the CPU lacks reads as ``ABSENT``), turns
   paging on with an identity map of 4 MiB pages (VMX operation needs CR0.PG = 1 in root mode,
   A.7), sets CR4.VMXE and CR0.NE, locks IA32_FEATURE_CONTROL with VMX enabled if the BIOS left it
   unlocked, and executes VMXON.  The boot frame carries the capability MSRs, so the oracle can
   state what the emulated CPU allows; for a CPU without VMX, or a VMXON that fails, the boot
   frame says so (status 1 or 2) and the batch ends;
3. per record: its memory runs are copied, VMCLEAR/VMPTRLD make its VMCS current, the record's
   *stub* VMWRITEs every control, host-state and guest-state field (24.4-24.8: the guest-state
   area holds the case's segment caches directly, so no descriptor tables are needed to load
   them), loads what VM entry does not (CR2, DR0-DR3, DR6, IA32_TSC_AUX: 26.3.2) and the general
   registers, and VMLAUNCHes.  A VM-instruction that fails sends an ``L`` frame with RFLAGS and
   the VM-instruction error number (30.4);
4. the guest runs one instruction.  The harness adds two things to the profile's controls, both
   observation only: the *monitor trap flag* (25.5.2), so an instruction that completes exits
   right after it (exit reason 37) with the guest state as it left it - Bochs 2.7 takes no MTF
   exit (deviation ``mtf-no-exit``), so the catch after a completion is in fact the INT1 (0xF1)
   that fills memory and is written at every landing, whose #DB exits; and every exception
   vector in the exception bitmap except those the instruction itself delivers through the
   guest's IDT (25.2), so a fault exits before it is delivered.  A fault whose vector the
   profile's own bitmap does not set is reported as the fault the guest would see; the others
   are VM exits;
5. the VM-exit handler (host RIP) saves the guest's registers, VMREADs the exit reason,
   qualification, interruption information and the guest-state fields, reads DR0-DR3, DR6, CR2,
   the MSRs and the record's memory, sends an ``R`` frame, puts FILL back, and takes the next
   record.

VM entry's own checks on the guest state (26.3.1) are Bochs's: a state it rejects comes back as
a VM exit with bit 31 of the exit reason set (33 invalid guest state, 34 MSR loading), which the
oracle reports as refused, with the qualification.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from pgvirt.model import state as st
from pgvirt.model import vmx
from pgvirt.model.outcome import Exit, Fault, Next, vector_name

from ..validity import UnsupportedState
from . import testkernel as T
from . import x86
from .testkernel import (FILL, FLOPPY, IMAGE_BASE, KCODE, KCS, KDS, KGDT, KIDT, KSTACK, KTSS,
                         MAIN_TSS, MASK32, OUTBUF, VARS, KERNEL_HI, Code, FrameError, Reading, Target,
                         d32, frame_bytes, w16)

VERSION = 1
MODE = "vmx"
RESULT_TYPES = "RSL"

# --- where the VMX structures live (in the image, page aligned) --------------------------------
HOST_PD = IMAGE_BASE + 0x8000          # 32-bit paging, 4 MiB pages, identity (SDM Vol. 3A 4.3)
EPT_PML4 = IMAGE_BASE + 0x9000         # EPT identity map of 4 GiB in 2 MiB pages (28.3.2)
EPT_PDPT = IMAGE_BASE + 0xA000
EPT_PD = IMAGE_BASE + 0xB000           # four pages
VMXON_REGION = IMAGE_BASE + 0xF000
VMCS_REGION = IMAGE_BASE + 0x10000
IO_BITMAP_A = IMAGE_BASE + 0x11000     # ports 0-0x7FFF (24.6.4)
IO_BITMAP_B = IMAGE_BASE + 0x12000     # ports 0x8000-0xFFFF
MSR_BITMAP = IMAGE_BASE + 0x13000      # read low, read high, write low, write high (24.6.9)
RECORDS = IMAGE_BASE + 0x14000
BOOT_RECORD = IMAGE_BASE + 0x5F00

HOST_CR0 = 0x80000031                  # PE, ET, NE, PG
CR0_CD_NW = (1 << 30) | (1 << 29)
HOST_CR4 = (1 << 4) | (1 << 13)        # PSE, VMXE
EPTP = EPT_PML4 | 6 | (3 << 3)         # write-back, a 4-level walk (24.6.11)
MTF = 1 << vmx.CONTROLS["monitor_trap_flag"].bit
PREEMPT = 1 << vmx.CONTROLS["vmx_preemption_timer"].bit
PREEMPT_TICKS = 0x4000                 # long after the one instruction, short for a halted guest

# capability MSRs (SDM Vol. 3C Appendix A)
CAP_MSRS = {0x480: "basic", 0x481: "pinbased", 0x482: "procbased", 0x483: "exit", 0x484: "entry",
            0x485: "misc", 0x486: "cr0_fixed0", 0x487: "cr0_fixed1", 0x488: "cr4_fixed0",
            0x489: "cr4_fixed1", 0x48A: "vmcs_enum", 0x48B: "procbased2", 0x48C: "ept_vpid_cap",
            0x48D: "true_pinbased", 0x48E: "true_procbased", 0x48F: "true_exit", 0x490: "true_entry",
            0x491: "vmfunc"}
ABSENT = 0xDEADBEEF_DEADBEEF           # an RDMSR that raised #GP at boot
CTLS_MSR = {"pin": "TRUE_PINBASED_CTLS", "primary": "TRUE_PROCBASED_CTLS", "secondary": "PROCBASED_CTLS2"}

# kernel variables beyond testkernel's (VARS + offset)
V_CUR, V_PHASE = 0, 9
V_ESP = 4

# VMCS field encodings (SDM Vol. 3C Appendix B)
SEL = {"es": 0x800, "cs": 0x802, "ss": 0x804, "ds": 0x806, "fs": 0x808, "gs": 0x80A, "ldtr": 0x80C,
       "tr": 0x80E}
LIMIT = {k: 0x4800 + (v - 0x800) for k, v in SEL.items()}
AR = {k: 0x4814 + (v - 0x800) for k, v in SEL.items()}
BASE = {k: 0x6806 + (v - 0x800) for k, v in SEL.items()}
HOST_SEL = {"es": 0xC00, "cs": 0xC02, "ss": 0xC04, "ds": 0xC06, "fs": 0xC08, "gs": 0xC0A, "tr": 0xC0C}
F = dict(pin=0x4000, primary=0x4002, exception_bitmap=0x4004, pf_mask=0x4006, pf_match=0x4008,
         cr3_count=0x400A, exit_controls=0x400C, exit_msr_store=0x400E, exit_msr_load=0x4010,
         entry_controls=0x4012, entry_msr_load=0x4014, entry_intr=0x4016, secondary=0x401E,
         ple_gap=0x4020, ple_window=0x4022, vpid=0x0000,
         io_a=0x2000, io_b=0x2002, msr_bitmap=0x2004, tsc_offset=0x2010, eptp=0x201A,
         link=0x2800, debugctl=0x2802,
         cr0_mask=0x6000, cr4_mask=0x6002, cr0_shadow=0x6004, cr4_shadow=0x6006, cr3_target=0x6008,
         gdtr_limit=0x4810, idtr_limit=0x4812, interruptibility=0x4824, activity=0x4826,
         sysenter_cs=0x482A, preemption=0x482E,
         cr0=0x6800, cr3=0x6802, cr4=0x6804, gdtr_base=0x6816, idtr_base=0x6818, dr7=0x681A,
         rsp=0x681C, rip=0x681E, rflags=0x6820, pending_dbg=0x6822, sysenter_esp=0x6824,
         sysenter_eip=0x6826,
         host_cr0=0x6C00, host_cr3=0x6C02, host_cr4=0x6C04, host_fs_base=0x6C06, host_gs_base=0x6C08,
         host_tr_base=0x6C0A, host_gdtr_base=0x6C0C, host_idtr_base=0x6C0E, host_sysenter_esp=0x6C10,
         host_sysenter_eip=0x6C12, host_rsp=0x6C14, host_rip=0x6C16, host_sysenter_cs=0x4C00,
         instruction_error=0x4400)
# what the exit handler VMREADs, in order (read-only data fields: 24.9)
READ = (("exit_reason", 0x4402), ("qualification", 0x6400), ("intr_info", 0x4404),
        ("intr_error", 0x4406), ("instr_len", 0x440C), ("idt_vectoring", 0x4408),
        ("rip", 0x681E), ("rsp", 0x681C), ("rflags", 0x6820),
        *((s, SEL[s]) for s in ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")),
        ("ss_ar", AR["ss"]), ("cs_ar", AR["cs"]),
        ("gdtr_base", 0x6816), ("gdtr_limit", 0x4810), ("idtr_base", 0x6818), ("idtr_limit", 0x4812),
        ("cr0", 0x6800), ("cr3", 0x6802), ("cr4", 0x6804), ("dr7", 0x681A),
        ("sysenter_cs", 0x482A), ("sysenter_esp", 0x6824), ("sysenter_eip", 0x6826),
        ("activity", 0x4826))
GPR_ORDER = ("edi", "esi", "ebp", "esp_host", "ebx", "edx", "ecx", "eax")    # PUSHAD, low first
HOST_READ = ("dr0", "dr1", "dr2", "dr3", "dr6", "cr2")
EXIT_NAMES = {v: k for k, v in vmx.EXIT_REASONS.items()}
MTF_EXIT, PREEMPT_EXIT, ENTRY_FAIL = 37, 52, 1 << 31
# Controls whose structures this harness does not build; a configuration with one is refused.
NOT_BUILT = ("virtualize_apic_accesses", "enable_pml", "enable_vm_functions", "vmcs_shadowing",
             "encls_exiting", "enable_encls_exiting")


def v(off: int) -> int:
    return VARS + off


def vmwrite(field: int, value: int) -> bytes:
    """mov eax, field; mov ebx, value; VMWRITE eax, ebx (0F 79 /r: reg = the field)."""
    return x86.mov_r_imm("eax", field) + x86.mov_r_imm("ebx", value) + b"\x0f\x79\xc3"


def vmread_to_edi(field: int) -> bytes:
    """mov eax, field; VMREAD [edi], eax (0F 78 /r: reg = the field); add edi, 4."""
    return x86.mov_r_imm("eax", field) + b"\x0f\x78\x07\x83\xc7\x04"


# --- static structures -------------------------------------------------------------------------
def host_pd() -> bytes:
    return b"".join(d32((i << 22) | 0x83) for i in range(1024))       # P, RW, PS


def ept_tables() -> bytes:
    """PML4, PDPT and four page directories: guest-physical = physical, read/write/execute,
    write-back (SDM Vol. 3C 28.3.2, 28.3.7)."""
    pml4 = struct.pack("<Q", EPT_PDPT | 7) + bytes(4096 - 8)
    pdpt = b"".join(struct.pack("<Q", (EPT_PD + 4096 * i) | 7) for i in range(4)) + bytes(4096 - 32)
    pds = b"".join(struct.pack("<Q", (i << 21) | (1 << 7) | (6 << 3) | 7) for i in range(2048))
    return pml4 + pdpt + pds


def io_bitmaps(ports: frozenset) -> tuple[bytes, bytes]:
    a, b = bytearray(4096), bytearray(4096)
    for p in ports:
        (a if p < 0x8000 else b)[(p & 0x7FFF) >> 3] |= 1 << (p & 7)
    return bytes(a), bytes(b)


def msr_bitmap(reads: frozenset, writes: frozenset) -> bytes:
    m = bytearray(4096)
    for base, msrs in ((0, reads), (2048, writes)):
        for r in msrs:
            off = base + (1024 if r >= 0xC0000000 else 0)
            r &= 0x1FFF
            m[off + (r >> 3)] |= 1 << (r & 7)
    return bytes(m)


# --- the kernel ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    blob: bytes
    labels: Mapping[str, int]


@lru_cache(maxsize=None)
def kernel() -> Kernel:
    c = Code(KCODE)
    A = x86
    T.kernel_start(c, VARS, KERNEL_HI, v(V_CUR), BOOT_RECORD)
    # CPUID.1:ECX.VMX (bit 5)
    c(x86.mov_r_imm("eax", 1), b"\x0f\xa2\xf7\xc1" + d32(1 << 5))     # cpuid; test ecx, 1<<5
    c.jcc(x86.JNE, "has_vmx")
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb8" + d32(VERSION) + A.STOSD)
    c(x86.mov_r_imm("eax", 1), A.STOSD, b"\x89\xc8", A.STOSD)
    c(b"\xb0\x42"); c.call("send"); c.jmp("finish")                     # 'B', status 1: no VMX
    c.label("has_vmx")
    # the boot frame: version, status 0, 0, then each capability MSR (ABSENT where RDMSR #GPs)
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb8" + d32(VERSION) + A.STOSD)
    c(b"\x31\xc0", A.STOSD, A.STOSD)
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x04")                          # #GP now: an absent MSR
    for msr in CAP_MSRS:
        c(x86.mov_r_imm("ecx", msr), A.RDMSR, A.STOSD, b"\x89\xd0", A.STOSD)
    c(b"\x57")                                                           # push edi
    # paging on (identity, 4 MiB pages), CR4.VMXE, CR0.NE
    c(x86.mov_r_imm("eax", HOST_PD), A.mov_cr_eax(3))
    c(x86.mov_r_imm("eax", HOST_CR4), A.mov_cr_eax(4))
    c(x86.mov_r_imm("eax", HOST_CR0), A.mov_cr_eax(0))
    # IA32_FEATURE_CONTROL (0x3A): lock it with "VMX outside SMX" if the BIOS did not (23.7)
    c(x86.mov_r_imm("ecx", 0x3A), A.RDMSR, b"\xa8\x01")                # test al, 1
    c.jcc(x86.JNE, "fc_locked")
    c(b"\x0d" + d32(5), A.WRMSR)                                        # or eax, 5; wrmsr
    c.label("fc_locked")
    c(b"\xc6\x05" + d32(v(V_PHASE)) + b"\x00")
    # the VMCS revision identifier (IA32_VMX_BASIC bits 30:0) heads the VMXON region and the VMCS
    c(x86.mov_r_imm("ecx", 0x480), A.RDMSR, b"\x25" + d32(0x7FFFFFFF))
    c(b"\xa3" + d32(VMXON_REGION), b"\xa3" + d32(VMCS_REGION))
    c.abs32(b"\xf3\x0f\xc7\x35", "vmxon_ptr")                           # vmxon [vmxon_ptr]
    c.jcc(x86.JBE, "vmxon_failed")
    c(b"\x5f")                                                           # pop edi
    c(b"\xb0\x42"); c.call("send")                                      # 'B'
    c(b"\xbe" + d32(RECORDS))
    c.jmp("record")
    c.label("vmxon_failed")                                             # status 2, RFLAGS
    c(b"\x9c\x58\xa3" + d32(OUTBUF + 9 + 8) + b"\xc7\x05" + d32(OUTBUF + 9 + 4) + d32(2) + b"\x5f")
    c(b"\xb0\x42"); c.call("send"); c.jmp("finish")

    # the record loop: esi = record
    c.label("record")
    c(b"\x89\x35" + d32(v(V_CUR)))
    c(b"\x8b\x46\x08\x85\xc0"); c.jcc(x86.JE, "finish")
    c(b"\x8b\x76\x0c"); c.call("copy_runs")
    c.abs32(b"\x66\x0f\xc7\x35", "vmcs_ptr")                            # vmclear [vmcs_ptr]
    c(x86.mov_r_imm("eax", 0xFFFFFFFF)); c.jcc(x86.JBE, "vm_failed")
    c.abs32(b"\x0f\xc7\x35", "vmcs_ptr")                                # vmptrld [vmcs_ptr]
    c.jcc(x86.JBE, "vm_failed")
    c(b"\xa1" + d32(v(V_CUR)) + b"\xff\x60\x08")                        # jmp [record+8]: stub

    c.label("launch")                                                   # the stub ends here
    c(b"\x0f\x01\xc2")                                                   # vmlaunch
    c(x86.mov_r_imm("eax", 0xFFFFFFFE))
    c.label("vm_failed")            # eax: the field a VMWRITE failed on, or -1 / -2
    c(b"\x9c\x5b")                                                       # pushfd; pop ebx
    c(b"\x31\xc9\xf6\xc3\x40"); c.jcc(x86.JE, "no_error")               # ZF: VMfailValid
    c(b"\x50" + x86.mov_r_imm("eax", F["instruction_error"]) + b"\x0f\x78\xc1\x58")
    c.label("no_error")
    c(b"\xbf" + d32(OUTBUF + 9), A.STOSD, b"\x89\xd8", A.STOSD, b"\x89\xc8", A.STOSD)
    c(b"\xb0\x4c"); c.call("send")                                      # 'L'
    c.jmp("after")

    # the VM-exit handler (host RIP): RSP = KSTACK, flat segments from the host-state area
    c.label("exit")
    c(b"\x60\xfc")                                                       # pushad; cld
    c(b"\xbf" + d32(OUTBUF + 9) + b"\x89\xe6\xb9" + d32(8) + b"\xf3\xa5")   # the guest's GPRs
    for _, field in READ:
        c(vmread_to_edi(field))
    for n in (0, 1, 2, 3, 6):
        c(A.mov_eax_dr(n), A.STOSD)
    c(A.mov_eax_cr(2), A.STOSD)
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x18")                        # MSRs: [record+24]
    c.label("msr")
    c(A.LODSD, b"\x83\xf8\xff"); c.jcc(x86.JE, "msr_done")
    c(b"\x89\xc1\x56", A.RDMSR, A.STOSD, b"\x89\xd0", A.STOSD, b"\x5e"); c.jmp("msr")
    c.label("msr_done")
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x10"); c.call("dump_runs")
    c(x86.mov_r_imm("esp", KSTACK))
    c(b"\xb0\x52"); c.call("send")                                      # 'R'

    c.label("after")
    c(x86.mov_r_imm("esp", KSTACK), x86.mov_r_imm("eax", HOST_CR0), A.mov_cr_eax(0))
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x0c"); c.call("fill_copied")
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x14"); c.call("fill_runs")
    c(b"\x8b\x35" + d32(v(V_CUR)) + b"\x8b\x36"); c.jmp("record")

    c.label("finish")
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb0\x45"); c.call("send")          # 'E'
    c(b"\xb0\x01\xe6\xf4")
    c(b"\x66\xba\x00\x89")
    for ch in b"Shutdown":
        c(b"\xb0" + bytes([ch]) + b"\xee")
    c.label("halt")
    c(A.CLI, A.HLT); c.rel(b"\xeb", "halt", 1)

    T.routines(c)

    # faults in root mode (kernel IDT): vector, code, EIP -> an 'S' frame; a #GP of the boot's
    # RDMSR probe reads as ABSENT instead
    for vec in range(32):
        c.label(f"fault{vec}")
        if vec == 13:
            c(b"\x2e\x80\x3d" + d32(v(V_PHASE)) + b"\x04"); c.jcc(x86.JNE, "fault13b")
            c(b"\xb8" + d32(ABSENT & MASK32) + b"\x89\xc2")                # eax = edx = ABSENT
            c(b"\x83\xc4\x04\x83\x04\x24\x02", A.IRETD)                  # pop the code; skip RDMSR
            c.label("fault13b")
        if vec not in T.ERROR_CODE_VECTORS:
            c(b"\x6a\x00")
        c(b"\x6a" + bytes([vec])); c.jmp("fault")
    c.label("fault")
    c(b"\x58\x5b\x59")
    c(x86.mov_r_imm("esp", KSTACK))
    c(b"\xbf" + d32(OUTBUF + 9), A.STOSD, b"\x89\xd8", A.STOSD, b"\x89\xc8", A.STOSD)
    c(b"\xb0\x53"); c.call("send")                                      # 'S'
    c.jmp("after")
    c.align(8)
    c.label("kgdtr"); c(w16(T.KGDT_LIMIT) + d32(KGDT), bytes(2))
    c.label("kidtr"); c(w16(32 * 8 - 1) + d32(KIDT), bytes(2))
    c.label("vmxon_ptr"); c(d32(VMXON_REGION) + d32(0))
    c.label("vmcs_ptr"); c(d32(VMCS_REGION) + d32(0))
    code = c.finish()
    if c.here > KGDT:
        raise AssertionError(f"VMX kernel code runs to {c.here:#x}, past the GDT at {KGDT:#x}")
    img, put = T.vm_kernel_image(c, code, RECORDS, MAIN_TSS)
    put(BOOT_RECORD, d32(0) + d32(0xFFFFFFFF))
    put(HOST_PD, host_pd())
    put(EPT_PML4, ept_tables())
    return Kernel(bytes(img), dict(c.labels))


# --- capabilities ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caps:
    """The VMX capability MSRs a CPU reports (SDM Vol. 3C Appendix A); ``msrs`` by name."""

    msrs: Mapping[str, int]

    def has(self, name: str) -> bool:
        return self.msrs.get(name, ABSENT) != ABSENT

    def allowed(self, group: str) -> tuple[int, int]:
        """(bits that must be 1, bits that may be 1) of a control vector (A.3-A.5; the TRUE MSRs
        when IA32_VMX_BASIC bit 55 says they exist)."""
        true = self.msrs["basic"] >> 55 & 1
        name = {"pin": "pinbased", "primary": "procbased", "secondary": "procbased2",
                "exit": "exit", "entry": "entry"}[group]
        if true and group != "secondary":
            name = "true_" + name
        if not self.has(name):
            return 0, 0
        m = self.msrs[name]
        return m & MASK32, m >> 32

    def mtf(self) -> int:
        """The monitor-trap-flag bit if the CPU allows it (the harness adds it then), else 0."""
        return MTF if self.allowed("primary")[1] & MTF else 0

    def fit(self, c: vmx.Controls) -> tuple[vmx.Controls, list[str]]:
        """``c`` as this CPU can hold it: each control its capability MSRs do not allow to be 1
        cleared (A.3-A.5), and the names cleared.  The replay runs the model under the same fitted
        controls, so that both sides run one configuration (tigerlake lacks "enable user wait and
        pause", which the vtx default sets for UMWAIT/TPAUSE)."""
        from dataclasses import replace
        dropped = []
        for g in ("pin", "primary", "secondary"):
            value = getattr(c, g)
            if g == "secondary" and not c.primary >> 31 & 1:
                continue
            _, may = self.allowed(g)
            bad = value & ~may
            if bad:
                names = {ctl.bit: ctl.name for ctl in vmx.CONTROLS.values() if ctl.group == g}
                dropped += [names.get(b, f"{g} bit {b}") for b in range(32) if bad >> b & 1]
                c = replace(c, **{g: value & may})
        if dropped:
            c = replace(c, name=f"{c.name} without {', '.join(dropped)} (the CPU cannot set them)")
        return c, dropped

    def refuse(self, c: vmx.Controls) -> str | None:
        """Why this CPU cannot run ``c`` (a bit it fixes the other way), or None."""
        for g in ("pin", "primary", "secondary"):
            value = getattr(c, g)
            if g == "secondary" and not c.primary >> 31 & 1:
                continue
            must, may = self.allowed(g)
            names = {ctl.bit: ctl.name for ctl in vmx.CONTROLS.values() if ctl.group == g}
            bad = value & ~may
            if bad:
                return (f"the CPU cannot set {g} control(s) "
                        + ", ".join(names.get(b, f"bit {b}") for b in range(32) if bad >> b & 1)
                        + f" (its IA32_VMX_{CTLS_MSR[g]} allows {may:#x})")
            bad = must & ~value
            if bad:
                return (f"the CPU fixes {g} control(s) "
                        + ", ".join(names.get(b, f"bit {b}") for b in range(32) if bad >> b & 1)
                        + " to 1")
        return None

    def as_json(self) -> dict:
        return {n: (None if v == ABSENT else f"{v:#018x}") for n, v in self.msrs.items()}


def caps_from_boot(payload: bytes) -> Caps:
    """The capabilities a boot frame reports; ``VMXUnavailable`` (one line) if VMX cannot start."""
    if len(payload) < 12:
        raise FrameError(f"boot frame of {len(payload)} bytes")
    _, status, a = struct.unpack_from("<III", payload)
    if status == 1:
        raise VMXUnavailable(f"the CPU model has no VMX (CPUID.1:ECX = {a:#x}, bit 5 clear)")
    if status == 2:
        raise VMXUnavailable(f"VMXON fails (RFLAGS {a:#x}: "
                             f"{'VMfailValid' if a & 0x40 else 'VMfailInvalid'})")
    if len(payload) != 12 + 8 * len(CAP_MSRS):
        raise FrameError(f"boot frame of {len(payload)} bytes, {12 + 8 * len(CAP_MSRS)} expected")
    vals = struct.unpack_from(f"<{len(CAP_MSRS)}Q", payload, 12)
    return Caps(dict(zip(CAP_MSRS.values(), vals)))


class VMXUnavailable(RuntimeError):
    """The emulated CPU cannot enter VMX operation (no VMX, or VMXON fails)."""


# --- one case as a record -----------------------------------------------------------------------
def complete(state: Mapping) -> dict:
    """``state`` with every scalar (defaults as ``state.concrete``), checked only for what this
    harness cannot hold: VM entry itself checks the guest state (26.3.1) and says why it refuses
    one, so the protected-mode harness's rules (``validity``: selectors a segment load would
    refuse, caches Unicorn cannot hold) do not apply - a monitor may put any of those in the
    guest-state area.  Outside the model or the harness: paging, real and virtual-8086 mode, a
    halted processor."""
    from ..validity import StateError, scalars
    s = scalars(state)
    s["mem"] = dict(state.get("mem", {}))
    s["io"] = dict(state.get("io", {}))
    for a, b in s["mem"].items():
        if not (type(a) is int and 0 <= a <= MASK32 and type(b) is int and 0 <= b <= 0xFF):
            raise StateError(f"mem[{a!r}] = {b!r} is not a byte at a 32-bit address")
    if s["cr0"] >> st.CR0_PG & 1:
        raise UnsupportedState("CR0.PG = 1: paging is outside the model (linear = physical)")
    if not s["cr0"] & 1:
        raise UnsupportedState("CR0.PE = 0 (real mode) is outside the protected-mode model")
    if s["sysflags"] >> st.VM & 1:
        raise UnsupportedState("EFLAGS.VM = 1: virtual-8086 mode is outside the model")
    if s["halted"]:
        raise UnsupportedState("halted = 1: a halted processor runs no instruction")
    return s


@dataclass
class Decoder:
    state: dict
    code_at: int
    controls: vmx.Controls
    harness_bitmap: int
    steps: list
    stub: tuple[int, int]
    dumps: list
    msr_fields: list


def _ar(s: Mapping, seg: str) -> int:
    """The VMCS access-rights word (24.4.1): the cache's attributes, bit 16 for an unusable
    segment (a null data selector, a not-present cache, a null LDTR).  LDTR, whose attributes
    the state does not keep, is a present LDT with G as its limit needs (26.3.1.2; the profile's
    ``entry_ok`` holds its limit to one G can give)."""
    if seg == "ldtr":
        if not s["ldtr"] & 0xFFFC:
            return 1 << 16
        return 0x82 | (1 << 15 if s["ldtr_limit"] > 0xFFFFF else 0)
    attr = s[f"{seg}_attr"] & 0xF0FF
    if seg == "tr":
        return attr
    if not attr & 0x80 or (seg in ("es", "ds", "fs", "gs") and s[seg] & 0xFFFC == 0):
        return attr | 1 << 16
    return attr


def build_record(case, target: Target, caps: Caps, base: int, case_id: int) -> tuple[bytes, Decoder]:
    """The record of ``case`` at ``base`` (``case.controls``: the VMCS controls) and how to read
    its frame.  Raises ``StateError`` (one line) for what this harness cannot run."""
    c: vmx.Controls = case.controls
    s = complete(case.state)
    code = bytes(case.code)
    if not code or len(code) > 15:
        raise UnsupportedState(f"an instruction is 1 to 15 bytes, not {len(code)}")
    for n in NOT_BUILT:
        if c.on(n):
            raise UnsupportedState(f"the VMX harness builds no structures for '{n}'")
    why = caps.refuse(c)
    if why:
        raise UnsupportedState(why)
    for name, fixed1, fixed0 in T.DR_FIXED:
        if s[name] & fixed1 != fixed1 or s[name] & fixed0:
            raise UnsupportedState(f"{name} = {s[name]:#x}: its reserved bits read as fixed values")
    if s["cpl"] != (s["ss_attr"] >> 5) & 3:
        raise UnsupportedState(f"CPL {s['cpl']} is not SS.DPL {(s['ss_attr'] >> 5) & 3}: VM entry "
                               "takes the guest's CPL from SS.DPL (SDM Vol. 3C 26.3.1.2)")
    code_at, foot = T.place_instruction(s, code, case.mem, target)
    for p in sorted(set(case.io)):
        if not c.io_port_exits(p):
            for lo, hi, what in target.io_unsafe:
                if lo <= p <= hi:
                    raise UnsupportedState(f"port {p:#x} is {what} on {target.name}, and the "
                                           "controls let the guest reach it")
    post = case.expect.state if isinstance(case.expect, Next) else None
    if post is not None:
        if post["cr0"] >> st.CR0_PG & 1:
            raise UnsupportedState("the instruction turns paging on: the guest has no page tables")
        if post.get("halted") and not caps.allowed("pin")[1] & PREEMPT:
            raise UnsupportedState("the instruction halts the guest, and without the VMX-preemption "
                                   "timer nothing would wake it")
        if (post["cs_base"] + post["eip"]) & MASK32 == code_at:
            raise UnsupportedState("the instruction lands on itself (one iteration of a REP): "
                                   "without an MTF exit (mtf-no-exit) nothing stops the next")
    writes = dict(s["mem"])
    for a in foot:
        writes.setdefault(a, 0)
    # the catch after a completion is the INT1 (FILL) where the instruction lands: Bochs takes no
    # MTF exit (deviation mtf-no-exit), so the fall-through, the model's landing and where it
    # would go were a check skipped get INT1 even where the state has other bytes (they are
    # outside the footprint: the instruction does not read them)
    lands = [(code_at + len(code)) & MASK32] + [a & MASK32 for a in getattr(case, "landings", ())]
    if post is not None:
        lands.append((post["cs_base"] + post["eip"]) & MASK32)
    for a in lands:
        if not target.usable(a):
            raise UnsupportedState(f"the instruction may land at {a:#x}, outside {target.name}'s "
                                   "usable RAM, where no INT1 would catch it")
        if a not in foot:
            writes[a] = FILL

    # the vectors the instruction delivers through the guest's IDT stay out of the harness's
    # exception bitmap (its IDT entries are in the footprint); the profile's own bits stay in
    delivered = {vec for vec in range(32)
                 if any(((s["idtr_base"] + 8 * vec + k) & MASK32) in foot for k in range(8))}
    bitmap = (0xFFFFFFFF & ~sum(1 << vec for vec in delivered)) | c.exception_bitmap
    must_exit, _ = caps.allowed("exit")
    must_entry, _ = caps.allowed("entry")
    w: list[tuple[str, int, int]] = []

    def put(what: str, field: int, value: int) -> None:
        w.append((what, field, value & MASK32))

    def put64(what: str, field: int, value: int) -> None:
        put(what, field, value)
        put(what + " (high)", field + 1, value >> 32)

    # a guest that halts is woken by the VMX-preemption timer (SDM Vol. 3C 25.5.1): the harness
    # arms it for such a case only, and reads the activity state it exits in
    halts = bool(post and post.get("halted"))
    put("pin-based controls" + (" (+ the VMX-preemption timer)" if halts else ""), F["pin"],
        c.pin | (PREEMPT if halts else 0))
    put("primary controls (+ monitor trap flag where allowed)", F["primary"], c.primary | caps.mtf())
    if c.primary >> 31 & 1:
        put("secondary controls", F["secondary"], c.secondary)
    put("exception bitmap (+ the harness's vectors)", F["exception_bitmap"], bitmap)
    put("#PF error-code mask", F["pf_mask"], 0)
    put("#PF error-code match", F["pf_match"], 0)
    put("CR3-target count", F["cr3_count"], len(c.cr3_targets))
    for k, t in enumerate(c.cr3_targets):
        put(f"CR3-target value {k}", F["cr3_target"] + 2 * k, t)
    for n in ("cr0_mask", "cr4_mask", "cr0_shadow", "cr4_shadow"):
        put(n.replace("_", " "), F[n], getattr(c, n))
    put64("I/O bitmap A", F["io_a"], IO_BITMAP_A)
    put64("I/O bitmap B", F["io_b"], IO_BITMAP_B)
    put64("MSR bitmap", F["msr_bitmap"], MSR_BITMAP)
    put64("TSC offset", F["tsc_offset"], c.tsc_offset)
    if c.on("enable_ept"):
        put64("EPT pointer", F["eptp"], EPTP)
    if c.on("enable_vpid"):
        put("VPID", F["vpid"], 1)
    if halts:
        put("VMX-preemption timer", F["preemption"], PREEMPT_TICKS)
    elif c.on("vmx_preemption_timer"):
        put("VMX-preemption timer", F["preemption"], 0xFFFFFFFF)
    if c.on("pause_loop_exiting"):
        put("PLE gap", F["ple_gap"], 128)
        put("PLE window", F["ple_window"], 4096)
    put("VM-exit controls", F["exit_controls"], must_exit)
    put("VM-entry controls", F["entry_controls"], must_entry)
    for n in ("exit_msr_store", "exit_msr_load", "entry_msr_load", "entry_intr"):
        put(n.replace("_", " "), F[n], 0)
    # host state (24.5): the kernel's own machine
    for seg, field in HOST_SEL.items():
        put(f"host {seg.upper()}", field, KCS if seg == "cs" else KTSS if seg == "tr" else KDS)
    for n, value in (("host_cr0", HOST_CR0), ("host_cr3", HOST_PD), ("host_cr4", HOST_CR4),
                     ("host_fs_base", 0), ("host_gs_base", 0), ("host_tr_base", MAIN_TSS),
                     ("host_gdtr_base", KGDT), ("host_idtr_base", KIDT), ("host_sysenter_cs", 0),
                     ("host_sysenter_esp", 0), ("host_sysenter_eip", 0), ("host_rsp", KSTACK),
                     ("host_rip", kernel().labels["exit"])):
        put(n.replace("_", " "), F[n], value)
    # guest state (24.4): the case's own, caches included
    for seg in SEL:
        put(f"guest {seg.upper()} selector", SEL[seg], s[seg])
        put(f"guest {seg.upper()} base", BASE[seg], s[f"{seg}_base"])
        put(f"guest {seg.upper()} limit", LIMIT[seg], s[f"{seg}_limit"])
        put(f"guest {seg.upper()} access rights", AR[seg], _ar(s, seg))
    for n in ("gdtr_base", "gdtr_limit", "idtr_base", "idtr_limit", "cr0", "cr3", "cr4", "dr7",
              "sysenter_cs", "sysenter_esp", "sysenter_eip"):
        put(f"guest {n}", F[n], s[n])
    put("guest RSP", F["rsp"], s["esp"])
    put("guest RIP", F["rip"], s["eip"])
    put("guest RFLAGS", F["rflags"], st.EFLAGS_FIXED | s["flags"] | s["sysflags"])
    for n in ("pending_dbg", "interruptibility", "activity"):
        put(f"guest {n}", F[n], 0)
    put64("VMCS link pointer", F["link"], (1 << 64) - 1)
    put64("guest IA32_DEBUGCTL", F["debugctl"], 0)

    msr_fields = [(n, m) for n, m in target.msrs if n == "tsc_aux"]
    stub_at = base + 0x20
    sc = Code(stub_at)
    steps = []
    for what, field, value in w:
        steps.append((sc.here - stub_at, f"VMWRITE {what} ({field:#06x} = {value:#x})"))
        sc(vmwrite(field, value))
        sc.jcc(x86.JBE, "vm_failed")
    for n, msr in msr_fields:
        steps.append((sc.here - stub_at, f"WRMSR {msr:#x} ({n} = {s[n]:#x})"))
        sc(x86.mov_r_imm("ecx", msr), x86.mov_r_imm("eax", s[n] & MASK32),
           x86.mov_r_imm("edx", s[n] >> 32), x86.WRMSR)
    for n in (0, 1, 2, 3, 6):
        steps.append((sc.here - stub_at, f"MOV DR{n} ({s[f'dr{n}']:#x})"))
        sc(x86.mov_r_imm("eax", s[f"dr{n}"]), x86.mov_dr_eax(n))
    # VM entry never loads CR0.CD and NW (SDM Vol. 3C 26.3.2.1): the guest runs with root's, so
    # root takes the guest's before VMLAUNCH ('after' restores its own)
    cdnw = s["cr0"] & CR0_CD_NW
    steps.append((sc.here - stub_at, f"MOV CR0 ({HOST_CR0 | cdnw:#x}: the guest's CD/NW)"))
    sc(x86.mov_r_imm("eax", HOST_CR0 | cdnw), x86.mov_cr_eax(0))
    steps.append((sc.here - stub_at, f"MOV CR2 ({s['cr2']:#x})"))
    sc(x86.mov_r_imm("eax", s["cr2"]), x86.mov_cr_eax(2))
    steps.append((sc.here - stub_at, "loading the general registers"))
    for r in st.GPRS:
        if r != "esp":
            sc(x86.mov_r_imm(r, s[r]))
    steps.append((sc.here - stub_at, "VMLAUNCH"))
    sc.labels["vm_failed"] = kernel().labels["vm_failed"]
    sc.rel(b"\xe9", "launch")
    sc.labels["launch"] = kernel().labels["launch"]
    stub = sc.finish()
    stub_end = stub_at + len(stub)

    dumps = sorted(foot)
    cleans = (foot | {(s["ss_base"] + s["esp"] + k) & MASK32 for k in range(-64, 64)}) - set(writes)
    cleans = {a for a in cleans if target.usable(a)}
    runs_blob = b"".join(d32(a) + d32(n) + bytes(writes[a + k] for k in range(n))
                         for a, n in T._runs(writes)) + d32(0) + d32(0)
    at = stub_end + (-stub_end % 8)
    runs_at, at = at, at + len(runs_blob)
    dump_blob = T._table(T._runs(dumps))
    dumps_at, at = at, at + len(dump_blob)
    clean_blob = T._table(T._runs(cleans))
    cleans_at, at = at, at + len(clean_blob)
    msr_blob = b"".join(d32(m) for _, m in msr_fields) + d32(MASK32)
    msrs_at, at = at, at + len(msr_blob)
    end = at + (-at % 16)
    header = d32(end) + d32(case_id) + d32(stub_at) + d32(runs_at) + d32(dumps_at) + d32(cleans_at) \
        + d32(msrs_at) + d32(0)
    rec = bytearray(end - base)
    rec[0:len(header)] = header
    rec[stub_at - base:stub_end - base] = stub
    for off, blob in ((runs_at, runs_blob), (dumps_at, dump_blob), (cleans_at, clean_blob),
                      (msrs_at, msr_blob)):
        rec[off - base:off - base + len(blob)] = blob
    dec = Decoder(s, code_at, c, bitmap, steps, (stub_at, stub_end), dumps, [n for n, _ in msr_fields])
    return bytes(rec), dec


# --- reading a frame ------------------------------------------------------------------------------
# what the handler observes: the guest-state area gives every register the model compares, so
# unlike the protected-mode kernel nothing but EFLAGS.RF (a fault's, 27.3.3), the TSC and the
# performance counters and port values is left out
OBSERVED = dict(T.OBSERVED_BASE, cr0=MASK32, ldtr=0xFFFF, halted=1)


def observed(target: Target) -> dict[str, int]:
    out = dict(OBSERVED)
    for name, _ in target.msrs:
        if name != "tsc":
            out[name] = (1 << st.FIELD[name].width) - 1
    return out


def _step_at(dec: Decoder, eip: int) -> str:
    off = eip - dec.stub[0]
    label = ""
    for start, what in dec.steps:
        if start <= off:
            label = what
    return label


def decode(dec: Decoder, target: Target, frame: T.Frame) -> Reading:
    """The outcome a frame reports: a Fault the guest would see, a VM exit, or the state after the
    instruction (an MTF exit, or a trap that exits after it completed)."""
    s = dec.state
    if frame.type == "S":
        vec, code, eip = struct.unpack_from("<III", frame.payload)
        label = _step_at(dec, eip) or f"the VMX kernel at EIP {eip:#x}"
        return Reading(None, f"{target.name} refuses the state: {label} raises {vector_name(vec)}",
                       {}, frozenset())
    if frame.type == "L":
        field, rflags, err = struct.unpack_from("<III", frame.payload)
        what = {0xFFFFFFFF: "VMCLEAR/VMPTRLD", 0xFFFFFFFE: "VMLAUNCH"}.get(field, f"VMWRITE of field {field:#06x}")
        kind = "VMfailValid" if rflags & 0x40 else "VMfailInvalid"
        err_s = f", VM-instruction error {err} ({INSTRUCTION_ERRORS.get(err, 'unlisted')})" \
            if rflags & 0x40 else ""
        return Reading(None, f"{target.name} refuses the state: {what} fails ({kind}{err_s})", {},
                       frozenset(), note=f"vm-instruction-error:{err if rflags & 0x40 else -1}")
    if frame.type != "R":
        raise FrameError(f"frame of type {frame.type} where a result belongs")
    p = frame.payload
    n_fixed = 8 + len(READ) + len(HOST_READ)
    need = 4 * n_fixed + 8 * len(dec.msr_fields) + len(dec.dumps)
    if len(p) != need:
        raise FrameError(f"result frame of {len(p)} bytes, {need} expected")
    vals = struct.unpack_from(f"<{n_fixed}I", p)
    gpr = dict(zip(GPR_ORDER, vals[:8]))
    r = dict(zip([n for n, _ in READ], vals[8:8 + len(READ)]))
    host = dict(zip(HOST_READ, vals[8 + len(READ):]))
    reason = r["exit_reason"]
    if reason & ENTRY_FAIL:
        basic = reason & 0xFFFF
        what = {33: "invalid guest state", 34: "MSR loading", 41: "a machine-check event"}.get(basic, f"reason {basic}")
        return Reading(None, f"{target.name} refuses the state: VM entry fails ({what}, exit "
                             f"qualification {r['qualification']:#x}; SDM Vol. 3C 26.7)", {}, frozenset())
    basic = reason & 0xFFFF
    at_insn = r["cs"] == s["cs"] and r["rip"] == s["eip"]
    if basic == 0:
        info = r["intr_info"]
        vec, typ, has_code = info & 0xFF, info >> 8 & 7, info >> 11 & 1
        code = r["intr_error"] if has_code else None
        name = vector_name(vec) + (f"({code:#x})" if has_code else "")
        if dec.controls.exception_bitmap >> vec & 1:
            return Reading(Exit("vmx", "exception", 0, vec,
                                f"{target.name}: VM exit on {name} (vector {vec} in the exception bitmap)"),
                           "", {}, frozenset())
        if at_insn:
            return Reading(Fault(vec, code, f"{target.name} raised {name} in non-root operation"),
                           "", {}, frozenset())
        # elsewhere: the instruction completed and what came next exited (the INT1 fill or pad,
        # a trap-like #DB, a fault of the next instruction): the state after it, as at an MTF exit
    elif basic == PREEMPT_EXIT and at_insn and not r["activity"]:
        return Reading(None, f"{target.name} refuses the state: the VMX-preemption timer expired "
                             "before the instruction ran", {}, frozenset())
    elif basic not in (MTF_EXIT, PREEMPT_EXIT):
        nm = EXIT_NAMES.get(basic, f"reason{basic}")
        return Reading(Exit("vmx", nm, basic, r["qualification"],
                            f"{target.name}: VM exit {nm} (basic exit reason {basic})"), "", {}, frozenset())
    caught = f"{vector_name(r['intr_info'] & 0xFF)} exit" if basic == 0 else \
        "VMX-preemption timer exit, halted" if basic == PREEMPT_EXIT else "MTF exit"
    out = {k: (dict(val) if isinstance(val, dict) else val) for k, val in s.items()}
    for reg in st.GPRS:
        if reg != "esp":
            out[reg] = gpr[reg]
    out["esp"] = r["rsp"]
    out["eip"] = r["rip"]
    out["flags"] = r["rflags"] & st.USER_FLAGS_MASK
    out["sysflags"] = r["rflags"] & st.SYS_FLAGS_MASK
    for seg in SEL:
        out[seg] = r[seg] & 0xFFFF
    out["cpl"] = (r["ss_ar"] >> 5) & 3
    for n in ("gdtr_base", "gdtr_limit", "idtr_base", "idtr_limit", "cr0", "cr3", "cr4", "dr7",
              "sysenter_cs", "sysenter_esp", "sysenter_eip"):
        out[n] = r[n]
    for n, val in host.items():
        out[n] = val
    out["halted"] = int(r["activity"] == 1)            # activity state HLT (24.4.2)
    at = 4 * n_fixed
    obs = observed(target)
    for fname in dec.msr_fields:
        lo, hi = struct.unpack_from("<II", p, at)
        at += 8
        out[fname] = (lo | hi << 32) & ((1 << st.FIELD[fname].width) - 1)
    for a, b in zip(dec.dumps, p[at:]):
        out["mem"][a] = b
    return Reading(Next(out), "", obs, frozenset(),
                   f"completed; {caught} at {r['cs']:#x}:{r['rip']:#x}")


# SDM Vol. 3C 30.4, Table 30-1 (the ones a VMCLEAR/VMPTRLD/VMWRITE/VMLAUNCH can give)
INSTRUCTION_ERRORS = {
    2: "VMCLEAR with invalid physical address", 3: "VMCLEAR with VMXON pointer",
    4: "VMLAUNCH with non-clear VMCS", 7: "VM entry with invalid control field(s)",
    8: "VM entry with invalid host-state field(s)", 9: "VMPTRLD with invalid physical address",
    10: "VMPTRLD with VMXON pointer", 11: "VMPTRLD with incorrect VMCS revision identifier",
    12: "VMREAD/VMWRITE from/to unsupported VMCS component",
    13: "VMWRITE to read-only VMCS component",
    26: "VM entry with events blocked by MOV SS",
}


# --- the image ------------------------------------------------------------------------------------
@dataclass
class Batch:
    image: bytes
    decoders: list
    ids: list


def image(records: Sequence[bytes], bitmaps: tuple[bytes, bytes, bytes]) -> bytes:
    kern = kernel()
    body = bytearray(kern.blob)
    for addr, blob in zip((IO_BITMAP_A, IO_BITMAP_B, MSR_BITMAP), bitmaps):
        body[addr - KCODE:addr - KCODE + len(blob)] = blob
    for r in records:
        body += r
    body += d32(0) * 8
    total = 512 + len(body)
    if total > FLOPPY:
        raise ValueError(f"batch of {total} bytes does not fit a 1.44 MB floppy")
    img = T.boot_sector(-(-total // T.TRACK)) + bytes(body)
    return img + bytes(FLOPPY - len(img))


def bitmaps_of(c: vmx.Controls) -> tuple[bytes, bytes, bytes]:
    a, b = io_bitmaps(c.io_exits)
    return a, b, msr_bitmap(c.msr_read_exits, c.msr_write_exits)


def bitmap_key(c: vmx.Controls) -> tuple:
    return (c.io_exits, c.msr_read_exits, c.msr_write_exits)


def build_batch(cases: Sequence, target: Target, caps: Caps, ids: Sequence[int] | None = None,
                limit: int = FLOPPY) -> tuple[Batch, list[tuple[int, str]], int]:
    """As many of ``cases`` as fit one floppy, all with the bitmaps of the first case's controls
    (the caller groups cases by ``bitmap_key``)."""
    bitmaps = bitmaps_of(cases[0].controls) if cases else bitmaps_of(vmx.DEFAULT)
    recs, decs, taken, refused, used = T.pack(
        cases, ids, limit, RECORDS, lambda case, at, idx: build_record(case, target, caps, at, idx))
    return Batch(image(recs, bitmaps), decs, taken), refused, used


def probe_image() -> bytes:
    """A batch of no cases: the boot frame (with the capability MSRs) or a ``V`` frame."""
    return image([], bitmaps_of(vmx.DEFAULT))


__all__ = ["kernel", "build_batch", "decode", "Caps", "caps_from_boot", "probe_image", "frame_bytes"]
