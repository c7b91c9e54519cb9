"""VT-x non-root operation, simulated on Unicorn: the guest on its own duplicated state at CPL 0.

The guest runs as under ``native`` - its own GDT, IDT, TSS, EFLAGS and CPL 0, the VMCS guest-state
area being the duplicate (SDM Vol. 3C 24.4) - and the monitor intercepts exactly the instructions
whose definitions say "VM exit under these controls" (``Compiled.may_exit``: the form, run under
the ``vmx.Controls``, builds an exit condition).  They are found as ``scan`` finds the sensitive
ones (``scan.Scanner``: recursive descent, watched gaps, write-protected code pages, reads of
patched bytes answered with the originals), with INT3 (CC) as the trap byte: at CPL 0 HLT does
not fault, and Unicorn reports vector 3 without consulting the guest's IDT.

At a site the form is evaluated on the guest's state with ``vm=controls`` (``monitor.emulate``):

* an ``Exit`` is the VM exit: its reason and qualification go into the run's trace (an
  ``exit`` entry) and its count; the monitor then emulates the instruction as a VT-x monitor
  does, by its own form on the guest's own machine (no controls), its port I/O served by the
  monitor's devices (``devices.Bus``), a fault of it injected through the guest's IDT;
* no exit means the condition does not hold for this state (a port or MSR not in its bitmap):
  the instruction does in non-root operation what its form says there, and its port I/O reaches
  the physical devices (``host``: a second ``Bus`` the guest's virtual machine never sees), as
  does every IN/OUT run without an exit condition at all.

Every exception about to reach the guest consults the exception bitmap (SDM Vol. 3C 25.2) through
``Controls.exception_exit``, the function ``Exec.require`` turns faults into exits with: a fault
of a form (BOUND's #BR, UD2's #UD, a #GP), INT1's #DB, each fault raised while delivering an
event, and the software exceptions of INT3 and INTO (``events.SOFTWARE_EXCEPTIONS``, the vector
their definitions raise: ``events.raised_vector``) before their delivery - not INT n, a software
interrupt.  A set bit is an ``exception`` exit, recorded with its vector and interruption
information (24.9.2); the monitor then injects the event (26.6), which is delivered through the
guest's IDT as the definitions deliver it (the software exceptions by their own forms: DPL check,
return address past the instruction).  A maskable interrupt from the devices is an
``external_interrupt`` exit under external-interrupt exiting, injected the same way.  A triple
fault is a ``triple_fault`` exit, after which the monitor ends the run as native shuts down.

The read shadows are loaded with the guest's own values of the bits the CR0/CR4 guest/host masks
own (what a monitor does before VM entry, 24.6.6) and kept so across CR0/CR4 exits; the bits VMX
fixes to 1 in the real CR0/CR4 (NE, VMXE; PE and PG without unrestricted guest: 23.8, 26.3.1.1)
must be masked, since the guest would read them otherwise - a configuration that leaves one
visible, or needs paging forced on (no unrestricted guest), is refused in one line, as are the
controls this simulation does not reproduce (exits on windows, the monitor trap flag, the
preemption timer).  This is a simulation checked against the proofs, not hardware.
"""

from __future__ import annotations

from dataclasses import replace

from pgvirt.emulator.vm import Stop
from pgvirt.model import events, isa, monitor as mon, state as st, vmx
from pgvirt.model.outcome import Exit, vector_name

from . import decode
from .core import DEFAULT_RAM, MonitorLimit
from .native import Native
from .scan import Scanner

INT3 = 0xCC
# Controls whose exits come from no instruction and that this simulation does not produce.
UNSIMULATED = ("interrupt_window_exiting", "nmi_window_exiting", "monitor_trap_flag",
               "vmx_preemption_timer", "pause_loop_exiting")


class ControlsUnsupported(MonitorLimit):
    """A configuration this simulation cannot run faithfully (one line)."""


class _Devices:
    """A port space for the model: ``get`` peeks at ``bus`` (no side effects)."""

    __slots__ = ("bus", "t")

    def __init__(self, bus, t: int):
        self.bus, self.t = bus, t

    def get(self, port: int, default: int = 0) -> int:
        return self.bus.peek(port, self.t)


def _exit_checks(form, code: bytes | None, s, features, controls) -> bool:
    return any(c.exit is not None and c.exit.exit_reason != "exception"
               for c in form.run(s, code, frozenset(features), vm=controls).checks)


def exit_predicate(controls: vmx.Controls, features=frozenset()):
    """bytes of one instruction -> its form's name when its definition builds a VM-exit
    condition under ``controls`` (an exit of the exception bitmap is a fault's, and comes with
    it).  Derived from the forms: first whether the form has one in any instance, then whether
    this instance keeps it (an immediate port outside the I/O bitmap has none)."""
    s = st.fresh("vtx")
    forms: dict[str, bool] = {}
    cache: dict[bytes, str | None] = {}

    def exits(code: bytes) -> str | None:
        hit = cache.get(code, False)
        if hit is not False:
            return hit
        m = decode.instruction(code)
        name = None
        if m is not None:
            form, instance = m
            if form.name not in forms:
                forms[form.name] = _exit_checks(form, None, s, features, controls)
            if forms[form.name] and _exit_checks(form, instance, s, features, controls):
                name = form.name
        cache[code] = name
        return name

    return exits


class Vtx(Scanner, Native):
    name = "vtx"
    TRAP_BYTE = INT3

    def __init__(self, image, controls: vmx.Controls = vmx.DEFAULT, *,
                 features=frozenset(), **kw):
        from .devices import Bus

        on = [n for n in UNSIMULATED if controls.on(n)]
        if on:
            raise ControlsUnsupported(f"this simulation does not produce the exits of "
                                      f"{', '.join(on)} (no instruction causes them)")
        if not controls.on("unrestricted_guest"):
            raise ControlsUnsupported("without 'unrestricted guest' an unpaged guest needs paging "
                                      "forced on behind the CR0 shadow (SDM Vol. 3C 26.3.1.1), with "
                                      "a page table this simulation does not build")
        cr0, cr4 = image.state["cr0"], image.state["cr4"]
        self.cr0_fixed = vmx.CR0_FIXED0 & ~(vmx.CR0_PE | vmx.CR0_PG)
        self.cr4_fixed = vmx.CR4_FIXED0
        for reg, fixed, mask, have in (("CR0", self.cr0_fixed, controls.cr0_mask, cr0),
                                       ("CR4", self.cr4_fixed, controls.cr4_mask, cr4)):
            shown = fixed & ~mask & ~have
            if shown:
                raise ControlsUnsupported(
                    f"VMX fixes {reg} bit(s) {', '.join(str(b) for b in range(32) if shown >> b & 1)} "
                    f"to 1 (SDM Vol. 3C A.7, A.8) and the {reg} guest/host mask does not own them: "
                    f"the guest, which starts with {reg} = {have:#x}, would read them set")
        # The read shadows show the guest its own values of the masked bits (24.6.6).
        self.controls = replace(controls,
                                cr0_shadow=(controls.cr0_shadow & ~controls.cr0_mask) | (cr0 & controls.cr0_mask),
                                cr4_shadow=(controls.cr4_shadow & ~controls.cr4_mask) | (cr4 & controls.cr4_mask))
        self.exits: dict[str, int] = {}
        self.exit_vectors: dict[str, int] = {}     # exception exits by vector ("#BP": 1)
        self.host = Bus(kw.get("ram_size", DEFAULT_RAM), (), record=False)   # the physical devices
        super().__init__(image, exit_predicate(self.controls, features), features=features, **kw)

    # --- the guest's machine ------------------------------------------------------------------
    def setup(self) -> None:
        Native.setup(self)
        self._rewatch()

    def _real_state(self) -> dict:
        s = self.vm.state()
        s["mem"] = self.read_guest_mem(self.overlay())
        return s

    def guest_state(self) -> dict:
        return self._real_state()

    def _nonroot(self, s: dict) -> dict:
        """The real state under VMX: the guest's, with the bits VMX fixes in CR0/CR4 (all owned
        by the masks, checked at start) set, and the physical devices on the ports."""
        return {**s, "cr0": s["cr0"] | self.cr0_fixed, "cr4": s["cr4"] | self.cr4_fixed,
                "io": _Devices(self.host, self.clock)}

    def _visible(self, post: dict) -> dict:
        """Back from the real state to the guest's: the masked bits as the shadows show them."""
        c = self.controls
        post = dict(post)
        post["cr0"] = (post["cr0"] & ~c.cr0_mask) | (c.cr0_shadow & c.cr0_mask)
        post["cr4"] = (post["cr4"] & ~c.cr4_mask) | (c.cr4_shadow & c.cr4_mask)
        return post

    def shadowed(self) -> bool:
        return self.shadow or self.vm.shadow()

    def must_step(self) -> bool:
        return self.shadow or super().must_step()

    # --- the physical ports: an IN/OUT that runs in Unicorn did not exit ------------------------
    def port_in(self, port: int, when: int) -> int:
        return self.host.port_in(port, when)

    def port_out(self, port: int, value: int, when: int) -> bool:
        self.host.port_out(port, value, when)
        return False

    # --- exits ----------------------------------------------------------------------------------
    def _exit(self, ex: Exit, form: str | None, view: dict | None = None) -> None:
        self.exits[ex.exit_reason] = self.exits.get(ex.exit_reason, 0) + 1
        self.counts["exits"] = self.counts.get("exits", 0) + 1
        q = "" if ex.qualification is None else f" qualification {ex.qualification:#x}"
        self.entry("exit", f"{ex.exit_reason} (basic exit reason {ex.code}){q}: {ex.reason}",
                   form, view)

    def _exception_exit(self, vector: int, kind: int, why: str, form: str | None = None,
                        view: dict | None = None) -> bool:
        """Whether exception ``vector`` (interruption type ``kind``) exits under the exception
        bitmap; the exit is recorded with its vector and VM-exit interruption information
        (valid, type, vector: SDM Vol. 3C 24.9.2; error codes are the injected event's)."""
        ex, when = self.controls.exception_exit(vector, why)
        if ex is None or when is not True:     # no error code given: no #PF filter condition
            return False
        name = vector_name(vector)
        self.exit_vectors[name] = self.exit_vectors.get(name, 0) + 1
        info = 1 << 31 | kind << 8 | vector
        self._exit(replace(ex, qualification=vector,
                           reason=f"{ex.reason} (interruption information {info:#010x})"), form, view)
        return True

    def exception_taken(self, vector: int, kind: int, why: str, view: dict | None) -> None:
        self._exception_exit(vector, kind, why, None, view)

    def _software_exception(self, form, code: bytes, s: dict) -> bool:
        """INT3 / INTO (``events.SOFTWARE_EXCEPTIONS``) on ``s``: whether the exception it raises
        exits under the exception bitmap, before any delivery (INTO with OF = 0 raises none)."""
        kind = events.SOFTWARE_EXCEPTIONS.get(form.name)
        if kind is None:
            return False
        vector = events.raised_vector(form, code, s, self.features)
        return vector is not None and self._exception_exit(
            vector, kind, f"{form.name} raises {vector_name(vector)}", form.name, s)

    def shutdown_taken(self, why: str) -> None:
        """In non-root operation a triple fault is a VM exit, always (SDM Vol. 3C 25.2); the
        monitor then ends the VM, as the processor would have shut down."""
        self._exit(Exit("vmx", "triple_fault", vmx.EXIT_REASONS["triple_fault"], None,
                        f"a triple fault ({why})"), None)

    def interrupt_taken(self, vector: int) -> None:
        if self.controls.on("external_interrupt_exiting"):
            self._exit(Exit("vmx", "external_interrupt", vmx.EXIT_REASONS["external_interrupt"],
                            vector, "an external interrupt with 'external-interrupt exiting' set "
                            "(SDM Vol. 3C 25.2); the monitor injects it"), None)

    def handle(self, stop: Stop) -> None:
        if self.scan_stop(stop):
            return
        super().handle(stop)

    def _event(self, stop: Stop) -> None:
        if stop.software and stop.vector == 3:
            s = self.vm.state()
            site = (s["eip"] - 1) & 0xFFFFFFFF
            if site in self.patches:
                s["eip"] = site
                s["mem"] = self.read_guest_mem(self.overlay())
                self._site(site, s)
                return
        # A fault (its exception bitmap consulted where it is injected), or a software interrupt
        # at an address the scan has not patched (a jump into the middle of an instruction).
        super()._event(stop)

    def _execute(self, form, code: bytes, vector: int) -> None:
        s = self.vm.state()
        s["mem"] = self.read_guest_mem(self.overlay())
        self._software_exception(form, code, s)
        super()._execute(form, code, vector)

    def _site(self, site: int, s: dict) -> None:
        """The instruction at ``site`` (``s``: the guest's state there, Unicorn's EIP past the
        INT3) in non-root operation: a VM exit and the monitor's emulation, or its own run."""
        name, code = self.patches[site]
        form = isa.get(name)
        if self._software_exception(form, code, s):
            step = None
        else:
            step = mon.emulate(form, code, self._nonroot(s), None, self.features, vm=self.controls)
        devices = self.host
        if step is None or step.exit is not None:
            if step is not None and step.exit.exit_reason != "exception":
                self._exit(step.exit, form.name, s)
            # (an exception exit is recorded where its fault is injected: ``exception_taken``)
            # The monitor's emulation: the form on the guest's own machine, its devices on the ports.
            own = {**s, "io": _Devices(self.bus, self.clock)}
            step = mon.emulate(form, code, own, None, self.features)
            devices = self.bus
        elif step.fault is None and step.assumed:
            step = replace(step, real=self._visible(step.real))
        if step.fault is not None:
            self.vm.load({n: s[n] for n in st.SCALARS})      # the fault is at the site
            self.inject(step.fault.vector, step.fault.code, f"{form.name}: {step.fault.reason}")
            return
        if not step.assumed:
            self.vm.load({n: s[n] for n in st.SCALARS})
            self.finish("model", f"{form.name} at {site:#x} lies outside the model's stated "
                        "assumptions", True)
        t = self.clock
        for port in step.io_in:
            peeked = devices.peek(port, t)
            got = devices.port_in(port, t)
            if got != peeked:
                self.finish("model", f"port {port:#x} read {got:#x} after a peek of {peeked:#x}", True)
        for port, value in step.io_out.items():
            devices.port_out(port, value, t)
        self.write_guest(step.mem)
        real = {n: step.real[n] for n in st.SCALARS}
        if devices is self.bus:
            # After a CR0/CR4 exit the shadows show what the guest wrote (24.6.6).
            c = self.controls
            cr0 = (c.cr0_shadow & ~c.cr0_mask) | (real["cr0"] & c.cr0_mask)
            cr4 = (c.cr4_shadow & ~c.cr4_mask) | (real["cr4"] & c.cr4_mask)
            if (cr0, cr4) != (c.cr0_shadow, c.cr4_shadow):
                self.controls = replace(c, cr0_shadow=cr0, cr4_shadow=cr4)
        self.vm.load(real)
        self.vm.retire(1)
        if events.shadows(form.name):
            self.shadow = True

    def result(self, steps: int):
        res = super().result(steps)
        res.counts["exit_reasons"] = dict(sorted(self.exits.items()))
        res.counts["exit_vectors"] = dict(sorted(self.exit_vectors.items()))
        return res


__all__ = ["Vtx", "ControlsUnsupported", "exit_predicate", "UNSIMULATED"]
