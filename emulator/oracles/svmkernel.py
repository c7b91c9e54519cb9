"""The test kernel's SVM mode: every case runs as the guest of an AMD SVM VMRUN, under a VMCB built
from the svm profile's intercepts (``model.svm.Intercepts``); the code after VMRUN - where
#VMEXIT resumes the host - reports what happened over port 0xE9 in the test kernel's frames.

One boot (AMD APM Vol. 2 chapter 15; every address is physical):

1. the boot sector of ``testkernel``; the kernel checks CPUID 8000_0001h:ECX.SVM (bit 2), reads
   CPUID 8000_000Ah (the SVM features: nested paging, ...), sets EFER.SVME and VM_HSAVE_PA, and
   turns paging on with the identity map of 4 MiB pages (nested paging in a legacy-mode host
   uses the host's paging format, 15.25.3: a 2-level table of 4 KiB pages maps 0-64 MiB).  The
   boot frame carries the CPUID words, or says SVM is missing (status 1);
2. per record: the record's VMCB image is copied to the VMCB page (zeroed first), the general
   registers VMRUN does not load (everything but RAX and RSP, 15.5.1) are set, CLGI, VMRUN;
3. the guest runs one instruction: every exception vector but those the instruction delivers is
   intercepted (15.12), so a fault exits before delivery and a completion is caught by the INT1
   (0xF1) that fills memory and is written at the landings (its #DB exits);
4. after #VMEXIT: the guest's registers, the VMCB's EXITCODE, EXITINFO1/2, EXITINTINFO and the
   save area, DR0-DR3, the MSRs and the record's memory go out in an ``R`` frame; STGI.

VMRUN's consistency checks (15.5.1) are Bochs's: a state it rejects exits with VMEXIT_INVALID,
reported as refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from pgvirt.model import state as st
from pgvirt.model import svm
from pgvirt.model.outcome import Exit, Fault, Next, vector_name

from ..validity import UnsupportedState
from . import testkernel as T
from . import vmxkernel as VK
from . import x86
from .testkernel import (FILL, FLOPPY, IMAGE_BASE, KCODE, KCS, KGDT, KIDT, KSTACK,
                         MAIN_TSS, MASK32, OUTBUF, VARS, KERNEL_HI, Code, FrameError, Reading, Target,
                         d32, w16)

VERSION = 1
MODE = "svm"

HOST_PD = IMAGE_BASE + 0x8000
HSAVE = IMAGE_BASE + 0x9000
VMCB = IMAGE_BASE + 0xA000
IOPM = IMAGE_BASE + 0xB000             # 12 KiB (15.10.1)
MSRPM = IMAGE_BASE + 0xE000            # 8 KiB (15.11)
N_PD = IMAGE_BASE + 0x10000           # the nested page table: 4 KiB pages, 0-64 MiB identity
N_PT = IMAGE_BASE + 0x11000
N_MAPPED = 16                          # page tables: 64 MiB
RECORDS = IMAGE_BASE + 0x21000
BOOT_RECORD = IMAGE_BASE + 0x5F00
HOST_CR0 = 0x80000031
HOST_CR4 = 1 << 4                      # PSE
MSR_EFER, MSR_HSAVE = 0xC0000080, 0xC0010117
VMEXIT_INVALID = (1 << 64) - 1
ICEBP = svm.INTERCEPTS["icebp"]

# VMCB offsets (APM Vol. 2 Table B-1, B-2)
C_CR, C_DR, C_EXC, C_VEC = 0x000, 0x004, 0x008, 0x00C
C_IOPM, C_MSRPM, C_TSC, C_ASID, C_EXITCODE, C_INFO1, C_INFO2, C_INTINFO, C_NP, C_NCR3 = \
    0x040, 0x048, 0x050, 0x058, 0x070, 0x078, 0x080, 0x088, 0x090, 0x0B0
SEGS = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")   # 0x400, 16 bytes each
S_CPL, S_EFER, S_CR4, S_CR3, S_CR0, S_DR7, S_DR6, S_RFLAGS, S_RIP, S_RSP, S_RAX = \
    0x4CB, 0x4D0, 0x548, 0x550, 0x558, 0x560, 0x568, 0x570, 0x578, 0x5D8, 0x5F8
S_SYSENTER_CS, S_SYSENTER_ESP, S_SYSENTER_EIP, S_CR2 = 0x628, 0x630, 0x638, 0x640
DUMPS = ((C_EXITCODE, 0x20), (0x400, 0x248))     # what the handler sends of the VMCB
GPR_ORDER = VK.GPR_ORDER
V_CUR = 0


def v(off: int) -> int:
    return VARS + off


def attrib(attr: int) -> int:
    """The VMCB's compressed attribute word (Table B-4): bits 7:0 and 15:12 of the cache's."""
    return (attr & 0xFF) | ((attr >> 4) & 0xF00)


def expand(a: int) -> int:
    return (a & 0xFF) | ((a & 0xF00) << 4)


def iopm(ports: frozenset) -> bytes:
    m = bytearray(3 * 4096)
    for p in ports:
        m[p >> 3] |= 1 << (p & 7)
    return bytes(m)


def msrpm(reads: frozenset, writes: frozenset) -> bytes:
    """Two bits per MSR, read then write (15.11): 0-1FFFh at 0, C000_0000h- at 800h, C001_0000h- at 1000h."""
    m = bytearray(2 * 4096)
    for msrs, bit in ((reads, 0), (writes, 1)):
        for r in msrs:
            base = 0 if r < 0x2000 else 0x800 if r >> 16 == 0xC000 else 0x1000
            n = 2 * (r & 0x1FFF) + bit
            m[base + (n >> 3)] |= 1 << (n & 7)
    return bytes(m)


@dataclass(frozen=True)
class Kernel:
    blob: bytes
    labels: Mapping[str, int]


@lru_cache(maxsize=None)
def kernel() -> Kernel:
    c = Code(KCODE)
    A = x86
    T.kernel_start(c, VARS, KERNEL_HI, v(V_CUR), BOOT_RECORD)
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb8" + d32(VERSION) + A.STOSD)
    c(x86.mov_r_imm("eax", 0x80000001), b"\x0f\xa2\xf6\xc1\x04")       # cpuid; test cl, 4
    c.jcc(x86.JNE, "has_svm")
    c(x86.mov_r_imm("eax", 1), A.STOSD, b"\x89\xc8", A.STOSD)
    c(b"\xb0\x42"); c.call("send"); c.jmp("finish")                     # 'B', status 1
    c.label("has_svm")
    c(b"\x31\xc0", A.STOSD, A.STOSD)                                     # status 0, 0
    c(x86.mov_r_imm("eax", 0x8000000A), b"\x0f\xa2", A.STOSD)           # eax: revision
    c(b"\x89\xd8", A.STOSD, b"\x89\xd0", A.STOSD)                      # ebx: ASIDs, edx: features
    c(b"\x57")
    c(x86.mov_r_imm("eax", HOST_PD), A.mov_cr_eax(3))
    c(x86.mov_r_imm("eax", HOST_CR4), A.mov_cr_eax(4))
    c(x86.mov_r_imm("eax", HOST_CR0), A.mov_cr_eax(0))
    c(x86.mov_r_imm("ecx", MSR_EFER), A.RDMSR, b"\x0d" + d32(svm.EFER_SVME), A.WRMSR)
    c(x86.mov_r_imm("ecx", MSR_HSAVE), x86.mov_r_imm("eax", HSAVE), b"\x31\xd2", A.WRMSR)
    c(b"\x5f")
    c(b"\xb0\x42"); c.call("send")
    c(b"\xbe" + d32(RECORDS))

    c.label("record")
    c(b"\x89\x35" + d32(v(V_CUR)))
    c(b"\x8b\x46\x08\x85\xc0"); c.jcc(x86.JE, "finish")
    c(b"\x31\xc0\xbf" + d32(VMCB) + b"\xb9" + d32(1024) + b"\xf3\xab")  # the VMCB page zeroed
    c(b"\x8b\x76\x0c"); c.call("copy_runs")
    c(b"\xa1" + d32(v(V_CUR)) + b"\xff\x60\x08")                        # jmp [record+8]: stub
    c.label("launch")                                                   # the stub ends here
    c(A.CLI, b"\x0f\x01\xdd", x86.mov_r_imm("eax", VMCB), b"\x0f\x01\xd8")   # clgi; vmrun
    # #VMEXIT: the host's RAX, RSP, segments, CRs are back; the other GPRs are the guest's
    c(b"\x60\xfc")                                                       # pushad; cld
    c(b"\xbf" + d32(OUTBUF + 9) + b"\x89\xe6\xb9" + d32(8) + b"\xf3\xa5")
    for off, n in DUMPS:
        c(b"\xbe" + d32(VMCB + off) + b"\xb9" + d32(n) + b"\xf3\xa4")
    for n in (0, 1, 2, 3):
        c(A.mov_eax_dr(n), A.STOSD)
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x18")
    c.label("msr")
    c(A.LODSD, b"\x83\xf8\xff"); c.jcc(x86.JE, "msr_done")
    c(b"\x89\xc1\x56", A.RDMSR, A.STOSD, b"\x89\xd0", A.STOSD, b"\x5e"); c.jmp("msr")
    c.label("msr_done")
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x10"); c.call("dump_runs")
    c(x86.mov_r_imm("esp", KSTACK), b"\x0f\x01\xdc")                    # stgi
    c(b"\xb0\x52"); c.call("send")

    c.label("after")
    c(x86.mov_r_imm("esp", KSTACK), x86.mov_r_imm("eax", HOST_CR0), A.mov_cr_eax(0))
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x0c"); c.call("fill_copied")
    c(b"\xa1" + d32(v(V_CUR)) + b"\x8b\x70\x14"); c.call("fill_runs")
    c(b"\x8b\x35" + d32(v(V_CUR)) + b"\x8b\x36"); c.jmp("record")

    c.label("finish")
    c(b"\xbf" + d32(OUTBUF + 9) + b"\xb0\x45"); c.call("send")
    c(b"\xb0\x01\xe6\xf4")
    c(b"\x66\xba\x00\x89")
    for ch in b"Shutdown":
        c(b"\xb0" + bytes([ch]) + b"\xee")
    c.label("halt")
    c(A.CLI, A.HLT); c.rel(b"\xeb", "halt", 1)
    T.routines(c)
    for vec in range(32):
        c.label(f"fault{vec}")
        if vec not in T.ERROR_CODE_VECTORS:
            c(b"\x6a\x00")
        c(b"\x6a" + bytes([vec])); c.jmp("fault")
    c.label("fault")
    c(b"\x58\x5b\x59")
    c(x86.mov_r_imm("esp", KSTACK))
    c(b"\xbf" + d32(OUTBUF + 9), A.STOSD, b"\x89\xd8", A.STOSD, b"\x89\xc8", A.STOSD)
    c(b"\xb0\x53"); c.call("send")
    c.jmp("after")
    c.align(8)
    c.label("kgdtr"); c(w16(T.KGDT_LIMIT) + d32(KGDT), bytes(2))
    c.label("kidtr"); c(w16(32 * 8 - 1) + d32(KIDT), bytes(2))
    code = c.finish()
    if c.here > KGDT:
        raise AssertionError(f"SVM kernel code runs to {c.here:#x}, past the GDT at {KGDT:#x}")
    img, put = T.vm_kernel_image(c, code, RECORDS, MAIN_TSS)
    put(BOOT_RECORD, d32(0) + d32(0xFFFFFFFF))
    put(HOST_PD, VK.host_pd())
    # nested paging in a legacy-mode host: 2-level tables of 4 KiB pages (Bochs 2.7 does not
    # take 4 MiB pages there), U set - nested walks are user accesses (APM Vol. 2 15.25.5)
    put(N_PD, b"".join(d32((N_PT + 4096 * i) | 7) for i in range(N_MAPPED)))
    put(N_PT, b"".join(d32((i << 12) | 7) for i in range(1024 * N_MAPPED)))
    return Kernel(bytes(img), dict(c.labels))


class SVMUnavailable(RuntimeError):
    """The emulated CPU has no SVM."""


@dataclass(frozen=True)
class Caps:
    """CPUID 8000_000Ah: the SVM revision, the number of ASIDs, the feature bits (EDX: bit 0
    nested paging, APM Vol. 3 CPUID Fn8000_000A)."""

    revision: int
    asids: int
    features: int

    @property
    def nested_paging(self) -> bool:
        return bool(self.features & 1)

    def as_json(self) -> dict:
        return {"revision": self.revision, "asids": self.asids, "features": f"{self.features:#x}",
                "nested_paging": self.nested_paging}


def caps_from_boot(payload: bytes) -> Caps:
    if len(payload) < 12:
        raise FrameError(f"boot frame of {len(payload)} bytes")
    _, status, a = struct.unpack_from("<III", payload)
    if status == 1:
        raise SVMUnavailable(f"the CPU model has no SVM (CPUID 8000_0001h:ECX = {a:#x}, bit 2 clear)")
    if len(payload) != 24:
        raise FrameError(f"boot frame of {len(payload)} bytes, 24 expected")
    rev, asids, feat = struct.unpack_from("<III", payload, 12)
    return Caps(rev & 0xFF, asids, feat)


@dataclass
class Decoder:
    state: dict
    controls: svm.Intercepts
    steps: list
    stub: tuple[int, int]
    dumps: list
    msr_fields: list


def _seg(s: Mapping, seg: str) -> bytes:
    if seg in ("gdtr", "idtr"):
        return w16(0) + w16(0) + d32(s[f"{seg}_limit"]) + struct.pack("<Q", s[f"{seg}_base"])
    if seg == "ldtr":
        a = 0x82 if s["ldtr"] & 0xFFFC else 0
        return w16(s["ldtr"]) + w16(attrib(a)) + d32(s["ldtr_limit"]) + struct.pack("<Q", s["ldtr_base"])
    attr = s[f"{seg}_attr"]
    if seg in ("es", "ds", "fs", "gs") and s[seg] & 0xFFFC == 0:
        attr = 0                                    # a null data selector: not present
    return w16(s[seg]) + w16(attrib(attr)) + d32(s[f"{seg}_limit"]) + struct.pack("<Q", s[f"{seg}_base"])


def build_record(case, target: Target, caps: Caps, base: int, case_id: int) -> tuple[bytes, Decoder]:
    c: svm.Intercepts = case.controls
    s = VK.complete(case.state)
    code = bytes(case.code)
    if not code or len(code) > 15:
        raise UnsupportedState(f"an instruction is 1 to 15 bytes, not {len(code)}")
    if c.nested_paging and not caps.nested_paging:
        raise UnsupportedState("the CPU has no nested paging (CPUID 8000_000Ah:EDX bit 0)")
    code_at, foot = T.place_instruction(s, code, case.mem, target)
    for p in sorted(set(case.io)):
        if not (c.on("ioio_prot") and p in c.io_exits):
            for lo, hi, what in target.io_unsafe:
                if lo <= p <= hi:
                    raise UnsupportedState(f"port {p:#x} is {what} on {target.name}, and the "
                                           "intercepts let the guest reach it")
    post = case.expect.state if isinstance(case.expect, Next) else None
    if post is not None:
        if post["cr0"] >> st.CR0_PG & 1:
            raise UnsupportedState("the instruction turns paging on: the guest has no page tables")
        if post.get("halted"):
            raise UnsupportedState("the instruction halts the guest, and nothing would wake it")
        if (post["cs_base"] + post["eip"]) & MASK32 == code_at:
            raise UnsupportedState("the instruction lands on itself (one iteration of a REP)")
    writes = dict(s["mem"])
    for a in foot:
        writes.setdefault(a, 0)
    lands = [(code_at + len(code)) & MASK32] + [a & MASK32 for a in getattr(case, "landings", ())]
    if post is not None:
        lands.append((post["cs_base"] + post["eip"]) & MASK32)
    for a in lands:
        if not target.usable(a):
            raise UnsupportedState(f"the instruction may land at {a:#x}, outside {target.name}'s "
                                   "usable RAM, where no INT1 would catch it")
        if a not in foot:
            writes[a] = FILL
    delivered = {vec for vec in range(32)
                 if any(((s["idtr_base"] + 8 * vec + k) & MASK32) in foot for k in range(8))}
    exceptions = (0xFFFFFFFF & ~sum(1 << vec for vec in delivered)) | c.exceptions
    # the VMCB image
    vm = bytearray(0x680)
    struct.pack_into("<HHHHI", vm, C_CR, c.cr_read, c.cr_write, c.dr_read, c.dr_write, exceptions)
    # the harness's catch after a completion: the INT1 there, by its own intercept (the #DB of
    # an ICEBP is not the #DB exception intercept's on Bochs)
    vectors = list(c.vectors)
    vectors[svm.WORDS.index(ICEBP.word)] |= 1 << ICEBP.bit
    struct.pack_into("<III", vm, C_VEC, *vectors)
    struct.pack_into("<QQq", vm, C_IOPM, IOPM, MSRPM, c.tsc_offset - (1 << 64) if c.tsc_offset >> 63 else c.tsc_offset)
    struct.pack_into("<I", vm, C_ASID, c.asid)
    if c.nested_paging:
        struct.pack_into("<Q", vm, C_NP, 1)
        struct.pack_into("<Q", vm, C_NCR3, N_PD)
    for k, seg in enumerate(SEGS):
        vm[0x400 + 16 * k:0x410 + 16 * k] = _seg(s, seg)
    vm[S_CPL] = s["cpl"]
    struct.pack_into("<Q", vm, S_EFER, s["efer"])
    for off, n in ((S_CR4, "cr4"), (S_CR3, "cr3"), (S_CR0, "cr0"), (S_DR7, "dr7"), (S_DR6, "dr6"),
                   (S_RIP, "eip"), (S_RSP, "esp"), (S_RAX, "eax"), (S_SYSENTER_CS, "sysenter_cs"),
                   (S_SYSENTER_ESP, "sysenter_esp"), (S_SYSENTER_EIP, "sysenter_eip"), (S_CR2, "cr2")):
        struct.pack_into("<Q", vm, off, s[n])
    struct.pack_into("<Q", vm, S_RFLAGS, st.EFLAGS_FIXED | s["flags"] | s["sysflags"])
    struct.pack_into("<Q", vm, 0x668, 0x0007040600070406)                  # g_PAT: the reset value
    vmcb_runs = [(VMCB + a, n) for a, n in T._runs(a for a, b in enumerate(vm) if b)]
    kwrites = b"".join(d32(a) + d32(n) + bytes(vm[a - VMCB:a - VMCB + n]) for a, n in vmcb_runs)

    msr_fields = [(n, m) for n, m in target.msrs if n == "tsc_aux"]
    stub_at = base + 0x20
    sc = Code(stub_at)
    steps = []
    for n, msr in msr_fields:
        steps.append((sc.here - stub_at, f"WRMSR {msr:#x} ({n} = {s[n]:#x})"))
        sc(x86.mov_r_imm("ecx", msr), x86.mov_r_imm("eax", s[n] & MASK32),
           x86.mov_r_imm("edx", s[n] >> 32), x86.WRMSR)
    for n in (0, 1, 2, 3):
        steps.append((sc.here - stub_at, f"MOV DR{n} ({s[f'dr{n}']:#x})"))
        sc(x86.mov_r_imm("eax", s[f"dr{n}"]), x86.mov_dr_eax(n))
    steps.append((sc.here - stub_at, "loading the general registers VMRUN does not"))
    for r in ("ecx", "edx", "ebx", "ebp", "esi", "edi"):
        sc(x86.mov_r_imm(r, s[r]))
    steps.append((sc.here - stub_at, "VMRUN"))
    sc.labels["launch"] = kernel().labels["launch"]
    sc.rel(b"\xe9", "launch")
    stub = sc.finish()
    stub_end = stub_at + len(stub)

    dumps = sorted(foot)
    cleans = (foot | {(s["ss_base"] + s["esp"] + k) & MASK32 for k in range(-64, 64)}) - set(writes)
    cleans = {a for a in cleans if target.usable(a)}
    runs_blob = b"".join(d32(a) + d32(n) + bytes(writes[a + k] for k in range(n))
                         for a, n in T._runs(writes))
    at = stub_end + (-stub_end % 8)
    runs_at = at
    # the VMCB's bytes go in with the case's memory (the page is zeroed first, so what
    # fill_copied leaves there afterwards does not matter)
    runs_blob = kwrites + runs_blob + d32(0) + d32(0)
    at += len(runs_blob)
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
    return bytes(rec), Decoder(s, c, steps, (stub_at, stub_end), dumps, [n for n, _ in msr_fields])


OBSERVED = dict(T.OBSERVED_BASE, cr0=MASK32, ldtr=0xFFFF)
EXIT_NAMES = {i.exit_code: i.name for i in svm.INTERCEPTS.values()}


def _exit_name(code: int) -> str:
    if code < 0x10:
        return f"read_cr{code}"
    if code < 0x20:
        return f"write_cr{code - 0x10}"
    if code < 0x30:
        return f"read_dr{code - 0x20}"
    if code < 0x40:
        return f"write_dr{code - 0x30}"
    if code < 0x60:
        return f"excp{code - 0x40}"
    return EXIT_NAMES.get(code, f"exit{code:#x}")


def decode(dec: Decoder, target: Target, frame: T.Frame) -> Reading:
    s = dec.state
    if frame.type == "S":
        vec, code, eip = struct.unpack_from("<III", frame.payload)
        return Reading(None, f"{target.name} refuses the state: the SVM kernel at EIP {eip:#x} "
                             f"raises {vector_name(vec)}", {}, frozenset())
    if frame.type != "R":
        raise FrameError(f"frame of type {frame.type} where a result belongs")
    p = frame.payload
    need = 32 + sum(n for _, n in DUMPS) + 16 + 8 * len(dec.msr_fields) + len(dec.dumps)
    if len(p) != need:
        raise FrameError(f"result frame of {len(p)} bytes, {need} expected")
    gpr = dict(zip(GPR_ORDER, struct.unpack_from("<8I", p)))
    exitcode, info1, info2, intinfo = struct.unpack_from("<QQQQ", p, 32)
    save = p[64:64 + 0x248]

    def q(off):
        return struct.unpack_from("<Q", save, off - 0x400)[0]
    if exitcode == VMEXIT_INVALID:
        return Reading(None, f"{target.name} refuses the state: VMRUN's consistency checks fail "
                             "(VMEXIT_INVALID; APM Vol. 2 15.5.1)", {}, frozenset())
    rip = q(S_RIP) & MASK32
    cs = struct.unpack_from("<H", save, 16)[0]
    at_insn = rip == s["eip"] and cs == s["cs"]
    if 0x40 <= exitcode < 0x60:
        vec = exitcode - 0x40
        has_code = vec in T.ERROR_CODE_VECTORS
        code = info1 & 0xFFFFFFFF if has_code else None
        name = vector_name(vec) + (f"({code:#x})" if has_code else "")
        if dec.controls.exceptions >> vec & 1:
            return Reading(Exit("svm", f"excp{vec}", exitcode, None,
                                f"{target.name}: #VMEXIT on {name} (its exception intercept)"), "", {}, frozenset())
        if at_insn:
            return Reading(Fault(vec, code, f"{target.name} raised {name} in the SVM guest"), "", {}, frozenset())
    elif exitcode != ICEBP.exit_code or at_insn:
        nm = _exit_name(exitcode)
        return Reading(Exit("svm", nm, exitcode, info1 if exitcode in (0x7B, 0x400) else None,
                            f"{target.name}: #VMEXIT {nm} ({exitcode:#x}; EXITINFO2 {info2:#x})"), "", {}, frozenset())
    out = {k: (dict(val) if isinstance(val, dict) else val) for k, val in s.items()}
    for reg in ("ecx", "edx", "ebx", "ebp", "esi", "edi"):
        out[reg] = gpr[reg]
    out["eax"] = q(S_RAX) & MASK32
    out["esp"] = q(S_RSP) & MASK32
    out["eip"] = rip
    fl = q(S_RFLAGS)
    out["flags"], out["sysflags"] = fl & st.USER_FLAGS_MASK, fl & st.SYS_FLAGS_MASK
    for k, seg in enumerate(SEGS):
        sel, _a, lim, b = struct.unpack_from("<HHIQ", save, 16 * k)
        if seg in ("gdtr", "idtr"):
            out[f"{seg}_limit"], out[f"{seg}_base"] = lim & 0xFFFF, b & MASK32
        else:
            out[seg] = sel
    out["cpl"] = save[S_CPL - 0x400] & 3
    for off, n in ((S_CR0, "cr0"), (S_CR3, "cr3"), (S_CR4, "cr4"), (S_DR7, "dr7"), (S_DR6, "dr6"),
                   (S_CR2, "cr2"), (S_SYSENTER_CS, "sysenter_cs"), (S_SYSENTER_ESP, "sysenter_esp"),
                   (S_SYSENTER_EIP, "sysenter_eip")):
        out[n] = q(off) & MASK32
    out["efer"] = q(S_EFER)
    at = 64 + 0x248
    for n, val in zip(("dr0", "dr1", "dr2", "dr3"), struct.unpack_from("<4I", p, at)):
        out[n] = val
    at += 16
    for fname in dec.msr_fields:
        lo, hi = struct.unpack_from("<II", p, at)
        at += 8
        out[fname] = (lo | hi << 32) & ((1 << st.FIELD[fname].width) - 1)
    for a, b in zip(dec.dumps, p[at:]):
        out["mem"][a] = b
    obs = dict(OBSERVED)
    for name, _ in target.msrs:
        if name != "tsc":
            obs[name] = (1 << st.FIELD[name].width) - 1
    return Reading(Next(out), "", obs, frozenset(), f"completed; caught at {cs:#x}:{rip:#x}")


@dataclass
class Batch:
    image: bytes
    decoders: list
    ids: list


def image(records: Sequence[bytes], c: svm.Intercepts) -> bytes:
    kern = kernel()
    body = bytearray(kern.blob)
    for addr, blob in ((IOPM, iopm(c.io_exits)), (MSRPM, msrpm(c.msr_read_exits, c.msr_write_exits))):
        body[addr - KCODE:addr - KCODE + len(blob)] = blob
    for r in records:
        body += r
    body += d32(0) * 8
    total = 512 + len(body)
    if total > FLOPPY:
        raise ValueError(f"batch of {total} bytes does not fit a 1.44 MB floppy")
    img = T.boot_sector(-(-total // T.TRACK)) + bytes(body)
    return img + bytes(FLOPPY - len(img))


def bitmap_key(c: svm.Intercepts) -> tuple:
    return (c.io_exits, c.msr_read_exits, c.msr_write_exits)


def build_batch(cases: Sequence, target: Target, caps: Caps, ids: Sequence[int] | None = None,
                limit: int = FLOPPY):
    """As many of ``cases`` as fit one floppy, all with the IOPM/MSRPM of the first case's
    intercepts (the caller groups cases by ``bitmap_key``)."""
    first = cases[0].controls if cases else svm.DEFAULT
    recs, decs, taken, refused, used = T.pack(
        cases, ids, limit, RECORDS, lambda case, at, idx: build_record(case, target, caps, at, idx))
    return Batch(image(recs, first), decs, taken), refused, used


def probe_image() -> bytes:
    return image([], svm.DEFAULT)
