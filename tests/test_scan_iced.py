"""Guest code matched to forms through iced-x86's decoder (the tables the forms come from), and
the hand-written forms that close the gaps real guests showed (ENTER with its nesting level).

Real guests come from Debian packages (tests/setup-guests.sh); their tests are marked ``guests``.
"""

from __future__ import annotations

import random
from pathlib import Path

import iced_x86 as iced
import pytest

from pgvirt.guest import decode as D, scan as S
from pgvirt.guest.image import GuestError, load_guest
from pgvirt.guest.scan import match_form, scan
from pgvirt.model import isa, profiles
from pgvirt.model.derived import registry, table
from pgvirt.model.form import Form
from helpers import INVADERS, TBOOT, TBOOT_SYMS, need

GRUB = Path("/usr/lib/grub/i386-pc")
SYSLINUX = Path("/usr/lib/syslinux/modules/bios")


def _guests() -> list[Path]:
    return sorted({INVADERS, TBOOT, *GRUB.glob("*.mod"), *SYSLINUX.glob("*.c32")})


def test_code_to_form_agrees_with_the_decoder():
    """For every derived form's example bytes (those the scan's decoder options decode) and
    every hand-written form's, the decoder's Code is the form's Code and leads back to it."""
    checked = 0
    for name in registry.names():
        code = registry.code_of(name)
        if code is None:
            continue        # SWAPGS: no Code in 32-bit mode
        rec = table.codes()[code]
        if rec["decoder_option"]:
            continue        # decoded only with an option the scan does not set (Cyrix, ...)
        f = registry.get(name)
        ins = iced.Decoder(32, f.bytes, D.OPTIONS).decode()
        assert D.code_name(ins.code) == code and ins.len == len(f.bytes), name
        assert match_form(f.bytes) is f, name
        checked += 1
    assert checked > 3900


def test_undecodable_and_truncated_bytes_are_reported_with_their_address(tmp_path):
    """A byte run no decoder reads, and an instruction cut by the section's end: each byte is
    undecodable, reported at its address, never an exception."""
    p = tmp_path / "bad.bin"
    # nop; 0F 04 (no instruction); add al, 0; ret; MOV EAX, imm32 cut off by the end
    p.write_bytes(bytes.fromhex("90" "0f" "0400" "c3" "b800"))
    g = load_guest(p, raw=True, base=0x5000)
    r = scan(g, lambda n: ())
    insns = list(D.decode(g))
    bad = [i.address for i in insns if i.mnemonic == D.UNDECODABLE]
    assert bad == [0x5001, 0x5005, 0x5006]            # b8 00: truncated, then 00 without ModRM
    assert (r.undecodable, r.undecodable_first) == (len(bad), tuple(bad[:5]))
    assert b"".join(i.bytes for i in insns) == p.read_bytes()


def test_an_unsupported_code_is_unmodelled_with_its_address(tmp_path):
    """A Code with no form (an unsupported one, its example bytes from the table) is reported
    unmodelled at its address, by the decoder's mnemonic."""
    hand, derived = table.hand_codes(), set(registry.derived_codes())
    for code, rec in table.codes().items():
        if code in hand or code in derived or rec["decoder_option"] or "bytes" not in rec:
            continue
        raw = bytes.fromhex(rec["bytes"])
        if D.code_name(S._number(raw)) == code:
            break
    else:
        pytest.skip("every Code the decoder decodes has a form")
    p = tmp_path / "unsupported.bin"
    p.write_bytes(b"\x90" + raw + b"\xc3")
    r = scan(load_guest(p, raw=True, base=0x100), lambda n: ())
    [u] = r.unmodelled
    assert (u.count, u.first, u.mnemonic) == (1, (0x101,), D.mnemonic(raw))
    assert r.instructions == 3 and sum(r.forms.values()) == 2


@pytest.mark.guests
def test_no_decodable_instruction_is_unmodelled_on_any_debian_guest():
    """Every guest the tests install: 0 unmodelled instructions (undecodable bytes are counted
    apart, with their addresses)."""
    need(INVADERS, TBOOT)
    seen = 0
    for path in _guests():
        try:
            g = load_guest(path, symbols=TBOOT_SYMS if path == TBOOT and TBOOT_SYMS.is_file() else None)
        except GuestError:
            continue        # an empty .text (all_video.mod, ...)
        r = scan(g, lambda n: ())
        assert r.unmodelled == (), (path.name, r.unmodelled[:3])
        assert sum(r.forms.values()) == r.instructions
        seen += 1
    assert seen > 250


@pytest.mark.guests
def test_tboot_16_bit_sreg_moves_and_far_jumps_are_sites():
    need(TBOOT, TBOOT_SYMS)
    from pgvirt.guest.paravirt import scan_guest
    rep = scan_guest(load_guest(TBOOT, symbols=TBOOT_SYMS), "pentium")
    forms = {s.form for s in rep.sites}
    assert {"mov_r16_cs", "mov_r16_ss", "jmp_far_ptr16", "jmp_far_m16"} <= forms
    assert rep.result.unmodelled_count == 0


@pytest.mark.parametrize("name", ["enter", "enter_o16"])
@pytest.mark.parametrize("level", [0, 1, 3, 31, 33])
def test_enter_at_every_nesting_level_agrees_with_unicorn(name, level):
    """ENTER's nesting level is the instance's imm8 MOD 32: the form at levels 0, 1, 3, 31 and
    33 (= 1) against Unicorn on random states."""
    from pgvirt.emulator import crosscheck as C
    from pgvirt.emulator import strategies

    f = isa.get(name)
    raw = f.bytes[:-1] + bytes([level])
    variant = Form(f.name, f.enc, f.enc_text, raw, f.asm, f.cite, f.theme, f.semantics)
    assert match_form(raw) is f
    checker, rnd = C.Checker(), random.Random(level)
    agree = 0
    for _ in range(40):
        s = strategies.generate(strategies.RandomDraw(rnd), variant, profiles.PENTIUM)
        c = checker.check(variant, profiles.PENTIUM, s)
        assert c.verdict != "unexplained", [str(d) for d in c.unexplained]
        agree += c.verdict == "agree"
    assert agree >= 20
