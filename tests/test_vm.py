"""emulator/vm.py: the Unicorn facts a whole-guest run relies on, each observed here.

These fail loudly when Unicorn changes: the instruction counter's semantics, the sticky
exception state and its reset, port I/O undone under ``io_traps``, precise stops before
protected writes and watched reads, the interrupt-shadow flag, CPL 3 reached by the stub.
"""

import pytest

from pgvirt.emulator import states as L
from pgvirt.emulator.vm import MONITOR_BASE, VM, GuestMemoryError
from pgvirt.model import state as st
from pgvirt.model.outcome import DE, GP

CODE = 0x3000


class Ports:
    def __init__(self, stop_on=()):
        self.log = []
        self.stop_on = set(stop_on)

    def port_in(self, port, when):
        self.log.append(("in", port, when))
        return 0x42

    def port_out(self, port, value, when):
        self.log.append(("out", port, value, when))
        return port in self.stop_on


def flat(cpl=0, eip=CODE, **kw):
    s = {n: 0 for n in st.SCALARS}
    code, data = (L.code_attr(cpl), L.data_attr(cpl))
    s.update(cpl=cpl, eip=eip, esp=0x9000, cr0=0x11, gdtr_base=0x800, gdtr_limit=0x3F,
             cs=8 | cpl if cpl == 0 else 0x18 | 3, cs_limit=0xFFFFFFFF, cs_attr=code,
             ss=0x10 if cpl == 0 else 0x20 | 3, ss_limit=0xFFFFFFFF, ss_attr=data,
             ds=0x10 if cpl == 0 else 0x20 | 3, ds_limit=0xFFFFFFFF, ds_attr=data,
             tr=0x28, tr_base=0x2000, tr_limit=0x67, tr_attr=0x8B, sysflags=0x200 if cpl else 0)
    s.update(kw)
    return s


def machine(code: bytes, cpl=0, ports=None, **kw):
    p = ports or Ports()
    vm = VM(1 << 20, p, io_traps=kw.pop("io_traps", False))
    gdt = (bytes(8) + L.descriptor(0, 0xFFFFFFFF, L.code_attr(0))
           + L.descriptor(0, 0xFFFFFFFF, L.data_attr(0))
           + L.descriptor(0, 0xFFFFFFFF, L.code_attr(3))
           + L.descriptor(0, 0xFFFFFFFF, L.data_attr(3))
           + L.descriptor(0x2000, 0x67, L.TSS_BUSY_ATTR) + bytes(16))
    vm.write(0x800, gdt)
    tss = bytearray(0x68)
    tss[0x66:0x68] = (0xFFFF).to_bytes(2, "little")
    vm.write(0x2000, bytes(tss))
    vm.write(CODE, code)
    vm.load(flat(cpl, **kw))
    return vm, p


def test_counter_counts_retired_instructions():
    vm, _ = machine(b"\x40" * 50 + b"\xeb\xfe")
    stop = vm.run(7)
    assert (stop.kind, stop.retired, vm.retired) == ("limit", 7, 7)
    assert vm.state()["eax"] == 7 and vm.state()["eip"] == CODE + 7


def test_port_hooks_see_the_instructions_retired_before_them():
    # inc eax; in al, 0x60; inc ecx; out 0x20, al; inc edx; out 0x21, al
    vm, p = machine(bytes.fromhex("40e46041e62042e62143ebfe"), ports=Ports(stop_on={0x20}))
    stop = vm.run(100)
    assert p.log == [("in", 0x60, 1), ("out", 0x20, 0x42, 3)]
    assert (stop.kind, stop.retired) == ("io", 4)        # OUT retired, then the stop
    assert vm.state()["eip"] == CODE + 6


def test_hlt_at_cpl0_ends_the_run_with_it_retired():
    vm, _ = machine(bytes.fromhex("4040f441ebfe"))
    stop = vm.run(100)
    assert (stop.kind, stop.retired, stop.eip) == ("halt", 3, CODE + 3)


def test_faults_are_not_sticky_after_the_vm_reports_them():
    # cli twice at CPL 3: without the reset QEMU reports the second as #DF (REFERENCE.md 4)
    vm, _ = machine(bytes.fromhex("40fa41fa42ebfe"), cpl=3)
    for at, before in ((CODE + 1, 1), (CODE + 3, 1)):
        stop = vm.run(100)
        assert (stop.kind, stop.vector, stop.eip, stop.retired) == ("event", GP, at, before)
        s = vm.state()
        s["eip"] += 1
        vm.load(s)


def test_software_interrupt_is_told_from_a_fault():
    vm, _ = machine(bytes.fromhex("cd8031c9f7f1"))
    stop = vm.run(10)
    assert (stop.vector, stop.software, stop.eip) == (0x80, True, CODE + 2)
    s = vm.state()
    vm.load(s)
    stop = vm.run(10)
    assert (stop.vector, stop.software, stop.eip) == (DE, False, CODE + 4)


def test_io_traps_undo_the_access_and_report_gp():
    ports = Ports()
    vm, _ = machine(bytes.fromhex("40e460ebfe"), cpl=3, ports=ports, io_traps=True, eax=0x1234)
    stop = vm.run(100)
    assert (stop.kind, stop.vector, stop.address, stop.retired) == ("io-trap", GP, 0x60, 1)
    s = vm.state()
    assert s["eip"] == CODE + 1 and s["eax"] == 0x1235 and ports.log == []


def test_write_protect_stops_before_the_write():
    vm, _ = machine(bytes.fromhex("40ff0500500000" "41ebfe"))     # inc dword [0x5000]
    vm.write(0x5000, b"\x10\0\0\0")
    vm.protect(5, writable=False)
    stop = vm.run(100)
    assert (stop.kind, stop.address, stop.retired, stop.eip) == ("write-protect", 0x5000, 1, CODE + 1)
    assert vm.read(0x5000, 4) == b"\x10\0\0\0"
    vm.protect(5, writable=True)
    vm.run(2)
    assert vm.read(0x5000, 1) == b"\x11"


def test_read_watch_stops_before_the_read_and_the_instruction_restarts():
    vm, _ = machine(bytes.fromhex("40" "0305" "00500000" "41ebfe"))  # add eax, [0x5000]
    vm.write(0x5000, b"\x05\0\0\0")
    vm.watch_reads([0x5000])
    stop = vm.run(100)
    assert (stop.kind, stop.address, stop.retired, stop.eip) == ("read-watch", 0x5000, 1, CODE + 1)
    assert vm.state()["eax"] == 1
    vm.watch_reads([])
    vm.run(2)
    assert vm.state()["eax"] == 6


def test_watched_block_stops_before_it_runs():
    vm, _ = machine(bytes.fromhex("40eb00" "42" "42ebfe"))
    vm.watch([(CODE + 3, CODE + 4)])
    stop = vm.run(100)
    assert (stop.kind, stop.address, stop.retired) == ("watch", CODE + 3, 2)
    assert vm.state()["edx"] == 0


def test_interrupt_shadow_after_sti_and_mov_ss():
    vm, _ = machine(bytes.fromhex("fb90" "8ed090" "90ebfe"), eax=0x10)
    vm.run(1)
    assert vm.shadow()
    vm.run(1)
    assert not vm.shadow()
    vm.run(1)
    assert vm.shadow()


def test_cpl3_is_reached_and_kept_across_loads():
    vm, _ = machine(b"\x90" * 8 + b"\xeb\xfe", cpl=3)
    s = vm.state()
    assert (s["cpl"], s["cs"], s["ss"]) == (3, 0x1B, 0x23)
    s["eax"] = 0xDEAD
    vm.load(s)
    vm.run(3)
    assert vm.state()["eax"] == 0xDEAD and vm.stats["stubs"] == 1


def test_access_outside_guest_ram_stops_the_run():
    vm, _ = machine(bytes.fromhex("a100002000ebfe"))               # mov eax, [0x200000]
    stop = vm.run(10)
    assert stop.kind == "outside" and stop.address == 0x200000
    with pytest.raises(GuestMemoryError):
        vm.read(0x100000 - 2, 4)


def test_guest_cannot_write_the_monitors_pages():
    vm, _ = machine(bytes.fromhex("c705") + MONITOR_BASE.to_bytes(4, "little") + b"\1\0\0\0\xeb\xfe")
    stop = vm.run(10)
    assert stop.kind == "outside" and "monitor" in stop.detail
