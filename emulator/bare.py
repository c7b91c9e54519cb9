"""Bare Unicorn: a guest run with nothing around it, the baseline of ``bench/monitor.py``.

``replay(memory, state, inputs, steps)`` maps RAM, writes the guest's bytes, loads a flat
CPL-0 state through the register API (valid at CPL 0 with the guest's own GDT in memory), and
runs ``steps`` instructions with the cheapest port hooks there are: an IN returns the next
byte of ``inputs`` (the bytes a monitor's devices answered in a recorded run, so the guest
takes exactly the same path), an OUT does nothing.  No devices, no monitor, no clock.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from . import machine as M


def replay(memory: Mapping[int, bytes], state: Mapping[str, int], inputs: Iterable[int],
           steps: int, ram_size: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, EIP after them) for ``steps`` instructions
    of the guest on bare Unicorn (the EIP shows it took the recorded run's path)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, ram_size, UC_PROT_ALL)
    for at, data in memory.items():
        uc.mem_write(at, bytes(data))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, state["gdtr_base"], state["gdtr_limit"], 0))
    for name, reg in (("ss", X.UC_X86_REG_SS), ("ds", X.UC_X86_REG_DS), ("es", X.UC_X86_REG_ES),
                      ("fs", X.UC_X86_REG_FS), ("gs", X.UC_X86_REG_GS), ("cs", X.UC_X86_REG_CS)):
        uc.reg_write(reg, state[name])
    for name, reg in zip(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"), M._GPR_IDS):
        uc.reg_write(reg, state[name])
    uc.reg_write(X.UC_X86_REG_EFLAGS, state["flags"] | state["sysflags"] | 2)
    values = iter(inputs)

    def port_in(u, port, size, _):
        v = 0
        for k in range(size):
            v |= next(values, 0xFF) << (8 * k)
        return v

    def port_out(u, port, size, value, _):
        pass

    uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)
    t0, c0 = time.perf_counter(), time.process_time()
    uc.emu_start(state["eip"], 1 << 62, count=steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, uc.reg_read(X.UC_X86_REG_EIP)


__all__ = ["replay"]
