"""pgvirt.decoder: the one decoder of guest code (the scan's sweep and the monitors' descent)."""

import pytest

from pgvirt import decoder as D


@pytest.mark.parametrize("hexbytes, at, want", [
    ("e9fbffffff", 0x1000, (5, 0x1000, False)),     # jmp rel32 to itself: no fall-through
    ("66e9fdff", 0x1000, (4, 0x1001, False)),       # o16 jmp: EIP truncated to 16 bits
    ("ebfe", 0x2000, (2, 0x2000, False)),
    ("7405", 0x10, (2, 0x17, True)),                # jcc: both ways
    ("e2fe", 0x20, (2, 0x20, True)),                # loop
    ("e300", 0x20, (2, 0x22, True)),                # jecxz
    ("e800000000", 0x10, (5, 0x15, True)),          # near call: the target and the return
    ("ff15 00100000", 0, (6, None, True)),          # call [mem]: no target, returns
    ("ffe0", 0, (2, None, False)),                  # jmp eax
    ("ea00000000 0800", 0, (7, None, False)),       # jmp far ptr16:32
    ("9a00000000 0800", 0, (7, None, True)),        # call far ptr16:32
    ("c3", 0, (1, None, False)), ("cb", 0, (1, None, False)), ("cf", 0, (1, None, False)),
    ("0f0b", 0, (2, None, False)), ("0fffc0", 0, (3, None, False)),  # UD2, UD0: always #UD
    ("cd80", 0, (2, None, True)), ("cc", 0, (1, None, True)),         # interrupts return
    ("f4", 0, (1, None, True)), ("9d", 0, (1, None, True)),
    ("f0fa", 0, (2, None, True)),                   # lock cli: decoded, judged by the model
])
def test_flow_of_each_kind_of_transfer(hexbytes, at, want):
    f = D.flow(bytes.fromhex(hexbytes.replace(" ", "")), at)
    assert (f.length, f.target, f.falls_through) == want


def test_undecodable_bytes_have_no_flow():
    assert D.flow(b"\xff", 0) is None and D.flow(b"", 0) is None
    assert D.asm(b"\x0f\x0b", 0) == "ud2"


def test_monitor_text_is_the_decoders():
    from pgvirt.monitor.core import asm
    assert asm(bytes.fromhex("8cc8"), 0) == D.asm(bytes.fromhex("8cc8"), 0) == "mov eax, cs"
    assert asm(b"\xff", 0x10) == "(bad) ff"
