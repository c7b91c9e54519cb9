"""Every form's own claims: asm text is Capstone's, bytes decode, semantics build."""

import capstone
import pytest

from pgvirt.model import isa, state as st
from pgvirt.model.encoding import matches

MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def capstone_text(code: bytes) -> str:
    insn = next(MD.disasm(code, 0))
    assert insn.size == len(code)
    return f"{insn.mnemonic} {insn.op_str}".strip()


# Capstone 5 reads UD0 and UD1 without the ModRM byte the SDM gives them (and iced-x86 reads):
# their asm is Capstone's text of the first two bytes.
SHORT_IN_CAPSTONE = {"ud0_r32", "ud0_r16", "ud1_r32", "ud1_r16"}
# Capstone 5 does not decode TSXLDTRK (F2 0F 01 E8/E9): their asm is iced-x86's text.
NOT_IN_CAPSTONE = {"xsusldtrk", "xresldtrk"}


# Other vendors' and earlier processors' instructions (model/isa/vendor.py): Capstone reads few
# of them; their asm is iced-x86's text (tests/test_coverage_cli.py checks it against the table).
OTHER_VENDORS = {f.name for f in isa.FORMS if f.theme == "vendor"}


@pytest.mark.parametrize("form", [f for f in isa.FORMS if f.name not in OTHER_VENDORS], ids=lambda f: f.name)
def test_asm_is_capstones(form):
    if form.name in NOT_IN_CAPSTONE:
        import iced_x86
        ins = iced_x86.Decoder(32, form.bytes).decode()
        assert not list(MD.disasm(form.bytes, 0))
        assert form.asm == iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL).format(ins)
        return
    if form.name in SHORT_IN_CAPSTONE:
        insn = next(MD.disasm(form.bytes, 0))
        assert insn.size == len(form.bytes) - 1 and form.asm == insn.mnemonic
        return
    assert form.asm == capstone_text(form.bytes)


@pytest.mark.parametrize("form", isa.FORMS, ids=lambda f: f.name)
def test_form_has_citation_and_runs_symbolically(form):
    # AMD's own: the SVM forms; another vendor's (or an old processor's) document for its own
    assert form.cite.startswith(("SDM Vol.", "AMD APM Vol.")) or form.name in OTHER_VENDORS
    out = form.run(st.fresh())
    assert "eip" in out.effects


def test_form_names_and_canonical_bytes_are_unique():
    names = [f.name for f in isa.FORMS]
    assert len(names) == len(set(names))


def test_each_canonical_instance_matches_only_its_own_form():
    """But a form whose Code the decoder reads only with a vendor option: its opcode is another
    instruction (or nothing) on the processors the scan decodes for (0F 05 LOADALL, SYSCALL)."""
    for f in isa.FORMS:
        others = [g.name for g in isa.FORMS if g is not f and matches(g.enc, f.bytes)
                  and matches(g.enc, f.bytes).length == len(f.bytes) and not (f.code or g.code)]
        assert not others, f"{f.name} bytes also match {others}"
