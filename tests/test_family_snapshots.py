"""The bundled snapshots of the 0x76 relatives: the CLI replays each to its truth, and a dump file of the
same memory gives the same findings as the replay (tests/test_cli.py checks the generator rebuilds them)."""
import json
import os

import pytest

from mocks import make_snapshots
from mocks.scenarios_family import case_0x153, case_0xcb
from pykd_ext.sources import open_dump
from pykd_ext.analyses import analyze
from pykd_ext.session import KernelSession
from pykd_ext.cli import main
from pykd_ext.console import EXIT_NO_SUSPECT, EXIT_SUSPECT
from pykd_ext.render.jsonout import render_json
from pykd_ext.targets.snapshot import SnapshotTarget

SNAPSHOTS = make_snapshots.SNAPSHOT_DIR
BUNDLED = dict(make_snapshots.BUNDLED_FAMILY)


def replay_json(capsys, name):
    code = main(["replay", os.path.join(SNAPSHOTS, name), "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_cli_replay_of_each_bundled_snapshot_finds_its_truth(capsys, name):
    scenario = BUNDLED[name]()
    code, report = replay_json(capsys, name)
    expected = scenario.expected["culprit_image"]
    found = report["suspects"][0]["image"] if report["suspects"] else None
    assert found == expected
    assert code == (EXIT_SUSPECT if expected else EXIT_NO_SUSPECT)
    assert report["schema"] == "1.0" and report["bugcheck"]["code"] == f"{scenario.data.bugcheck.code:#x}"
    for key in ("trackers", "tracked_locked_pages", "thread", "lock", "lock_entries"):
        assert key in report
    if "trackers" in scenario.expected and scenario.expected["trackers"] and report["trackers"]:
        assert int(report["trackers"][0]["address"], 16) == scenario.data.bugcheck.parameters[
            0 if scenario.data.bugcheck.code == 0xCB else 1]
    if scenario.expected.get("thread"):
        assert int(report["thread"]["address"], 16) == scenario.expected["thread"]


def test_bundled_json_keys_for_the_tracked_pages(capsys):
    scenario = BUNDLED["tracked-0x76-x64.snap"]()
    _, report = replay_json(capsys, "tracked-0x76-x64.snap")
    tracked = report["tracked_locked_pages"]
    assert tracked["source"] == "P4" and int(tracked["header"], 16) == scenario.expected["header"]
    assert sorted(int(t["address"], 16) for t in tracked["trackers"]) == scenario.expected["trackers"]
    assert tracked["by_module"][0]["image"] == "leakyflt.sys" and tracked["by_module"][0]["pages"] == 6
    frame = tracked["trackers"][0]["stack"][2]
    assert frame["symbol"] == "leakyflt+0x1a30" and frame["module"] == "leakyflt"


def test_bundled_json_keys_for_a_lock_entry(capsys):
    _, report = replay_json(capsys, "0x153-image-lock-x64.snap")
    assert report["lock"]["location"] == "image" and report["lock"]["section"] == ".data"
    assert report["lock_entries"][0]["role"].startswith("P2") and report["lock_entries"][0]["acquired"] is True
    assert report["thread"]["process_name"] == "System"


def test_replaying_twice_gives_the_same_json():
    target = SnapshotTarget(BUNDLED["0xcb-current-x64.snap"]().data)
    assert render_json(analyze(target)) == render_json(analyze(SnapshotTarget(target.data)))


# ---- the same findings from a dump file ----------------------------------------------------------

def findings(report):
    return {
        "suspects": [(s.driver, s.image, s.confidence, list(s.evidence)) for s in report.suspects],
        "trackers": [t.as_dict() for t in report.trackers],
        "tracked": report.tracked_pages.as_dict() if report.tracked_pages else None,
        "mdls": [m.as_dict() for m in report.mdls],
        "irps": [i.address for i in report.irps],
        "thread": report.thread.as_dict() if report.thread else None,
        "lock": report.lock.as_dict() if report.lock else None,
        "entries": [e.as_dict() for e in report.lock_entries],
        "facts": [(f.label, f.value) for f in report.facts if not f.label.startswith("nt!")],
    }


@pytest.mark.parametrize("build", [lambda: case_0xcb("x64", "current", noise_pages=2),
                                   lambda: case_0x153("x64", "image-lock", noise_pages=2)],
                         ids=["0xcb-current", "0x153-image-lock"])
def test_a_dump_file_gives_the_findings_of_the_replay(tmp_path, build):
    dumpwriter = pytest.importorskip("mocks.dumpwriter")
    scenario = build()
    path = str(tmp_path / "MEMORY.DMP")
    dumpwriter.write_dump(scenario.data, path)
    target = open_dump(path)
    try:
        symbols = {"nt!KiBugCheckDriver": scenario.data.symbols["nt!KiBugCheckDriver"]}
        from_dump = analyze(KernelSession(target, addresses=symbols))
    finally:
        target.close()
    replayed = analyze(SnapshotTarget(scenario.data))
    assert from_dump.build == replayed.build
    assert findings(from_dump) == findings(replayed)
    assert from_dump.suspects and from_dump.suspects[0].image == scenario.expected["culprit_image"]


@pytest.mark.parametrize("build", [lambda: case_0xcb("x64", "current", noise_pages=1),
                                   lambda: case_0x153("x64", "image-lock", 26100, noise_pages=1),
                                   lambda: BUNDLED["0x4e-07-x64.snap"]()],
                         ids=["0xcb-current", "0x153-26100", "0x4e-07"])
def test_a_recording_replays_to_the_same_report(build):
    from pykd_ext.targets.snapshot import RecordingTarget
    recorder = RecordingTarget(SnapshotTarget(build().data))
    original = render_json(analyze(recorder))
    replayed = render_json(analyze(SnapshotTarget(recorder.snapshot())))
    assert replayed == original
