"""The proof cache keys on each form's definition: an edit re-derives that form alone; an entry
that does not match its digests is derived again, with a warning."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings

import pytest

from pgvirt.model import profiles
from pgvirt.model.derived import registry, table
from pgvirt.verify import cache as C

PENTIUM = dataclasses.replace(profiles.PENTIUM, name="pentium-cachetest",
                              features=profiles.PENTIUM.features | frozenset(table.features()) | {"xsave"})
HAND = ["popfd", "sgdt_m", "add_rm32_r32", "mov_r_cs"]
DERIVED = ["add_rm8_r8", "adc_rm8_r8", "sbb_rm8_r8", "addps_xmm_xmmm128", "fadd_st0_sti"]


def _edit(monkeypatch, form: str) -> None:
    """As if ``form``'s definition had been edited: its digest changes, no other."""
    real = C._hand_digest.__wrapped__
    monkeypatch.setattr(C, "_hand_digest", lambda name: real(name) + ("edited" if name == form else ""))
    monkeypatch.setattr(C, "_KEYS", {})


def test_keys_change_with_the_definition_only(monkeypatch):
    keys = {n: C.form_key(n, PENTIUM) for n in HAND}
    _edit(monkeypatch, "popfd")
    after = {n: C.form_key(n, PENTIUM) for n in HAND}
    assert [n for n in HAND if keys[n] != after[n]] == ["popfd"]


def test_hand_definition_reaches_helpers_it_calls():
    """A form's digest covers the model helpers it calls (MOV CR4's PDPTE check), not only its
    own body: editing the helper re-derives the form."""
    out: dict = {}
    C._reach(registry.get("mov_cr4_r").semantics, out, set())
    assert any(k.endswith("._require_pdptes") for k in out), sorted(out)


def test_derived_forms_of_one_shape_share_an_entry():
    assert C.form_key("adc_rm8_r8", PENTIUM) == C.form_key("sbb_rm8_r8", PENTIUM)
    assert C.form_key("add_rm8_r8", PENTIUM) != C.form_key("adc_rm8_r8", PENTIUM)   # ADD reads no CF


def test_an_edit_rederives_one_form_fast(tmp_path, monkeypatch):
    cache = C.ClassificationCache(tmp_path)
    names = HAND + DERIVED
    _, first = C.classifications(PENTIUM, names, cache, jobs=1)
    assert sorted(first) == sorted(names)
    _, again = C.classifications(PENTIUM, names, cache, jobs=1)
    assert again == []
    _edit(monkeypatch, "add_rm32_r32")
    t = time.perf_counter()
    _, edited = C.classifications(PENTIUM, names, cache, jobs=1)
    assert edited == ["add_rm32_r32"]
    assert time.perf_counter() - t < 5     # bench/derived.py measures it; this only bounds a hang


def test_a_tampered_entry_is_derived_again_with_a_warning(tmp_path):
    cache = C.ClassificationCache(tmp_path)
    C.classifications(PENTIUM, ["popfd", "sgdt_m"], cache, jobs=1)
    path = cache.path(PENTIUM.name)
    doc = json.loads(path.read_text())
    key = C.form_key("popfd", PENTIUM)
    doc["entries"][key]["answers"]["privileged"]["note"] = "edited by hand"
    path.write_text(json.dumps(doc))
    fresh = C.ClassificationCache(tmp_path)
    with pytest.warns(C.CacheWarning, match="popfd"):
        _, derived = C.classifications(PENTIUM, ["popfd", "sgdt_m"], fresh, jobs=1)
    assert derived == ["popfd"] and fresh.mismatched == ["popfd"]


def test_an_entry_under_another_profile_digest_is_not_used(tmp_path):
    cache = C.ClassificationCache(tmp_path)
    C.classifications(PENTIUM, ["sgdt_m"], cache, jobs=1)
    other = dataclasses.replace(PENTIUM, cr0_clear=())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, derived = C.classifications(other, ["sgdt_m"], cache, jobs=1)
    assert derived == ["sgdt_m"]


def test_entries_of_edited_definitions_are_dropped_when_the_cache_is_written(tmp_path, monkeypatch):
    cache = C.ClassificationCache(tmp_path)
    C.classifications(PENTIUM, ["popfd", "add_rm8_r8"], cache, jobs=1)
    before = set(json.loads(cache.path(PENTIUM.name).read_text())["entries"])
    _edit(monkeypatch, "popfd")
    C.classifications(PENTIUM, ["popfd", "add_rm8_r8"], cache, jobs=1)
    after = set(json.loads(cache.path(PENTIUM.name).read_text())["entries"])
    assert len(after) == len(before) == 2 and after != before
    assert set(json.loads(cache.path(PENTIUM.name, ".witnesses").read_text())["entries"]) == after


def test_hand_digest_memo_is_keyed_by_the_model_files(tmp_path, monkeypatch):
    """The hand-written forms' digests kept on disk belong to one state of model/'s files: a
    touched file gives another memo, and a memo entry is what reading the sources gives."""
    import os

    from pgvirt.verify import cache as K

    stamp = K._model_stamp()
    f = K._MODEL_DIR / "isa" / "ordinary.py"
    st_ = os.stat(f)
    try:
        os.utime(f, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))
        assert K._model_stamp() != stamp
    finally:
        os.utime(f, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    assert K._model_stamp() == stamp
    K._hand_digest.cache_clear()
    want = K._hand_digest("popfd")
    K._hand_memo()["popfd"] = "kept"            # what the memo of these very files says is used
    K._hand_digest.cache_clear()
    assert K._hand_digest("popfd") == "kept"
    K._hand_memo().pop("popfd")
    K._hand_digest.cache_clear()
    assert K._hand_digest("popfd") == want


def test_kept_footprint_records_are_the_table_s(tmp_path, monkeypatch):
    """A fresh process reads one code's record from the file kept for it, equal to the table's."""
    import subprocess
    import sys

    from pgvirt.model.derived import table

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    code = "ADD_R8_RM8"
    prog = ("import json; from pgvirt.model.derived import table; r = table.record(%r); "
            "print(json.dumps([r, table.load.cache_info().currsize]))" % code)
    first = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    r1, parsed1 = json.loads(first.stdout)
    r2, parsed2 = json.loads(second.stdout)
    assert r1 == r2 == table.codes()[code]
    assert (parsed1, parsed2) == (1, 0)        # the second process never parsed the table


def test_a_tampered_entry_is_caught_after_the_same_entry_was_trusted(tmp_path):
    """An entry edited on disk (its claimed digest kept) is checked again even where this process
    already trusted an entry of the same key and digest (a regression: the check was memoized by
    the claimed digest, so the second cache's edited entry passed without a warning)."""
    first, second = C.ClassificationCache(tmp_path / "a"), C.ClassificationCache(tmp_path / "b")
    C.classifications(PENTIUM, ["popfd"], first, jobs=1)
    path = second.path(PENTIUM.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(first.path(PENTIUM.name).read_bytes())
    C.classifications(PENTIUM, ["popfd"], C.ClassificationCache(tmp_path / "b"), jobs=1)   # trusted
    doc = json.loads(path.read_text())
    doc["entries"][C.form_key("popfd", PENTIUM)]["answers"]["privileged"]["note"] = "edited by hand"
    path.write_text(json.dumps(doc))
    fresh = C.ClassificationCache(tmp_path / "b")
    with pytest.warns(C.CacheWarning, match="popfd"):
        _, derived = C.classifications(PENTIUM, ["popfd"], fresh, jobs=1)
    assert derived == ["popfd"] and fresh.mismatched == ["popfd"]
