"""The native run: the guest at CPL 0 on its own tables, the reference every monitor is held to.

Unicorn runs the guest directly.  Only what Unicorn does not do is done here, each by the model:
events go through the guest's IDT (``events``), and an instruction Unicorn reports as faulting
is judged by its form (``monitor.emulate`` on the real state) so that the guest receives the
exception and error code the architecture gives (Unicorn's API has none; its #UD for INT1 is the
form's #DB, delivered as the trap it is).  An INT n is carried out by its
form (Unicorn reports the vector without consulting the IDT).  While an interrupt waits for IF,
the guest runs one instruction at a time, because STI, POPFD or IRETD may set IF at any of them.
"""

from __future__ import annotations

from pgvirt.emulator.vm import Stop
from pgvirt.model import events, monitor as mon, state as st
from pgvirt.model.outcome import Fault, vector_name

from . import decode
from .core import Monitor


class Native(Monitor):
    name = "native"

    def setup(self) -> None:
        self.vm.load(self.image.state)

    def guest_state(self) -> dict:
        return self.vm.state()

    def interrupts_enabled(self) -> bool:
        return events.interrupts_enabled(self.vm.state())

    def halted(self) -> bool:
        return bool(self.vm.extra["halted"])

    def shadowed(self) -> bool:
        return self.vm.shadow()

    def must_step(self) -> bool:
        return self.bus.pic.pending() and not self.halted() and (
            not self.interrupts_enabled() or self.vm.shadow())

    def deliver(self, event, what: str) -> Fault | None:
        s = self.vm.state()
        run = event(s)
        if run.fault is not None:
            return run.fault
        if not run.assumed:
            self.finish("model", f"{what} at {s['eip']:#x} lies outside the model's stated "
                        "assumptions (a task gate or 16-bit gate)", True)
        stores = {}
        for arr, a in run.stores:
            v = run.read("mem", a)
            if v != s["mem"].get(a, 0):
                stores[a] = v
        self.write_guest(stores)
        post = {n: run.post[n] for n in st.SCALARS}
        post["halted"] = 0                # an event ends HLT (SDM Vol. 2A HLT)
        self.vm.load(post)
        return None

    def handle(self, stop: Stop) -> None:
        k = stop.kind
        if k in ("limit", "io"):
            return
        if k == "halt":
            s = dict(self.vm.state())
            s["halted"] = 1
            self.vm.load(s)
            return
        if k == "invalid":
            self.invalid_instruction(self.vm.state(), None)
            return
        if k == "event":
            self._event(stop)
            return
        s = self.vm.state()
        self.finish("outside memory" if k == "outside" else k,
                    stop.detail or k, True)

    def _event(self, stop: Stop) -> None:
        s = self.vm.state()
        eip = s["eip"]
        if stop.software:
            # EIP is past INT n / INT3 / INTO: find it by its vector, run its form from there.
            for n in (2, 1):
                at = (eip - n) & 0xFFFFFFFF
                try:
                    m = decode.instruction(self.code_at(at, s))
                except Exception:
                    continue
                if m and len(m[1]) == n and m[0].name in ("int_imm", "int3", "into"):
                    s = dict(s)
                    s["eip"] = at
                    self.vm.load(s)
                    self._execute(m[0], m[1], stop.vector)
                    return
            self.finish("model", f"Unicorn reported INT {stop.vector:#x} before {eip:#x}, where no "
                        "INT instruction is", True)
        m = decode.instruction(self.code_at(eip, s))
        if m is None:
            self.finish("unmodelled", f"{vector_name(stop.vector)}: no form models the "
                        "instruction, so its error code is unknown", True)
        form, code = m
        step = mon.emulate(form, code, s, None, self.features)
        if step.fault is None or step.fault.vector != stop.vector:
            said = "completes" if step.fault is None else f"raises {step.fault}"
            self.finish("model", f"Unicorn raised {vector_name(stop.vector)} but the "
                        f"model's {form.name} {said}", True)
        self.inject(step.fault.vector, step.fault.code, f"{form.name}: {step.fault.reason}")

    def _execute(self, form, code: bytes, vector: int) -> None:
        """Carry out a software interrupt with its form (a delivery, or a fault to inject)."""
        s = self.vm.state()
        step = mon.emulate(form, code, s, None, self.features)
        if step.fault is not None:
            self.inject(step.fault.vector, step.fault.code, f"{form.name}: {step.fault.reason}")
            return
        if not step.assumed:
            self.finish("model", f"{form.name} at {s['eip']:#x} lies outside the model's stated "
                        "assumptions", True)
        self.entry("exception", f"{form.name} (vector {vector:#x})", form.name)
        self.write_guest(step.mem)
        self.vm.load(step.real)
        self.vm.retire(1)             # the INT retired here, not in Unicorn


__all__ = ["Native"]
