"""monitor/devices: the PC devices as a guest programs them, on the virtual clock."""

import pytest

from pgvirt.monitor.devices import Bus, KeysError, parse_keys
from pgvirt.monitor.devices.cmos import CMOS
from pgvirt.monitor.devices.kbd import KBC8042, KeyEvent
from pgvirt.monitor.devices.pic import PICPair
from pgvirt.monitor.devices.pit import PIT8254
from pgvirt.monitor.devices.vga import VGA

HZ = 1_193_182


def init_pics(p: PICPair, master=0x20, slave=0x28, mask=0xFC):
    for port, v in ((0x20, 0x11), (0xA0, 0x11), (0x21, master), (0xA1, slave), (0x21, 4),
                    (0xA1, 2), (0x21, 1), (0xA1, 1), (0x21, mask), (0xA1, 0xFF)):
        p.write(port, v)


def test_pic_starts_masked_and_initialises():
    p = PICPair()
    p.pulse(0)
    assert not p.pending()
    init_pics(p)
    assert p.master.vector == 0x20 and p.slave.vector == 0x28 and p.master.imr == 0xFC
    p.pulse(0)
    assert p.pending() and p.acknowledge() == 0x20
    assert not p.pending()                     # IR0 in service until EOI


def test_pic_priority_nesting_and_eoi():
    p = PICPair()
    init_pics(p, mask=0x00)
    p.pulse(1)
    assert p.acknowledge() == 0x21
    p.pulse(0)
    assert p.pending()                         # IR0 outranks IR1 in service
    assert p.acknowledge() == 0x20
    p.pulse(3)
    assert not p.pending()                     # IR3 waits behind IR0 and IR1
    p.write(0x20, 0x20)                        # non-specific EOI: IR0
    assert not p.pending()
    p.write(0x20, 0x61)                        # specific EOI of IR1
    assert p.acknowledge() == 0x23


def test_pic_cascade_and_register_reads():
    p = PICPair()
    for port, v in ((0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 4),
                    (0xA1, 2), (0x21, 1), (0xA1, 1), (0x21, 0xFB), (0xA1, 0xFE)):
        p.write(port, v)
    p.pulse(8)
    assert p.acknowledge() == 0x28
    p.write(0xA0, 0x0B)                        # OCW3: read ISR
    assert p.read(0xA0) == 1
    assert p.read(0xA1) == 0xFE


def test_pit_mode2_counts_down_and_raises_edges_each_period():
    t = PIT8254()
    t.write(0x43, 0x34, 0)
    t.write(0x40, 100, 0)
    t.write(0x40, 0, 0)                        # N = 100 at t = 0: loaded at t = 1
    assert t.next_edge(0) == 101
    assert t.channels[0].edges(0, 350) == [101, 201, 301]
    t.write(0x43, 0x00, 31)                    # latch at t = 31: 100 - 30
    assert (t.read(0x40, 90), t.read(0x40, 90)) == (70, 0)


def test_pit_mode0_read_back_shows_null_count_until_loaded():
    t = PIT8254()
    t.write(0x43, 0x30, 10)
    t.write(0x40, 0x20, 10)
    t.write(0x40, 0x4E, 10)                    # 20000, written at 10, loaded at 11
    t.write(0x43, 0xE2, 10)                    # read-back: status of channel 0
    assert t.read(0x40, 10) & 0x40             # null count
    t.write(0x43, 0xE2, 11)
    assert not t.read(0x40, 11) & 0x40
    assert t.channels[0].value(11 + 5) == 20000 - 5
    assert not t.channels[0].out(11 + 19999) and t.channels[0].out(11 + 20000)


def test_pit_bcd_and_peek_has_no_side_effects():
    t = PIT8254()
    t.write(0x43, 0x35, 0)                     # mode 2, BCD
    t.write(0x40, 0x00, 0)
    t.write(0x40, 0x10, 0)                     # 1000 decimal
    assert t.channels[0].period == 1000
    assert t.peek(0x40, 1) == t.peek(0x40, 1) == t.read(0x40, 1)


def test_kbc_scripted_keys_status_and_irq():
    k = KBC8042(parse_keys("a left", 100, 10, 50))
    assert k.next_event() == 100 and not k.status() & 1
    assert k.advance(100) == 1 and k.status() & 1
    assert k.read(0x60) == (0x1E, 0)
    k.advance(110)
    assert k.read(0x60)[0] == 0x9E
    k.advance(150)
    assert [k.read(0x60)[0], k.read(0x60)[0]] == [0xE0, 0x4B]


def test_kbc_commands_and_reset():
    k = KBC8042()
    k.write(0x64, 0x20)
    assert k.read(0x60)[0] == 0x45
    k.write(0x60, 0xFF)                        # keyboard reset
    assert [k.read(0x60)[0], k.read(0x60)[0]] == [0xFA, 0xAA]
    assert not k.reset_requested
    k.write(0x64, 0xFE)
    assert k.reset_requested


def test_key_script_errors_are_one_line():
    with pytest.raises(KeysError, match="unknown key 'nosuchkey'"):
        parse_keys("a nosuchkey", 0, 1, 2)
    assert [e.time for e in parse_keys("a +2 b", 0, 1, 10)] == [0, 1, 30, 31]


def test_cmos_clock_follows_the_virtual_time():
    c = CMOS(HZ, 8 << 20)
    c.write(0x70, 0x00, 0)
    assert c.read(0x71, 0) == 0x00
    assert c.read(0x71, 61 * HZ) == 0x01       # one second past the minute, in BCD
    c.write(0x70, 0x09, 0)
    assert c.read(0x71, 0) == 0x00             # year 2000
    c.write(0x70, 0x17, 0)
    assert c.read(0x71, 0) | c.ram[0x18] << 8 == 7 * 1024
    c.write(0x70, 0x00, 0)
    c.write(0x71, 0x30, 0)                     # set the seconds to 30
    assert c.read(0x71, 0) == 0x30


def test_vga_registers_and_frame():
    v = VGA(HZ)
    v.write(0x3D4, 0x0E, 0)
    v.write(0x3D5, 0x00, 0)
    v.write(0x3D4, 0x0F, 0)
    v.write(0x3D5, 81, 0)
    v.read(0x3DA, 0)                           # reset the attribute flip-flop
    v.write(0x3C0, 0x10, 0)
    v.write(0x3C0, 0x00, 0)                    # mode control: blink off
    v.write(0x3C8, 1, 0)
    for c in (63, 0, 0):
        v.write(0x3C9, c, 0)
    f = v.frame(0, b"A\x07" * 2000)
    assert f.cursor == 81 and not f.blink and f.dac[1] == (63, 0, 0)
    assert f.rows()[0] == "A" * 80


def test_bus_traces_ports_and_answers_floating_bus():
    b = Bus(8 << 20)
    assert b.port_in(0x1234, 5) == 0xFF
    b.port_out(0xE9, ord("x"), 6)
    assert bytes(b.console) == b"x" and b.port_in(0xE9, 7) == 0xE9
    assert b.trace == [(5, 0x1234, False, 0xFF), (6, 0xE9, True, ord("x")), (7, 0xE9, False, 0xE9)]


def test_bus_delivers_timer_edges_to_the_pic():
    b = Bus(8 << 20)
    for port, v in ((0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 1), (0x21, 0xFE)):
        b.port_out(port, v, 0)
    b.port_out(0x43, 0x34, 0)
    b.port_out(0x40, 50, 0)
    b.port_out(0x40, 0, 0)
    assert b.next_event(0) == 51
    b.advance(50)
    assert not b.pic.pending()
    b.advance(51)
    assert b.pic.pending() and b.pic.acknowledge() == 0x20


def test_reset_through_the_8042_is_recorded():
    b = Bus(8 << 20)
    b.port_out(0x64, 0xFE, 3)
    assert b.reset and "8042" in b.reset


def test_key_events_keep_their_order():
    ev = parse_keys("a b", 0, 100, 10)          # a held past b's press
    assert [e.label for e in ev] == ["a down", "b down", "a up", "b up"]
    assert all(isinstance(e, KeyEvent) for e in ev)
