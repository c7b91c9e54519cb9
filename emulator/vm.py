"""Unicorn 2.1.4 as a whole machine for one guest: its memory, its ports, long runs.

``machine.Machine`` puts any model state on Unicorn and runs ONE instruction; a ``VM`` runs a
guest for as many instructions as it is asked, for the monitors of ``pgvirt.monitor``.  With
``machine.py`` it is the only module that knows Unicorn.  What it relies on (REFERENCE.md 4 and
the experiments recorded in tests/test_vm.py, which fail when Unicorn changes):

* **Instruction count.**  ``emu_start(count=N)`` makes Unicorn count instructions in a C hook
  (``uc_struct.emu_counter``, found at start-up by ``_counter_offset`` and checked).  The count
  of the current instruction is read inside port hooks, so a device sees the exact number of
  instructions retired before the IN or OUT: the virtual clock of the monitors.  Stops: after N
  instructions the counter reads N+1; a fault at instruction i reads i (i-1 retired); a stop
  requested in a port hook of instruction i reads i+1 (i retired); a block hook runs before the
  count hook of the block's first instruction; HLT at CPL 0 ends ``emu_start`` with i retired.
* **CPL and segments.**  Register writes cannot leave CPL 0 and CS cannot be written at CPL 3, so
  a new CPL or segment configuration is reached as ``machine`` reaches it (a CPL-0 stub in a
  scratch window, IRETD to the target ring), and the context after the stub is kept per
  configuration.  Registers and caches are read from the saved context (``CPUX86State``), whose
  offsets are located at start-up through values written with the API (``LayoutError``
  otherwise): ``reg_read_batch`` costs tens of microseconds, a context copy two.
* **Sticky exceptions.**  After a fault QEMU keeps ``old_exception``, so the next fault would be
  a #DF and the one after a silent triple fault; the VM resets it after every fault it reports
  (offset located like the others).
* **Faults** reach ``UC_HOOK_INTR`` as a vector with EIP at the faulting instruction (after it
  for INT n); #UD comes as ``UC_ERR_INSN_INVALID``.  Unicorn never consults the IDT: a ``Stop``
  reports what Unicorn saw and the monitor asks the model what really happens.
* **Port I/O.**  Unicorn ignores IOPL and the I/O permission bitmap (deviation
  "io-bitmap-ignored").  With ``io_traps`` (a guest at CPL 3 with IOPL 0 and a TSS without a
  bitmap, as a profile runs it) every IN/OUT/INS/OUTS is undone and reported as the #GP(0) the
  processor raises; otherwise the port handler answers.  Multi-byte accesses are byte accesses
  at consecutive ports, as on the ISA bus.
* **Memory.**  Guest RAM is mapped from 0; the monitor's own pages are mapped read-only; nothing
  else is mapped, so a guest access elsewhere stops the run (``Stop.kind`` "outside").  A write
  to a write-protected page stops before it happens, precisely (the instruction restarts);
  read hooks on single bytes stop before the read.  After code bytes change,
  ``ctl_remove_cache`` drops stale translations.
"""

from __future__ import annotations

import ctypes
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

from unicorn import (UC_ARCH_X86, UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UC_ERR_INSN_INVALID,
                     UC_ERR_READ_PROT, UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_PROT,
                     UC_ERR_WRITE_UNMAPPED, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INTR, UC_HOOK_MEM_READ, UC_HOOK_MEM_UNMAPPED, UC_HOOK_MEM_WRITE,
                     UC_HOOK_MEM_WRITE_PROT, UC_MODE_32, UC_PROT_ALL, UC_PROT_EXEC,
                     UC_PROT_READ, Uc, UcError)
from unicorn import x86_const as X

from pgvirt.model import state as st

from . import machine as M
from . import states as layout

PAGE = 0x1000
MASK32 = 0xFFFFFFFF
_FOREVER = 1 << 62          # an ``until`` no PC reaches (CS.base + EIP < 2**33)
_IRETD_STUB_LIMIT = 400     # instructions a segment set-up stub may take

# Where the monitor's pages and the stub windows of ``machine`` lie: above any guest RAM.
MAX_RAM = 0x3FF00000
MONITOR_BASE, MONITOR_SIZE = 0xFFF00000, 0x100000


class VMError(RuntimeError):
    """Unicorn did something this module does not expect (a bug here or in Unicorn)."""


class LayoutError(VMError):
    """Unicorn's context or engine struct is not laid out as this module reads it."""


class Ports(Protocol):
    """Who answers port I/O: ``when`` is the number of instructions retired before this one
    plus ``VM.clock_offset`` (a monitor's idle time, so that ``when`` is its clock)."""

    def port_in(self, port: int, when: int) -> int: ...

    def port_out(self, port: int, value: int, when: int) -> bool: ...   # True: stop after it


@dataclass
class Stop:
    """Why ``VM.run`` returned.

    kind      "limit" (the count ran out), "halt" (HLT at CPL 0 retired), "event" (Unicorn
              reported ``vector``: EIP at the faulting instruction, or after an INT n),
              "invalid" (#UD at EIP), "io" (a port handler asked to stop after its
              instruction), "io-trap" (port I/O undone, EIP at it: the processor raises
              #GP(0)), "watch" (a watched block is about to run at EIP), "read-watch" (a read of
              a watched byte ``address``, undone, EIP at the instruction), "write-protect" (a
              write to the protected page of ``address``, not done, EIP at the instruction),
              "outside" (an access to ``address`` outside guest RAM and the device windows)
    retired   instructions retired by this run
    """

    kind: str
    retired: int
    eip: int
    vector: int | None = None
    address: int | None = None
    detail: str = ""
    software: bool = False      # "event": raised by INT n / INT3 / INTO (EIP is after it)
    code: int | None = None     # "event": the error code QEMU computed (the model decides)


# --- offsets in Unicorn's structures --------------------------------------------------------------
def _counter_offset(uc: Uc, scratch: int) -> int:
    """Offset of ``emu_counter`` in the ``uc_struct``: the size_t that reads N+1 after a run of
    ``count=N`` (the instruction after the N-th is counted, then stopped), for two N."""
    uc.mem_write(scratch, b"\x90" * 64)                 # NOPs
    saved = uc.context_save()
    h = uc._uch.value
    blobs = []
    for n in (7, 29):
        uc.emu_start(scratch, _FOREVER, count=n)
        blobs.append((n, ctypes.string_at(h, 0x4000)))
    uc.context_restore(saved)
    (n1, a), (n2, b) = blobs
    hits = [o for o in range(0, len(a) - 8, 8)
            if struct.unpack_from("<Q", a, o)[0] == n1 + 1 and struct.unpack_from("<Q", b, o)[0] == n2 + 1
            and struct.unpack_from("<Q", a, o + 8)[0] == n1 and struct.unpack_from("<Q", b, o + 8)[0] == n2]
    if len(hits) != 1:
        raise LayoutError(f"cannot locate Unicorn's instruction counter ({len(hits)} candidates)")
    return hits[0]


@dataclass(frozen=True)
class _Layout:
    """Offsets in the saved context (QEMU's CPUX86State, TARGET_X86_64: 8-byte registers)."""

    regs: int           # regs[0..7] then eip (u64 each)
    eip: int
    segs: int           # SegmentCache segs[6], ldt, tr, gdt, idt
    cr: int             # cr[0..4]
    dr: int             # dr[0..7]
    sysenter: int       # u32 sysenter_cs, then (aligned) u64 sysenter_esp, sysenter_eip
    old_exception: int
    # int error_code; int exception_is_int; target_ulong exception_next_eip; then dr[8]: what
    # QEMU records about the event it raised, before Unicorn's hook replaces the delivery.
    error_code: int = 0
    is_int: int = 0
    tsc_aux: int = 0


def _find(blob: bytes, pattern: bytes, what: str) -> int:
    at = blob.find(pattern)
    if at < 0 or blob.find(pattern, at + 1) >= 0:
        raise LayoutError(f"cannot locate {what} in Unicorn's saved context")
    return at


def _calibrate(uc: Uc, scratch: int) -> _Layout:
    """Write distinctive values through the API and find them in the context blob."""
    saved = uc.context_save()
    regs = [0x1111_0000 + 0x101 * i for i in range(8)]
    for r, v in zip(M._GPR_IDS, regs):
        uc.reg_write(r, v)
    uc.reg_write(X.UC_X86_REG_EIP, 0x2468_ACE0)
    drs = [0x5A5A_0000 + 0x1000 * i for i in range(4)]
    for r, v in zip((X.UC_X86_REG_DR0, X.UC_X86_REG_DR1, X.UC_X86_REG_DR2, X.UC_X86_REG_DR3), drs):
        uc.reg_write(r, v)
    uc.reg_write(X.UC_X86_REG_CR2, 0x3C3C_3C3C)
    uc.reg_write(X.UC_X86_REG_CR3, 0x7E7E_7000)
    uc.msr_write(st.MSR_SYSENTER_ESP, 0x4D4D_4D4D)
    uc.msr_write(st.MSR_SYSENTER_EIP, 0x6E6E_6E6E)
    uc.msr_write(st.MSR_SYSENTER_CS, 0x1B1B)
    uc.msr_write(M.MSRS["tsc_aux"], 0x7A5C_0A11)
    blob = bytes(uc.context_save())
    q = lambda v: struct.pack("<Q", v)
    tsc_aux = _find(blob, q(0x7A5C_0A11), "IA32_TSC_AUX")
    reg_at = _find(blob, b"".join(q(v) for v in regs), "the general registers")
    eip_at = reg_at + 16 * 8          # regs[CPU_NB_REGS = 16], then eip
    if blob[eip_at:eip_at + 8] != q(0x2468_ACE0):
        raise LayoutError("EIP does not follow the 16 general registers in Unicorn's context")
    cr2 = _find(blob, q(0x3C3C_3C3C) + q(0x7E7E_7000), "CR2/CR3")
    dr = _find(blob, b"".join(q(v) for v in drs), "DR0-DR3")
    sesp = _find(blob, q(0x4D4D_4D4D) + q(0x6E6E_6E6E), "SYSENTER_ESP/EIP")
    if struct.unpack_from("<I", blob, sesp - 8)[0] != 0x1B1B:
        raise LayoutError("SYSENTER_CS does not precede SYSENTER_ESP in Unicorn's context")
    segs = M._calibrate(uc)
    uc.context_restore(saved)
    # old_exception: -1 before any fault, the vector after a #DE (DIV by zero at CPL 0).
    uc.mem_write(scratch, b"\x31\xc9\xf7\xf1")          # xor ecx, ecx; div ecx
    uc.ctl_remove_cache(scratch, scratch + 64)
    seen = []
    h = uc.hook_add(UC_HOOK_INTR, lambda u, intno, _: (seen.append(intno), u.emu_stop()))
    before = bytes(uc.context_save())
    uc.emu_start(scratch, _FOREVER, count=2)
    after = bytes(uc.context_save())
    uc.hook_del(h)
    uc.context_restore(saved)
    if seen != [0]:
        raise VMError(f"DIV by zero raised {seen} in Unicorn, not #DE")
    cands = [o for o in range(0, min(len(before), len(after)) - 4, 4)
             if struct.unpack_from("<i", before, o)[0] == -1 and struct.unpack_from("<i", after, o)[0] == 0]
    if len(cands) != 1:
        raise LayoutError(f"cannot locate QEMU's old_exception ({len(cands)} candidates)")
    # exception_is_int / exception_next_eip sit just below dr[0]: INT 0x80 sets them to 1 and
    # the next instruction, the #DE above left 0.
    is_int, next_eip = dr - 12, dr - 8
    if struct.unpack_from("<i", after, is_int)[0] != 0:
        raise LayoutError("QEMU's exception_is_int is not where CPUX86State puts it")
    uc.mem_write(scratch, b"\xcd\x80")
    uc.ctl_remove_cache(scratch, scratch + 64)
    seen.clear()
    h = uc.hook_add(UC_HOOK_INTR, lambda u, intno, _: (seen.append(intno), u.emu_stop()))
    uc.emu_start(scratch, _FOREVER, count=1)
    blob = bytes(uc.context_save())
    uc.hook_del(h)
    uc.context_restore(saved)
    if seen != [0x80] or struct.unpack_from("<i", blob, is_int)[0] != 1 \
            or struct.unpack_from("<Q", blob, next_eip)[0] != scratch + 2:
        raise LayoutError("QEMU's exception_is_int / exception_next_eip are not where "
                          "CPUX86State puts them")
    return _Layout(reg_at, eip_at, segs, cr2 - 16, dr, sesp - 8, cands[0], dr - 16, is_int,
                   tsc_aux)


_SEG = M._SEGCACHE   # u32 selector; u64 base; u32 limit, flags
_SEGS6 = struct.Struct("<" + "IxxxxQII" * 6)
_SEG_NAMES = tuple((r, f"{r}_base", f"{r}_limit", f"{r}_attr") for r in st.SREGS)
# The x87/SSE/AVX fields (machine.load_user / read_user move them as one group).
_USER = st.FPRS + ("fcw", "fsw", "ftw", "fop", "fip", "fcs", "fdp", "fds", "mxcsr") + st.ZMMS


class Memory:
    """Guest RAM for the model's concrete evaluation: ``get(address, default)`` reads a byte.

    Pages are read once per ``Memory`` (make a new one after the guest ran).  The monitor's
    pages read as they are (the real CPU reads its tables there); other bytes outside RAM read 0: a form also evaluates loads of branches it does not take (a stack switch it does
    not make), and those must not fail; ``outside`` records them for the monitor.
    ``overlay`` holds bytes the guest must see instead of RAM's (a patched site's original).
    """

    __slots__ = ("_vm", "_pages", "overlay", "outside")

    def __init__(self, vm: "VM", overlay: Mapping[int, int] | None = None):
        self._vm = vm
        self._pages: dict[int, bytes] = {}
        self.overlay = overlay or {}
        self.outside: set[int] = set()

    def get(self, a: int, default: int = 0) -> int:
        v = self.overlay.get(a)
        if v is not None:
            return v
        if not 0 <= a < self._vm.ram_size and not MONITOR_BASE <= a < MONITOR_BASE + MONITOR_SIZE:
            self.outside.add(a)
            return 0
        p = a >> 12
        page = self._pages.get(p)
        if page is None:
            page = self._pages[p] = bytes(self._vm.uc.mem_read(p << 12, PAGE))
        return page[a & 0xFFF]

    def __getitem__(self, a: int) -> int:
        return self.get(a)


class VM:
    """One guest on one Unicorn CPU.  See the module docstring for what each method relies on."""

    def __init__(self, ram_size: int, ports: Ports, *, io_traps: bool = False,
                 cached_configs: int = 64):
        if not PAGE <= ram_size <= MAX_RAM or ram_size % PAGE:
            raise ValueError(f"guest RAM of {ram_size:#x} bytes: a multiple of 4 KiB up to {MAX_RAM:#x}")
        self.ram_size = ram_size
        self.ports = ports
        self.io_traps = io_traps
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, ram_size, UC_PROT_ALL)
        uc.mem_map(MONITOR_BASE, MONITOR_SIZE, UC_PROT_READ)
        self._windows = []
        for w in M._WINDOWS:
            size = (M._W_SIZE + PAGE - 1) & ~(PAGE - 1)
            if w < ram_size:
                raise ValueError("guest RAM overlaps the set-up stub windows")
            uc.mem_map(w, size, UC_PROT_READ)
            self._windows.append((w, size))
        scratch = self._windows[0][0]
        uc.mem_protect(scratch, PAGE, UC_PROT_ALL)
        self._ctr_off = _counter_offset(uc, scratch)
        self._ctr = ctypes.c_size_t.from_address(uc._uch.value + self._ctr_off)
        self._layout = _calibrate(uc, scratch)
        uc.mem_write(scratch, bytes(PAGE))
        uc.mem_protect(scratch, PAGE, UC_PROT_READ)
        self._reset = uc.context_save()
        self._probe = uc.context_save()
        L = self._layout
        self._blob_size = max(L.old_exception, L.tsc_aux + 8, L.sysenter + 24) + 4
        self._cs_base = 0
        self._configs: OrderedDict[tuple, object] = OrderedDict()
        self._cached_configs = cached_configs
        self._config_key: tuple | None = None
        self._known: dict | None = None      # every scalar as last read/written; None after a run
        self.extra = {n: 0 for n in M.NOT_HELD + ("halted",)}   # fields Unicorn holds no state for
        self.retired = 0                     # instructions retired since the VM was made
        self.clock_offset = 0                # added to ``when`` in port hooks (``Ports``)
        self.stats = {"runs": 0, "stubs": 0, "faults": 0}
        self._stop: Stop | None = None
        self._hook_ctr = 0
        self._trap_regs: dict | None = None
        self._watch_hooks: list = []
        self._read_hooks: dict[int, int] = {}
        self._write_log: set | None = None
        self._write_hook = None
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        # Port I/O is the guests' one frequent hook (grub-invaders: an access every 11
        # instructions): with io_traps every access is undone, without them it goes straight to
        # the handler (``_pin``/``_pout`` and ``_base`` are set at each run).
        uc.hook_add(UC_HOOK_INSN, self._on_in_trap if io_traps else self._on_in, None, 1, 0,
                    X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out_trap if io_traps else self._on_out, None, 1, 0,
                    X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)

    # --- the counter -----------------------------------------------------------------------------
    def _counter(self) -> int:
        return self._ctr.value

    def now(self) -> int:
        """Instructions retired before the current one (inside a hook) or so far (outside)."""
        return self.retired + self._counter() - 1 if self._running else self.retired

    _running = False

    # --- hooks -----------------------------------------------------------------------------------
    def _set_stop(self, stop: Stop) -> None:
        if self._stop is None:
            self._stop = stop
        self.uc.emu_stop()

    def _on_intr(self, uc, intno, _):
        self._set_stop(Stop("event", 0, uc.reg_read(X.UC_X86_REG_EIP), vector=intno))

    def _io_trap(self, uc, port: int, kind: str) -> int | None:
        """Undo the port access (the processor would have raised #GP(0) before it) and stop.
        For IN, the hook returns the destination's current value, so nothing changes but EIP
        (and, for INS/OUTS, the index and count registers, saved here and put back)."""
        if self._stop is not None:
            return None
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        regs = {X.UC_X86_REG_EIP: eip}
        op = self._opcode(eip)
        if op in (0x6C, 0x6D, 0x6E, 0x6F):
            for r in (X.UC_X86_REG_ECX, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI):
                regs[r] = uc.reg_read(r)
        self._trap_regs = regs
        self._hook_ctr = self._ctr.value
        self._set_stop(Stop("io-trap", 0, eip, vector=13, address=port,
                            detail=f"port {kind} {port:#x} at CPL 3 with IOPL 0 and no I/O bitmap"))
        return op

    def _on_in_trap(self, uc, port, size, _):
        op = self._io_trap(uc, port, "read")
        if op in (0x6C, 0x6D):          # INS stores the value at ES:EDI: store what is there
            es = self._caches()["es_base"]
            at = (es + self._trap_regs[X.UC_X86_REG_EDI]) & MASK32
            if 0 <= at and at + size <= self.ram_size:
                return int.from_bytes(uc.mem_read(at, size), "little")
            return 0
        return uc.reg_read(X.UC_X86_REG_EAX) & ((1 << 8 * size) - 1)

    def _on_out_trap(self, uc, port, size, value, _):
        self._io_trap(uc, port, "write")

    _base = -1
    _pin = _pout = None

    def _on_in(self, uc, port, size, _):
        when = self._base + self._ctr.value
        if size == 1:
            return self._pin(port, when) & 0xFF
        value = 0
        for k in range(size):
            value |= (self._pin((port + k) & 0xFFFF, when) & 0xFF) << (8 * k)
        return value

    def _on_out(self, uc, port, size, value, _):
        when = self._base + self._ctr.value
        if size == 1:
            stop = self._pout(port, value & 0xFF, when)
        else:
            stop = False
            for k in range(size):
                stop |= bool(self._pout((port + k) & 0xFFFF, (value >> (8 * k)) & 0xFF, when))
        if stop:
            self._set_stop(Stop("io", 0, 0))

    def _opcode(self, eip: int) -> int | None:
        """The opcode byte of the instruction at CS:EIP, past legacy prefixes (CS.base as the
        last ``state``/``load`` saw it: at CPL 3 only a far transfer changes it)."""
        pc = (self._cs_base + eip) & MASK32
        if not 0 <= pc < self.ram_size:
            return None
        code = bytes(self.uc.mem_read(pc, min(15, self.ram_size - pc)))
        i = 0
        while i < len(code) and code[i] in M._PREFIXES:
            i += 1
        return code[i] if i < len(code) else None

    def _on_unmapped(self, uc, access, address, size, value, _):
        self._set_stop(Stop("outside", 0, uc.reg_read(X.UC_X86_REG_EIP), address=address & MASK32,
                            detail=f"{size}-byte access outside guest RAM"))
        return False

    def _on_write_prot(self, uc, access, address, size, value, _):
        if MONITOR_BASE <= address < MONITOR_BASE + MONITOR_SIZE or any(
                w <= address < w + s for w, s in self._windows):
            self._set_stop(Stop("outside", 0, uc.reg_read(X.UC_X86_REG_EIP), address=address,
                                detail="write to the monitor's memory"))
        else:
            self._set_stop(Stop("write-protect", 0, uc.reg_read(X.UC_X86_REG_EIP), address=address))
        return False

    def _on_block(self, uc, address, size, _):
        self._set_stop(Stop("watch", 0, uc.reg_read(X.UC_X86_REG_EIP), address=address))

    def _on_read_watch(self, uc, access, address, size, value, _):
        self._hook_ctr = self._counter()
        self._set_stop(Stop("read-watch", 0, uc.reg_read(X.UC_X86_REG_EIP), address=address))

    def _on_logged_write(self, uc, access, address, size, value, _):
        log = self._write_log
        if log is not None:
            log.update(range(address, address + size))

    # --- running ---------------------------------------------------------------------------------
    def run(self, limit: int) -> Stop:
        """Run at most ``limit`` instructions from the current state; see ``Stop``."""
        if limit <= 0:
            raise ValueError("run at least one instruction")
        uc = self.uc
        self._stop = None
        self._known = None
        self.stats["runs"] += 1
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        error = None
        self._base = self.retired + self.clock_offset - 1    # ``when`` = _base + the counter
        self._pin, self._pout = self.ports.port_in, self.ports.port_out
        self._running = True
        try:
            uc.emu_start(eip, _FOREVER, count=limit)
        except UcError as e:
            error = e
        finally:
            self._running = False
        ctr = self._counter()
        stop = self._stop
        if error is not None and error.errno == UC_ERR_INSN_INVALID:
            stop = Stop("invalid", 0, uc.reg_read(X.UC_X86_REG_EIP), vector=6)
        elif error is not None and stop is None:
            if error.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
                               UC_ERR_FETCH_PROT, UC_ERR_READ_PROT):
                stop = Stop("outside", 0, uc.reg_read(X.UC_X86_REG_EIP), detail=str(error))
            else:
                raise VMError(f"Unicorn stopped the guest with {error}") from None
        if stop is None:
            if ctr == limit + 1:
                stop = Stop("limit", limit, uc.reg_read(X.UC_X86_REG_EIP))
            else:
                stop = self._halted(ctr)
        elif stop.kind in ("event", "invalid", "outside", "write-protect"):
            stop.retired = ctr - 1
            if stop.kind == "event":
                blob = self._blob()
                stop.software = struct.unpack_from("<i", blob, self._layout.is_int)[0] == 1
                stop.code = struct.unpack_from("<i", blob, self._layout.error_code)[0] & MASK32
                self.stats["faults"] += 1
                self._clear_exception()
        elif stop.kind == "io":
            stop.retired = ctr - 1
            stop.eip = uc.reg_read(X.UC_X86_REG_EIP)
        elif stop.kind == "io-trap":
            stop.retired = self._hook_ctr - 1
            for r, v in self._trap_regs.items():
                uc.reg_write(r, v)
        elif stop.kind == "read-watch":
            stop.retired = self._hook_ctr - 1
        elif stop.kind == "watch":
            stop.retired = ctr
        self.retired += stop.retired
        return stop

    def retire(self, n: int = 1) -> None:
        """Count ``n`` instructions the monitor carried out for the guest (emulated ones)."""
        self.retired += n

    def _halted(self, ctr: int) -> Stop:
        """``emu_start`` ended early with no stop of ours: only HLT at CPL 0 does that."""
        eip = self.uc.reg_read(X.UC_X86_REG_EIP)
        caches = self._caches()
        pc = (caches["cs_base"] + eip - 1) & MASK32
        if caches["cpl"] != 0 or not 0 <= pc < self.ram_size or self.uc.mem_read(pc, 1) != b"\xf4":
            raise VMError(f"Unicorn stopped at {eip:#x} after {ctr} instructions for no reason it "
                          "reports (not HLT at CPL 0)")
        return Stop("halt", ctr, eip)

    def shadow(self) -> bool:
        """Whether maskable interrupts are inhibited for one instruction (after STI, MOV SS or
        POP SS): QEMU's HF_INHIBIT_IRQ flag, bit 3 of ``hflags``, which precedes the segments."""
        return bool(struct.unpack_from("<I", self._blob(), self._layout.segs - 8)[0] >> 3 & 1)

    def _clear_exception(self) -> None:
        """QEMU's double-fault memory (``old_exception``) back to "none", as a delivered event
        leaves it; the monitor delivers the event itself."""
        uc = self.uc
        ctx = uc.context_save()
        ptr = ctypes.cast(ctx.context, ctypes.c_void_p).value
        ctypes.c_int32.from_address(ptr + self._layout.old_exception).value = -1
        uc.context_restore(ctx)

    # --- state -----------------------------------------------------------------------------------
    def _blob(self) -> bytes:
        self.uc.context_update(self._probe)
        ptr = ctypes.cast(self._probe.context, ctypes.c_void_p).value
        return ctypes.string_at(ptr, self._blob_size)

    def _caches(self, blob: bytes | None = None) -> dict:
        blob = self._blob() if blob is None else blob
        off = self._layout.segs
        v = _SEGS6.unpack_from(blob, off)
        out = {"cpl": struct.unpack_from("<I", blob, off - 8)[0] & 3}
        for i, names in enumerate(_SEG_NAMES):
            sel, base, limit, flags = v[4 * i:4 * i + 4]
            out[names[0]] = sel & 0xFFFF
            out[names[1]] = base & MASK32
            out[names[2]] = limit & MASK32
            out[names[3]] = (flags >> 8) & 0xF0FF
        return out

    def state(self) -> dict:
        """Every scalar field in the model's concrete format, and ``mem`` (a ``Memory``)."""
        if self._known is not None:
            return {**self._known, "mem": Memory(self), "io": {}}
        L = self._layout
        blob = self._blob()
        out = self._caches(blob)
        regs = struct.unpack_from("<8Q", blob, L.regs)
        for name, v in zip(st.GPRS, regs):
            out[name] = v & MASK32
        out["eip"] = struct.unpack_from("<Q", blob, L.eip)[0] & MASK32
        eflags = self.uc.reg_read(X.UC_X86_REG_EFLAGS)
        out["flags"] = eflags & st.USER_FLAGS_MASK
        out["sysflags"] = eflags & st.SYS_FLAGS_MASK
        cr = struct.unpack_from("<5Q", blob, L.cr)
        out.update(cr0=cr[0] & MASK32, cr2=cr[2] & MASK32, cr3=cr[3] & MASK32, cr4=cr[4] & MASK32)
        dr = struct.unpack_from("<8Q", blob, L.dr)
        for i in (0, 1, 2, 3, 6, 7):
            out[f"dr{i}"] = dr[i] & MASK32
        ldt = _SEG.unpack_from(blob, L.segs + 6 * _SEG.size)
        tr = _SEG.unpack_from(blob, L.segs + 7 * _SEG.size)
        gdt = _SEG.unpack_from(blob, L.segs + 8 * _SEG.size)
        idt = _SEG.unpack_from(blob, L.segs + 9 * _SEG.size)
        out.update(ldtr=ldt[0] & 0xFFFF, ldtr_base=ldt[1] & MASK32, ldtr_limit=ldt[2] & MASK32,
                   tr=tr[0] & 0xFFFF, tr_base=tr[1] & MASK32, tr_limit=tr[2] & MASK32,
                   tr_attr=M._tr_from_qemu((tr[3] >> 8) & 0xF0FF),
                   gdtr_base=gdt[1] & MASK32, gdtr_limit=gdt[2] & 0xFFFF,
                   idtr_base=idt[1] & MASK32, idtr_limit=idt[2] & 0xFFFF)
        scs = struct.unpack_from("<I", blob, L.sysenter)[0]
        sesp, seip = struct.unpack_from("<QQ", blob, L.sysenter + 8)
        out.update(sysenter_cs=scs & 0xFFFF, sysenter_esp=sesp & MASK32, sysenter_eip=seip & MASK32,
                   tsc_aux=struct.unpack_from("<Q", blob, L.tsc_aux)[0] & MASK32)
        out.update(M.read_user(self.uc, self.extra))
        out.update(self.extra)
        self._known = {n: out[n] for n in st.SCALARS}
        self._config_key = M._seg_key(out)
        self._cs_base = out["cs_base"]
        return {**self._known, "mem": Memory(self), "io": {}}

    def load(self, values: Mapping) -> None:
        """Make the CPU hold the scalar fields of ``values`` (memory is not touched).

        A new CPL or segment configuration goes through the set-up stub (its context is kept
        per configuration); otherwise only the fields that differ are written.
        """
        s = {n: values[n] for n in st.SCALARS}
        key = M._seg_key(s)
        uc = self.uc
        if self._config_key is not None and self._known is None:
            self.state()                # the guest may have loaded segments since
        known = self._known
        if key != self._config_key or known is None:
            # A state not derived from the one on the CPU: check it can exist (one line if not).
            s = M.check({n: values[n] for n in st.SCALARS if n != "halted"})
            s["halted"] = 0
        if key != self._config_key:
            uc.context_restore(self._config(s))
            self._config_key = key
            known = None
        writes = []
        for name, r in M._SCALAR_REGS:
            if known is None or known[name] != s[name]:
                writes.append((r, s[name]))
        if known is None or known["flags"] != s["flags"] or known["sysflags"] != s["sysflags"]:
            writes.append((X.UC_X86_REG_EFLAGS, (s["flags"] & st.USER_FLAGS_MASK)
                           | (s["sysflags"] & st.SYS_FLAGS_MASK) | st.EFLAGS_FIXED))
        for r, w in ((X.UC_X86_REG_GDTR, "gdtr"), (X.UC_X86_REG_IDTR, "idtr")):
            if known is None or known[f"{w}_base"] != s[f"{w}_base"] or known[f"{w}_limit"] != s[f"{w}_limit"]:
                writes.append((r, (0, s[f"{w}_base"], s[f"{w}_limit"], 0)))
        if known is None or any(known[n] != s[n] for n in ("ldtr", "ldtr_base", "ldtr_limit")):
            writes.append((X.UC_X86_REG_LDTR, (s["ldtr"], s["ldtr_base"], s["ldtr_limit"],
                                               0 if s["ldtr"] & 0xFFFC == 0 else layout.LDT_ATTR << 8)))
        if known is None or any(known[n] != s[n] for n in ("tr", "tr_base", "tr_limit", "tr_attr")):
            writes.append((X.UC_X86_REG_TR, (s["tr"], s["tr_base"], s["tr_limit"],
                                             M._tr_to_qemu(s["tr_attr"]) << 8)))
        for reg, value in writes:
            uc.reg_write(reg, value)
        for name, msr in M.MSRS.items():
            if known is None or known[name] != s[name]:
                uc.msr_write(msr, s[name])
        if known is None or any(known[n] != s[n] for n in _USER):
            M.load_user(uc, s)
        for n in M.NOT_HELD:
            self.extra[n] = values[n]
        for z in st.ZMMS:                   # the bits Unicorn does not hold (machine.ZMM_HELD_BITS)
            self.extra[z] = values[z]
        self.extra["halted"] = values["halted"]
        self._known = {n: s[n] for n in st.SCALARS}
        self._known["halted"] = values["halted"]
        self._cs_base = s["cs_base"]

    def _config(self, s: Mapping[str, int]):
        """The context holding ``s``'s CPL and segment caches, reached by ``machine``'s stub."""
        key = M._seg_key(s)
        ctx = self._configs.get(key)
        if ctx is not None:
            self._configs.move_to_end(key)
            return ctx
        if M._late_nulls(s):
            raise M.UnsupportedState("a null ES/DS with RPL > 0 above CPL 0 is loaded after the "
                                     "stub's IRETD at the guest's own CS:EIP; the VM will not "
                                     "write there")
        uc = self.uc
        landing = (s["cs_base"] + s["eip"]) & MASK32
        base = next(w for w in M._WINDOWS
                    if not any(w <= (landing + k) & MASK32 < w + M._W_SIZE for k in (0, 4)))
        code, mem, labels = M._build_stub(s, base)
        img = M._Image(mem)
        size = (M._W_SIZE + PAGE - 1) & ~(PAGE - 1)
        uc.mem_protect(base, size, UC_PROT_ALL)
        stopped: list[int] = []
        hook = None
        try:
            uc.mem_write(base, bytes(size))
            for page, data in img.pages.items():
                if not base >> 12 <= page < (base + size) >> 12:
                    raise VMError("the set-up stub wrote outside its window")
                uc.mem_write(page << 12, data)
            uc.ctl_remove_cache(base, base + size)
            pc = s["cs_base"] + s["eip"]
            uc.ctl_remove_cache(landing, min(landing + 1, 1 << 32))

            def at_landing(u, address, sz, _):
                stopped.append(address)
                u.emu_stop()
            hook = uc.hook_add(UC_HOOK_CODE, at_landing, None, landing, landing)
            uc.context_restore(self._reset)
            self._stop = None
            self.stats["stubs"] += 1
            try:
                uc.emu_start(base + M._W_CODE, pc, count=_IRETD_STUB_LIMIT)
            except UcError as e:
                raise M.ImpossibleState(f"setting up the segments failed in Unicorn ({e})") from None
            if self._stop is not None and self._stop.kind == "event":
                raise M.ImpossibleState(f"the segment set-up stub raised vector {self._stop.vector}: "
                                        "no load sequence reaches these selector/cache pairs")
        finally:
            if hook is not None:
                uc.hook_del(hook)
            uc.ctl_remove_cache(landing, min(landing + 1, 1 << 32))
            uc.mem_protect(base, size, UC_PROT_READ)
            self._stop = None
        if uc.reg_read(X.UC_X86_REG_EIP) != s["eip"]:
            raise M.UnsupportedState("the set-up stub did not reach the guest's CS:EIP")
        ctx = uc.context_save()
        got = self._caches()
        for name in ("cpl",) + tuple(f"{r}{suffix}" for r in st.SREGS
                                     for suffix in ("", "_base", "_limit", "_attr")):
            if got[name] != s[name]:
                raise M.UnsupportedState(f"after the segment set-up {name} is {got[name]:#x}, not "
                                         f"{s[name]:#x} (Unicorn cannot reach that cache)")
        self._configs[key] = ctx
        if len(self._configs) > self._cached_configs:
            self._configs.popitem(last=False)
        return ctx

    # --- memory ----------------------------------------------------------------------------------
    def _check_ram(self, address: int, n: int) -> None:
        if not (0 <= address and address + n <= self.ram_size):
            raise GuestMemoryError(address, n)

    def read(self, address: int, n: int) -> bytes:
        self._check_ram(address, n)
        return bytes(self.uc.mem_read(address, n))

    def write(self, address: int, data: bytes) -> None:
        self._check_ram(address, len(data))
        self.uc.mem_write(address, bytes(data))

    def write_monitor(self, address: int, data: bytes) -> None:
        """Write the monitor's own (guest-read-only) pages."""
        if not (MONITOR_BASE <= address and address + len(data) <= MONITOR_BASE + MONITOR_SIZE):
            raise ValueError(f"{address:#x} is not in the monitor's pages")
        self.uc.mem_write(address, bytes(data))

    def forget_code(self, start: int, end: int) -> None:
        """Drop translations of [start, end): their bytes or their hooks changed."""
        if end > start:
            self.uc.ctl_remove_cache(start, end)

    def protect(self, page: int, writable: bool) -> None:
        """Make guest page ``page`` (a page number) writable or read/execute only."""
        self._check_ram(page << 12, PAGE)
        self.uc.mem_protect(page << 12, PAGE, UC_PROT_ALL if writable else UC_PROT_READ | UC_PROT_EXEC)

    def watch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Stop ("watch") before a translated block starting in any [start, end) runs."""
        uc = self.uc
        for h in self._watch_hooks:
            uc.hook_del(h)
        self._watch_hooks = [uc.hook_add(UC_HOOK_BLOCK, self._on_block, None, a, b - 1)
                             for a, b in ranges if b > a]

    def watch_reads(self, addresses: Iterable[int]) -> None:
        """Stop ("read-watch") before the guest reads any byte at ``addresses``."""
        uc = self.uc
        want = set(addresses)
        for a in list(self._read_hooks):
            if a not in want:
                uc.hook_del(self._read_hooks.pop(a))
        for a in want - set(self._read_hooks):
            self._read_hooks[a] = uc.hook_add(UC_HOOK_MEM_READ, self._on_read_watch, None, a, a)

    def log_writes(self, on: bool) -> set | None:
        """Record every guest-RAM address the guest writes (for lock-step comparison)."""
        uc = self.uc
        if on and self._write_hook is None:
            self._write_log = set()
            self._write_hook = uc.hook_add(UC_HOOK_MEM_WRITE, self._on_logged_write, None, 0,
                                           self.ram_size - 1)
        elif not on and self._write_hook is not None:
            uc.hook_del(self._write_hook)
            self._write_hook = None
            self._write_log = None
        return self._write_log

    def take_writes(self) -> set:
        log = self._write_log or set()
        self._write_log = set() if self._write_hook is not None else None
        return log


class GuestMemoryError(ValueError):
    """The guest (or the monitor on its behalf) touched memory outside guest RAM."""

    def __init__(self, address: int, n: int):
        super().__init__(f"{n}-byte access at {address:#x} lies outside guest RAM")
        self.address = address


__all__ = ["VM", "Stop", "Memory", "Ports", "VMError", "LayoutError", "GuestMemoryError",
           "MONITOR_BASE", "MONITOR_SIZE", "MAX_RAM"]
