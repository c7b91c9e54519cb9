"""The derived-form table (model/derived/footprints.json.gz) against the installed iced-x86."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import footprints as gen  # noqa: E402

iced = pytest.importorskip("iced_x86")


@pytest.fixture(scope="module")
def table() -> dict:
    return json.loads(gzip.decompress(gen.OUT.read_bytes()))


def test_committed_table_is_what_the_installed_iced_gives():
    """Stale data fails loudly: `make footprints` rewrites it (and the feature names beside it)."""
    doc = gen.build()
    assert gen.dump(doc) == gen.OUT.read_bytes(), \
        "model/derived/footprints.json.gz is stale: run `make footprints`"
    assert gen.feature_names(doc) == gen.FEATURES_OUT.read_bytes(), \
        "model/derived/cpuid_features.txt is stale: run `make footprints`"


def test_every_code_valid_in_32_bit_mode_is_listed(table):
    want = {n for v, n in gen.CODE.items() if iced.OpCodeInfo(v).mode32}
    assert set(table["codes"]) == want
    assert len(want) > 4100


def test_examples_decode_back_to_their_code(table):
    for name, rec in table["codes"].items():
        for h in [rec["bytes"], *rec["alt_bytes"]] if "bytes" in rec else []:
            opt = getattr(iced.DecoderOptions, rec["decoder_option"]) if rec["decoder_option"] else 0
            ins = iced.Decoder(32, bytes.fromhex(h), opt).decode()
            assert gen.CODE[ins.code] == name and ins.len == len(h) // 2, (name, h)


def test_no_code_the_decoder_calls_privileged_is_derived(table):
    """The decoder's privilege flags are an oracle here, never an input of the decision."""
    derived_priv = [n for n, r in table["codes"].items() if r["decision"]["derive"] and (
        r["oracle"]["privileged"] or r["oracle"]["must_be_cpl0"] or r["oracle"]["may_require_cpl0"]
        or not r["oracle"]["cpl3"])]
    assert derived_priv == []


def test_refused_codes_have_a_one_line_reason(table):
    for name, rec in table["codes"].items():
        why = rec["decision"]["reason"]
        assert rec["decision"]["derive"] == (why == ""), name
        assert "\n" not in why and len(why) < 120


def test_no_derived_footprint_touches_system_state(table):
    """What the issue lists as hand-written: SYSTEM fields, segment register writes, I/O, MSRs,
    far/interrupt/exception flow control."""
    for name, rec in table["codes"].items():
        if not rec["decision"]["derive"]:
            continue
        fp = rec["footprint"]
        assert rec["flow"] not in ("interrupt", "exception"), name
        assert not rec["io"], name
        assert not name.startswith(gen.FAR), name
        for r in fp["implicit"]:
            assert not (r["reg"] in ("es", "cs", "ss", "ds", "fs", "gs") and "write" in r["access"]), name
            assert not r["reg"].startswith(("cr", "dr", "tr", "xcr", "gdtr", "idtr", "ldtr")), name
        flags = {f for v in fp["rflags"].values() for f in v}
        assert not flags & set(gen.SYSTEM_FLAGS), name
        assert rec["mnemonic"] not in gen.SYSTEM_TOUCH, name
