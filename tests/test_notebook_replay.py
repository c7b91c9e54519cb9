"""The replay notebook's helpers, driven without a front end."""

from pgvirt.notebook import replay as nb


def test_replay_view_shows_both_runs_with_the_difference():
    v = nb.replay("mov_r_cs", "pentium")
    assert v.outcome == "confirmed"
    rows = {r[0]: r for r in v.rows()}
    # MOV EAX, CS: the two runs end with different EAX (the RPL is the CPL), highlighted
    assert rows["eax"][5] is True and rows["eax"][2] != rows["eax"][4]
    html = v._repr_html_()
    assert "confirmed" in html and "mov eax, cs" in html and "#fff3b0" in html


def test_explorer_callbacks_update_their_own_values():
    box = nb.explorer("pentium", "popfd")
    first = box.view.value
    assert "popfd" in first
    box.picker.value = "sgdt_m"
    assert box.view.value != first and "sgdt" in box.view.value
    assert box.summary.value == ""
    box.button.click()
    summary = box.summary.value
    assert "violations replayed" in summary and "mismatch" not in summary
    for name in nb.violations("pentium"):
        assert name in summary
