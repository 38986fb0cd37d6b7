"""The garbage collector paused while an analysis or a renderer runs, and restored as it was."""
from __future__ import annotations

import gc
import os

import pytest

import pykd_ext.analyses as analyses
from pykd_ext.analyses import analyze
from pykd_ext.analyses.common import SuspectBoard
from pykd_ext.evidence import IRP_CURRENT_LOCATION
from pykd_ext.collector import collector_paused
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_text
from pykd_ext.report import HIGH
from pykd_ext.targets.snapshot import SnapshotTarget

SNAPSHOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mocks", "snapshots",
                        "0x76-irp-x64.snap")


@pytest.fixture
def collector_state():
    """Whatever a test does to the collector, the next test finds it as it was."""
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_inside_and_restored_after(collector_state, enabled):
    gc.enable() if enabled else gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled


def test_the_collector_is_restored_when_the_block_raises(collector_state):
    gc.enable()
    with pytest.raises(KeyboardInterrupt):
        with collector_paused():
            raise KeyboardInterrupt
    assert gc.isenabled()


def test_an_analysis_runs_with_the_collector_paused_and_it_and_the_renderers_leave_it_on(collector_state, monkeypatch):
    gc.enable()
    seen = []
    original = analyses.ANALYSES[0x76]

    def spy(context):
        seen.append(("analysis", gc.isenabled()))
        original[0](context)

    monkeypatch.setitem(analyses.ANALYSES, 0x76, (spy, original[1]))
    target = SnapshotTarget.open(SNAPSHOT)
    try:
        report = analyze(target)
    finally:
        target.close()
    assert seen == [("analysis", False)] and gc.isenabled()
    assert report.suspects and gc.isenabled()
    assert render_json(report) and render_text(report, verbose=True) and gc.isenabled()


def test_the_same_evidence_is_claimed_once_however_often_it_is_added():
    board = SuspectBoard()
    for _ in range(3):
        for irp in range(5):
            board.add("\\Driver\\a", "a.sys", HIGH, 10, f"IRP {irp} holds MDL 0x1000", mdls=[0x1000],
                      kind=IRP_CURRENT_LOCATION)
    (suspect,) = board.ranked()
    assert suspect.evidence == [f"IRP {irp} holds MDL 0x1000" for irp in range(5)]
    assert suspect.score == 50
