"""Classic trap-and-emulate: the guest deprivileged exactly as the profile says.

The real machine R runs the guest at CPL 3 with the profile's host settings (IOPL, CR4.TSD,
...), the real interrupt flag on, and the monitor's tables: a shadow GDT (the guest's GDT with
every code, data and call-gate DPL raised to 3, the "ring compression" a monitor needs so that
ring-0 guest code can use its own segments at ring 3), an IDT of DPL-0 gates into the monitor,
and a TSS without an I/O permission bitmap.  These live in the monitor's pages, which the guest
can read (as SGDT tells it where) but never write.  The virtual CPU C is a ``State`` record of
every SYSTEM field the guest believes it has (``pgvirt.model.monitor``).

Every trap goes to ``Trap._trap``: the instruction at EIP is named by its form, the model
confirms that the real CPU faults on it at CPL 3 (the VM reports what Unicorn saw; port I/O is
undone there because Unicorn ignores the I/O permission check), and the instruction is then
emulated by its form on the guest's view of (R, C) (``monitor.emulate``): a fault of the
original is injected through the guest's virtual IDT, anything else is written back - guest
registers and memory into R, system state into C.  Maskable interrupts are delivered when C's
IF allows.  There is no instruction-specific code here: what an instruction does is its form's.

Instructions that are sensitive but not privileged never trap, so C never hears of them: POPFD
drops its IF change at CPL 3, PUSHFD shows the real IF, SGDT the shadow GDT, MOV from CS the
real RPL.  That is Theorem 1 failing, and the run diverges from ``native`` there.
"""

from __future__ import annotations

import struct

from pgvirt.emulator import states as layout
from pgvirt.emulator.vm import MONITOR_BASE, Stop
from pgvirt.model import events, isa, monitor as mon, profiles, state as st
from pgvirt.model.outcome import GP, Fault, vector_name

from . import decode
from .core import Monitor, MonitorLimit

SHADOW_GDT = MONITOR_BASE                  # up to 8192 guest entries + the monitor's three
MONITOR_IDT = MONITOR_BASE + 0x20000
MONITOR_TSS = MONITOR_BASE + 0x21000
MONITOR_CODE = MONITOR_BASE + 0x22000      # where the monitor's gates point (never run here)
TSS_LIMIT = 0x67                           # I/O map base 0xFFFF lies beyond it: no bitmap


_COUNTER = {"trap": "traps", "hypercall": "hypercalls", "patched": "patched"}
_SEGMENT_FIELDS = tuple(f"{r}{k}" for r in st.SREGS for k in ("", "_base", "_limit"))


class ShadowError(MonitorLimit):
    """A guest this monitor's shadow tables cannot hold (one line)."""


def parse_descriptor(raw: bytes) -> tuple[int, int, int]:
    """(base, byte-granular limit, attr) of a segment descriptor (SDM Vol. 3A 3.4.5)."""
    lo, hi = struct.unpack("<II", raw)
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    attr = (hi >> 8) & 0xF0FF
    if attr & 0x8000:
        limit = (limit << 12) | 0xFFF
    return base, limit, attr


class IOView:
    """The guest's port space for the model: ``get`` peeks at the devices (no side effects)."""

    __slots__ = ("bus", "t")

    def __init__(self, bus, t: int):
        self.bus, self.t = bus, t

    def get(self, port: int, default: int = 0) -> int:
        return self.bus.peek(port, self.t)


class Trap(Monitor):
    name = "trap"
    io_traps = True

    def __init__(self, image, *, profile: profiles.Profile | str = "pentium", **kw):
        self.profile = profiles.get(profile) if isinstance(profile, str) else profile
        if "umip" in self.profile.features:
            raise ValueError("Unicorn does not implement CR4.UMIP (emulator/deviations): the "
                             f"{self.profile.name} profile cannot be run faithfully; use pentium")
        self._gdt_copy: bytes | None = None
        self._n_guest = 0
        super().__init__(image, features=self.profile.features, **kw)

    # --- the monitor's tables ---------------------------------------------------------------------
    def _shadow(self) -> None:
        """Rebuild the shadow GDT when the guest's GDT bytes changed."""
        c = self.vcpu
        n = (c["gdtr_limit"] + 1) // 8
        if n + 3 > 8192:
            raise ShadowError("the guest's GDT leaves no room for the monitor's three descriptors")
        try:
            raw = self.vm.read(c["gdtr_base"], n * 8) if n else b""
        except Exception:
            raise ShadowError(f"the guest's GDT at {c['gdtr_base']:#x} lies outside its RAM") from None
        if raw == self._gdt_copy:
            return
        out = bytearray(raw)
        for i in range(n):
            lo, hi = struct.unpack_from("<II", out, 8 * i)
            s_bit, typ = hi >> 12 & 1, hi >> 8 & 0xF
            if s_bit or (not s_bit and typ in (0x4, 0xC)):   # code/data and call gates
                hi |= 3 << 13
                if s_bit:
                    hi |= 1 << 8                              # accessed, as a load would set it
                struct.pack_into("<II", out, 8 * i, lo, hi)
        out += layout.descriptor(MONITOR_CODE, 0xFFF, layout.code_attr(0) & ~0x8000)
        out += layout.descriptor(MONITOR_BASE, 0xFFFFF, layout.data_attr(0) & ~0x8000)
        out += layout.descriptor(MONITOR_TSS, TSS_LIMIT, layout.TSS_BUSY_ATTR)
        self.vm.write_monitor(SHADOW_GDT, bytes(out))
        self._gdt_copy = raw
        self._n_guest = n
        self.counts.setdefault("shadow_rebuilds", 0)
        self.counts["shadow_rebuilds"] += 1

    def _monitor_tables(self) -> None:
        code_sel = (self._n_guest) << 3
        idt = b"".join(layout.gate(code_sel, MONITOR_CODE + 16 * v) for v in range(256))
        self.vm.write_monitor(MONITOR_IDT, idt)
        tss = bytearray(TSS_LIMIT + 1)
        struct.pack_into("<IH", tss, 4, MONITOR_BASE + 0xFF00, code_sel + 8)   # ESP0, SS0
        struct.pack_into("<H", tss, 0x66, 0xFFFF)                             # no I/O bitmap
        self.vm.write_monitor(MONITOR_TSS, bytes(tss))
        self.vm.write_monitor(MONITOR_CODE, b"\xf4\xeb\xfd" * 0x600)

    def _cache(self, sel: int) -> tuple[int, int, int]:
        """The real hidden cache a load of ``sel`` gives at CPL 3 (from the shadow GDT)."""
        if sel & 0xFFFC == 0:
            return 0, 0, 0
        if sel & 4:
            raise ShadowError(f"selector {sel:#x} names the LDT, which this monitor does not shadow")
        i = sel >> 3
        if i >= self._n_guest:
            raise ShadowError(f"selector {sel:#x} lies beyond the guest's GDT")
        raw = self.vm.uc.mem_read(SHADOW_GDT + 8 * i, 8)
        base, limit, attr = parse_descriptor(bytes(raw))
        return base, limit, attr | 1

    def _real(self, guest: dict, base: dict | None = None) -> dict:
        """R for the guest view ``guest``: its USER fields and address space on the monitor's
        machine (``base`` holds the monitor's SYSTEM fields; the initial ones when None)."""
        if base is None:
            p = self.profile
            base = {n: 0 for n in st.SCALARS}
            cr4 = 0
            for b in p.cr4_set:
                cr4 |= 1 << b
            # CR0 as a host kernel runs (PE, MP, ET, NE, WP; paging is outside the model):
            # relocation to the guest, which SMSW shows.
            cr0 = sum(1 << b for b in (st.CR0_PE, st.CR0_MP, st.CR0_ET, st.CR0_NE, st.CR0_WP))
            base.update(cpl=3, cr0=cr0, cr4=cr4,
                        sysflags=(1 << st.IF) | (p.iopl << st.IOPL_LO),
                        gdtr_base=SHADOW_GDT, gdtr_limit=(self._n_guest + 3) * 8 - 1,
                        idtr_base=MONITOR_IDT, idtr_limit=256 * 8 - 1,
                        tr=(self._n_guest + 2) << 3, tr_base=MONITOR_TSS, tr_limit=TSS_LIMIT,
                        tr_attr=layout.TSS_BUSY_ATTR)
        r = dict(base)
        for n in st.users():
            if n not in ("mem",):
                r[n] = guest[n]
        r["cs"] = (guest["cs"] & 0xFFFC) | 3
        r["ss"] = (guest["ss"] & 0xFFFC) | 3
        r["cpl"] = 3
        for g in st.SREGS:
            b, lim, attr = self._cache(r[g])
            if (b, lim) != (guest[f"{g}_base"], guest[f"{g}_limit"]) and r[g] & 0xFFFC:
                raise ShadowError(f"{g.upper()}={r[g]:#x}: the guest's cache (base "
                                  f"{guest[f'{g}_base']:#x}, limit {guest[f'{g}_limit']:#x}) is not "
                                  "what its GDT holds now, so the shadow cannot reproduce it")
            r.update({f"{g}_base": b, f"{g}_limit": lim, f"{g}_attr": attr})
        return r

    def setup(self) -> None:
        self.vcpu = {n: self.image.state[n] for n in st.SCALARS}
        self._shadow()
        self._monitor_tables()
        self.vm.load(self._real(self.vcpu))
        real = self._real_state()
        for name in ("in_al_dx", "out_dx_al"):       # the model on R: port I/O raises #GP(0)
            f = isa.get(name)
            got = mon.emulate(f, f.bytes, real, None, self.features).fault
            if got is None or (got.vector, got.code) != (GP, 0):
                raise ShadowError(f"the monitor's real machine lets {name} run at CPL 3 ({got}): "
                                  "port I/O would not trap")

    # --- the guest's view ---------------------------------------------------------------------
    def _vcpu(self) -> dict:
        return {**self.vcpu, "io": IOView(self.bus, self.clock)}

    def _real_state(self) -> dict:
        r = self.vm.state()
        r["mem"] = self.read_guest_mem(self.overlay())
        return r

    def guest_state(self) -> dict:
        return mon.view(self._real_state(), self._vcpu())

    def interrupts_enabled(self) -> bool:
        return events.interrupts_enabled(self.vcpu)

    def halted(self) -> bool:
        return bool(self.vcpu["halted"])

    def shadowed(self) -> bool:
        return self.shadow or self.vm.shadow()

    def must_step(self) -> bool:
        return self.shadow

    # --- write-back -----------------------------------------------------------------------------
    def _resume(self, real_after: dict, vcpu_after: dict, real_before: dict) -> None:
        """Put R' on the CPU (real caches from the shadow for any selector that changed) and
        keep C'."""
        self.vcpu = {n: vcpu_after[n] for n in st.SCALARS}
        self._shadow()
        if any(real_after[n] != real_before[n] for n in _SEGMENT_FIELDS):
            real_after = self._real(real_after, {n: real_after[n] for n in st.SCALARS})
        self.vm.load(real_after)

    def deliver(self, event, what: str) -> Fault | None:
        real = self._real_state()
        v = mon.view(real, self._vcpu())
        run = event(v)
        if run.fault is not None:
            return run.fault
        if not run.assumed:
            self.finish("model", f"{what} at {v['eip']:#x} lies outside the model's stated "
                        "assumptions (a task gate or 16-bit gate)", True)
        stores = {}
        for arr, a in run.stores:
            b = run.read("mem", a)
            if b != v["mem"].get(a, 0):
                stores[a] = b
        self.write_guest(stores)
        after = {n: run.post[n] for n in st.SCALARS}
        after["halted"] = 0
        before = {n: real[n] for n in st.SCALARS}
        r2, c2 = mon.write_back(before, self.vcpu, after)
        self._resume(r2, c2, before)
        return None

    # --- traps ----------------------------------------------------------------------------------
    def site(self, eip: int):
        """A patched site at ``eip``: (kind, form, original bytes), or None (paravirt, scan)."""
        return None

    def handle(self, stop: Stop) -> None:
        k = stop.kind
        if k in ("limit", "io"):
            return
        if k in ("io-trap", "event"):
            self._trap(stop)
            return
        if k == "invalid":
            self.invalid_instruction(self._real_state(), self._vcpu())
            return
        self.other_stop(stop)

    def other_stop(self, stop: Stop) -> None:
        g = self.guest_state()
        self.finish("outside memory" if stop.kind == "outside" else stop.kind,
                    stop.detail or stop.kind, True)

    def _trap(self, stop: Stop) -> None:
        real = self._real_state()
        eip = real["eip"]
        if stop.software:
            # Unicorn reports INT n past the instruction (it never reads the IDT); on the real
            # machine the monitor's DPL-0 gates make it a #GP at the INT, as the model says below.
            eip = self._before_int(real, stop.vector)
            real = dict(real)
            real["eip"] = eip
            self.vm.load(real)
            real = self._real_state()
        site = self.site(eip)
        if site is not None:
            kind, form, code = site
        else:
            kind = "trap"
            m = decode.instruction(self.code_at(eip, real))
            if m is None:
                self.finish("unmodelled", f"{vector_name(stop.vector)}: no form models the "
                            "trapped instruction, so the monitor cannot emulate it", True)
            form, code = m
            # Port I/O was undone by the VM because the profile's R makes it #GP(0) (checked by
            # the model in ``setup``); every other trap is confirmed by the model here.
            judged = None if stop.kind == "io-trap" else mon.emulate(form, code, real, None,
                                                                      self.features)
            if judged is not None and (judged.fault is None or (
                    not stop.software and judged.fault.vector != stop.vector)):
                said = "completes" if judged.fault is None else f"raises {judged.fault}"
                self.finish("model", f"the real CPU trapped ({vector_name(stop.vector)}) but "
                            f"the model's {form.name} {said} at CPL 3", True)
        self.counts[_COUNTER[kind]] += 1
        vcpu = self._vcpu()
        self.entry(kind, f"{form.name} at CPL 3", form.name, mon.view(real, vcpu))
        step = mon.emulate(form, code, real, vcpu, self.features)
        if not step.assumed:
            self.finish("model", f"{form.name} at {eip:#x} lies outside the model's stated "
                        "assumptions", True)
        if step.fault is not None:
            self.inject(step.fault.vector, step.fault.code, f"{form.name}: {step.fault.reason}")
            return
        t = self.clock
        for port in step.io_in:
            peeked = self.bus.peek(port, t)
            got = self.bus.port_in(port, t)
            if got != peeked:
                self.finish("model", f"port {port:#x} read {got:#x} after a peek of {peeked:#x}", True)
        for port, value in step.io_out.items():
            self.bus.port_out(port, value, t)
        self.write_guest(step.mem)
        self._resume(step.real, step.vcpu, real)
        self.vm.retire(1)
        if events.shadows(form.name):
            self.shadow = True

    def _before_int(self, real: dict, vector: int) -> int:
        eip = real["eip"]
        for n in (2, 1):
            at = (eip - n) & 0xFFFFFFFF
            try:
                m = decode.instruction(self.code_at(at, real))
            except Exception:
                continue
            if m and len(m[1]) == n and m[0].name in ("int_imm", "int3", "into"):
                return at
        self.finish("model", f"Unicorn reported INT {vector:#x} before {eip:#x}, where no INT "
                    "instruction is", True)


__all__ = ["Trap", "ShadowError", "parse_descriptor", "SHADOW_GDT", "MONITOR_IDT", "MONITOR_TSS"]
