"""Notebook 06's helpers without a front end: the lock-step view, its screens, the frame slider."""

from __future__ import annotations

import pytest

from helpers import INVADERS, need
from pgvirt.notebook import monitors as mon


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return mon.demo_guest(str(tmp_path_factory.mktemp("demo")))


@pytest.fixture(scope="module")
def view(guest):
    return mon.compare(guest, input=mon.demo_keys())


def test_demo_name_is_the_demonstration_guest_with_its_keys(view):
    again = mon.compare(mon.DEMO)
    assert again is mon.compare("demo")                    # one comparison, shared by the cells
    assert again.verdicts == view.verdicts
    assert mon.screens("demo").size == again.screens().size


def test_lockstep_view_names_verdicts_and_explanations(view):
    assert view.verdicts == {"trap": "diverged", "paravirt": "match", "scan": "match", "vtx": "match"}
    html = view._repr_html_()
    assert "diverged" in html and "UNEXPLAINED" not in html and "data:image/png;base64," in html
    (trap,) = [v for v in view.comparison.verdicts if v.monitor == "trap"]
    assert trap.divergence.explanation["form"] in html
    assert "slowdown" in html and all(m in html for m in ("native", "trap", "paravirt", "scan", "vtx"))
    assert "exit_reasons" in html and "external_interrupt" in html


def test_screens_put_every_run_side_by_side(view):
    img = view.screens()
    one = mon.S.render(view.finals()["native"])
    assert img.width >= 5 * one.width and set(view.marks()) == {"trap"}


def test_divergence_shows_the_state_and_the_verdict(view):
    text = str(mon.divergence(view, "trap"))
    assert "FIRST DIVERGENCE" in text and "explained:" in text and "state before" in text
    assert "no divergence" in str(mon.divergence(view, "scan"))
    assert "no divergence" in str(mon.divergence(view, "vtx"))
    assert "not compared" in str(mon.divergence(view, "native"))


def test_vtx_with_a_control_switched_off_diverges_and_names_it(guest):
    off = {"base": "default", "primary": {"use_io_bitmaps": False}}
    view = mon.compare(guest, ["vtx"], input=mon.demo_keys(), controls=off)
    assert view.verdicts == {"vtx": "diverged"}
    text = str(mon.divergence(view, "vtx"))
    assert "out 0xe9, al" in text and "use_io_bitmaps" in text and "UNEXPLAINED" not in text


def test_frame_slider_shows_each_frame(guest):
    box = mon.frames(guest, "native", input=mon.demo_keys())
    assert len(box.pngs) >= 2 and box.image.value == box.pngs[-1]
    box.slider.value = 0
    assert box.image.value == box.pngs[0] != box.pngs[-1]


@pytest.mark.guests
def test_grub_invaders_matches_under_every_monitor():
    need(INVADERS)
    view = mon.compare(str(INVADERS), steps=100_000, input="left*3 space right*6 space")
    assert view.verdicts == {"trap": "match", "paravirt": "match", "scan": "match", "vtx": "match"}
