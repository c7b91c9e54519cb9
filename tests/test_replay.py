"""Counterexample replay on Unicorn: every Pentium Theorem-1 violation replays, a wrong model is
caught, and bad input is one line and exit 2."""

import json

import pytest
import z3

from pgvirt.emulator import replay as R
from pgvirt.model import isa, profiles
from pgvirt.model import state as st
from pgvirt.model.form import Form
from pgvirt.model.outcome import from_changes_json
from pgvirt.verify import counterexample as cx
from pgvirt.cli.main import main


@pytest.fixture(scope="module")
def pentium():
    """Every Theorem-1 violation under pentium with its counterexample (solved once)."""
    viol, undecided = cx.violations("pentium", jobs=2)
    assert not undecided
    return {f["name"]: f for f in cx.find_many(viol, "pentium", jobs=2)}


@pytest.fixture(scope="module")
def replayer():
    return R.Replayer()


def test_every_pentium_violation_replays(pentium, replayer):
    assert len(pentium) >= 50                       # the R&I list and more
    outcomes = {}
    for name, found in pentium.items():
        assert found["verdict"] == "found", (name, found["note"])
        rep = replayer.replay(name, found["witness"], cx.criterion_concrete, "pentium")
        outcomes[name] = rep.outcome
        assert rep.outcome in ("confirmed", "emulator-deviation"), (name, rep.note)
        if rep.outcome == "emulator-deviation":
            assert rep.deviation and all(not r.unexplained for r in (rep.native, rep.deprivileged))
        else:
            assert rep.emulator_criterion
    # the classic ones are confirmed outright on Unicorn
    for name in ("sgdt_m", "sidt_m", "pushfd", "popfd", "mov_r_cs", "lar_r", "verr_r", "push_cs"):
        assert outcomes[name] == "confirmed", name


def test_witness_pairs_are_native_and_deprivileged(pentium):
    p = profiles.PENTIUM
    for name, found in pentium.items():
        w = found["witness"]
        n, d = w["native"], w["deprivileged"]
        assert n["cpl"] == 0 and d["cpl"] == 3
        assert (d["sysflags"] >> st.IOPL_LO) & 3 == p.iopl and d["cr4"] >> st.CR4_TSD & 1
        for k in st.users():                       # the same guest: USER fields and memory
            if k in ("cs", "ss"):
                assert n[k] & 0xFFFC == d[k] & 0xFFFC
            else:
                assert n[k] == d[k], (name, k)
        assert not w["model"]["deprivileged"]["fault"]          # the monitor never gets control
        assert w["criterion"], name


def test_popfd_loses_the_interrupt_flag_change(pentium):
    w = pentium["popfd"]["witness"]
    crit = " ".join(w["criterion"])
    assert "sysflags" in crit or "visible" in crit
    n, d = w["native"], w["deprivileged"]
    nres = from_changes_json(n, w["model"]["native"])
    dres = from_changes_json(d, w["model"]["deprivileged"])
    if "sysflags" in crit:
        changed = n["sysflags"] ^ nres.state["sysflags"]
        assert changed & (nres.state["sysflags"] ^ dres.state["sysflags"])


def test_equal_ends_from_different_starts_are_not_a_lost_change():
    """Regression: the criterion once compared deltas (pre XOR post), so a POPFD that leaves IF
    set in both runs counted as lost only because the monitor's IF started clear."""
    from pgvirt.emulator import states as S
    from pgvirt.model.outcome import Next
    n = S.flat_state(0, interrupts=False)
    d = S.flat_state(3, interrupts=True)
    d["cs"], d["ss"] = n["cs"] | 3, n["ss"] | 3
    for k in st.users():
        if k not in ("cs", "ss"):
            d[k] = n[k]
    if_set = 1 << st.IF
    post_n, post_d = dict(n), dict(d)
    post_n["sysflags"] = n["sysflags"] | if_set
    post_d["sysflags"] = d["sysflags"] | if_set
    assert cx.criterion_concrete(n, Next(post_n), d, Next(post_d)) == []
    post_d["sysflags"] = d["sysflags"] & ~if_set
    assert cx.criterion_concrete(n, Next(post_n), d, Next(post_d)) == ["system change lost: sysflags"]


def _altered(name: str, semantics) -> Form:
    f = isa.get(name)
    return Form(f.name, f.enc, f.enc_text, f.bytes, f.asm, f.cite, f.theme, semantics)


def test_an_altered_model_form_replays_as_mismatch(replayer):
    """MOV r32, CS that adds one to the selector: still mode sensitive, so the solver finds a
    counterexample, but Unicorn's EAX is the selector and no deviation explains the difference."""
    def wrong(x):
        x.set_rm(4, z3.ZeroExt(16, x.read("cs")) + 1)
    form = _altered("mov_r_cs", wrong)
    found = cx.find(form, "pentium")
    assert found.verdict == "found"
    rep = replayer.replay(form, found.witness, cx.criterion_concrete, "pentium")
    assert rep.outcome == "mismatch"
    assert any(d.key == "eax" for r in (rep.native, rep.deprivileged) for d in r.unexplained)


def test_a_lying_prediction_is_a_mismatch(pentium, replayer):
    """The same witness with the model's prediction edited: the replay notices."""
    w = json.loads(json.dumps(pentium["sgdt_m"]["witness"]))
    for k, v in w["model"]["native"]["changed"]["mem"].items():
        w["model"]["native"]["changed"]["mem"][k] = v ^ 0x80
    w = _int_keys(w)
    rep = replayer.replay("sgdt_m", w, cx.criterion_concrete, "pentium")
    assert rep.outcome == "mismatch" and rep.native.unexplained


def _int_keys(w):
    for label in ("native", "deprivileged"):
        w[label]["mem"] = {int(a): b for a, b in w[label]["mem"].items()}
        w[label]["io"] = {int(a): b for a, b in w[label]["io"].items()}
        ch = w["model"][label].get("changed", {})
        for arr in ("mem", "io"):
            if arr in ch:
                ch[arr] = {int(a): b for a, b in ch[arr].items()}
    return w


def test_one_machine_for_all_replays(pentium, replayer):
    runs = replayer.m.stats["runs"]
    for name in ("sgdt_m", "popfd"):
        replayer.replay(name, pentium[name]["witness"], cx.criterion_concrete, "pentium")
    assert replayer.m.stats["runs"] == runs + 4


# --- the command ----------------------------------------------------------------------------------
def test_cli_json(capsys):
    assert main(["replay", "--profile", "pentium", "--format", "json", "popfd", "sysenter"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["profile"] == "pentium"
    assert [r["name"] for r in doc["replays"]] == ["popfd", "sysenter"]
    for r in doc["replays"]:
        assert set(r) >= {"name", "mnemonic", "outcome", "native", "deprivileged", "model", "deviation"}
        assert r["outcome"] in R.OUTCOMES
    assert doc["replays"][0]["deviation"] is None
    assert doc["replays"][1]["outcome"] == "emulator-deviation"
    assert "sysenter-only-advances-eip" in doc["replays"][1]["deviation"]


def test_cli_text_has_both_runs_and_a_summary(capsys):
    assert main(["replay", "--profile", "pentium", "mov_r_cs"]) == 0
    text = capsys.readouterr().out
    assert "native/Unicorn" in text and "depriv./model" in text and "eax" in text
    assert "[pentium] 1 replays: 1 confirmed, 0 emulator-deviation, 0 mismatch" in text


def test_cli_text_keeps_bracketed_asm(capsys):
    """Regression: the title went through Rich markup, which ate "[eax]" and the legend."""
    assert main(["replay", "--profile", "pentium", "sgdt_m"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    # piped, colour is off: the legend names the marks, not colours
    assert "sgdt [eax]" in text and "[*: native and deprivileged differ" in text and "magenta" not in text
    assert " *" in text


def test_replay_legend_names_colours_only_with_colour():
    from rich.console import Console

    from pgvirt.report.emulator import replay_table

    r = R.Replayer().replay("mov_r_cs", cx.find("mov_r_cs", "pentium").witness,
                            cx.criterion_concrete, "pentium")
    for color, legend, mark in ((True, "[magenta:", False), (False, "[*:", True)):
        c = Console(width=200, color_system="standard" if color else None, force_terminal=color)
        with c.capture() as cap:
            c.print(replay_table(r, color=color))
        text = cap.get()
        assert legend in text and (" *" in text) == mark


def test_deviation_line_printed_once(capsys):
    """An emulator-deviation's caption names each deviation once (its note repeated them)."""
    assert main(["replay", "--profile", "pentium", "retf"]) == 0
    out = capsys.readouterr().out
    assert out.count("transfer-accessed-bit") == 1


def test_cli_state_file_roundtrip(tmp_path, capsys):
    assert main(["replay", "--profile", "pentium", "--format", "json", "mov_r_cs"]) == 0
    path = tmp_path / "pair.json"
    path.write_text(capsys.readouterr().out)
    assert main(["replay", "--profile", "pentium", "--format", "json", "--state", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["outcome"]) for r in doc["replays"]] == [("mov_r_cs", "confirmed")]


def _bad_state_file(tmp_path, edit):
    from pgvirt.emulator import states as S
    n = S.flat_state(0)
    d = S.flat_state(3, cr4=1 << st.CR4_TSD)       # as the pentium monitor runs it
    edit(n, d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"form": "sgdt_m", "native": n, "deprivileged": d}))
    return str(path)


@pytest.mark.parametrize("argv", [
    ["replay", "--profile", "pentium", "nosuch_form"],
    ["replay", "--profile", "nosuch"],
    ["replay", "--profile"],
    ["replay", "--profile", "pentium", "nop"],                 # not a violation
    ["replay", "--profile", "pentium", "--format", "xml"],
    ["replay", "--profile", "pentium", "--state", "/nonexistent/pair.json"],
])
def test_cli_bad_input_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pgvirt: error:")


@pytest.mark.parametrize("edit", [
    lambda n, d: n.update(cs=n["cs"] | 3),                      # CPL 0 with CS.RPL 3
    lambda n, d: d.update(ss_attr=d["ss_attr"] & ~0x60),        # SS DPL 0 at CPL 3
    lambda n, d: n.update(cr0=0x80000011),                      # paging
    lambda n, d: n.update(cpl=3, cs=n["cs"] | 3, ss=n["ss"] | 3),  # native not at CPL 0
    lambda n, d: d.update(nosuch=1),
    lambda n, d: d.update(sysflags=d["sysflags"] | 3 << st.IOPL_LO),   # IOPL 3: not deprivileged
    lambda n, d: d.update(cr4=0),                               # RDTSC left to the guest
])
def test_cli_impossible_hand_given_state_is_exit_2(tmp_path, capsys, edit):
    path = _bad_state_file(tmp_path, edit)
    assert main(["replay", "--profile", "pentium", "--state", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pgvirt: error:")


def test_cli_hand_given_pair_is_replayed_with_model_predictions(tmp_path, capsys):
    from pgvirt.emulator import states as S
    n = S.flat_state(0, eax=S.DATA)
    # the same guest as the monitor runs it: CPL 3 (CS/SS RPL and DPL), its GDT elsewhere
    d = dict(n, cpl=3, cs=n["cs"] | 3, ss=n["ss"] | 3, cs_attr=S.code_attr(3),
             ss_attr=S.data_attr(3), gdtr_base=0x2800, cr4=1 << st.CR4_TSD,
             **{f"{r}_attr": S.data_attr(3)
                                                         for r in ("ds", "es", "fs", "gs")})
    S.put(n["mem"], 0x2800, bytes(n["mem"][S.GDT_BASE + k] for k in range(S.GDT_ENTRIES * 8)))
    d["mem"] = n["mem"]
    path = tmp_path / "pair.json"
    path.write_text(json.dumps({"form": "sgdt_m", "native": n, "deprivileged": d}))
    assert main(["replay", "--profile", "pentium", "--format", "json", "--state", str(path)]) == 0
    r = json.loads(capsys.readouterr().out)["replays"][0]
    assert r["outcome"] == "confirmed" and "memory" in " ".join(r["model"]["criterion"])
