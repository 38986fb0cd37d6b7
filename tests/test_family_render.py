"""Text and DML sections for trackers, threads, locks and lock entries: links on what WinDbg can act on."""
import re

from mocks.scenarios_family import case_0x76_tracked, case_0x153, case_0xcb
from pykd_ext.analyses import analyze
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.targets.snapshot import SnapshotTarget
from tests.test_render import strip_links


def report_for(scenario):
    return analyze(SnapshotTarget(scenario.data))




def test_trackers_link_to_pool_and_their_frames_to_ln():
    scenario = case_0xcb("x64", "current", noise_pages=1)
    report = report_for(scenario)
    dml = render_dml(report)
    tracker = scenario.data.bugcheck.parameters[0]
    frame = report.trackers[0].stack[2]
    assert f'<link cmd="!pool {tracker:#x} 2">' in dml
    assert f'<link cmd="ln {frame.address:#x}">leakyflt+0x1a30</link>' in dml
    assert '<link cmd="lmvm leakyflt">leakyflt.sys</link>' in dml
    text = render_text(report)
    assert "LOCK TRACKERS" in text and "TRACKED LOCKED PAGES" in text and "MmLk" in text
    assert strip_links(dml) == text


def test_tracked_pages_section_groups_by_module():
    scenario = case_0x76_tracked("x64", "P4", noise_pages=1)
    text = render_text(report_for(scenario))
    section = text.split("TRACKED LOCKED PAGES")[1].split("\n\n")[0]
    assert "(P4)" in section and "3 MDL(s), 6 page(s)" in section
    assert re.search(r"leakyflt\.sys\s+3\s+6", section)


def test_thread_lock_and_entries_link_to_their_commands():
    scenario = case_0x153("x64", "image-lock", noise_pages=1)
    report = report_for(scenario)
    dml = render_dml(report)
    thread, entry = scenario.expected["thread"], scenario.expected["entry"]
    lock, process = scenario.expected["lock"], scenario.expected["process"]
    assert f'<link cmd="!thread {thread:#x}">' in dml
    assert f'<link cmd="!process {process:#x} 1">' in dml
    assert f'<link cmd="ln {lock:#x}">' in dml
    assert f'<link cmd="dt nt!_KLOCK_ENTRY {entry:#x}">' in dml
    assert f'<link cmd="ln {scenario.expected["start"]:#x}">nt+' in dml
    text = render_text(report)
    assert "THREAD" in text and "a global of leakyflt.sys, section .data" in text and "LOCK ENTRIES" in text
    assert strip_links(dml) == text


def test_pool_lock_links_to_its_block():
    scenario = case_0x153("x64", "pool-lock", noise_pages=1)
    report = report_for(scenario)
    dml = render_dml(report)
    block = report.lock.pool_block
    assert f'<link cmd="!pool {scenario.expected["lock"]:#x} 2">' in dml
    assert f'<link cmd="!pool {block:#x} 2">' in dml and "(tag Lkfl)" in dml


def test_0xcb_counts_the_pages_of_p4():
    text = render_text(report_for(case_0xcb("x64", "legacy", noise_pages=1)))
    assert "expected (P4): 2   accounted for by locked MDLs found: 2" in text
