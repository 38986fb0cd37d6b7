"""The snapshot file format: round trips, recording and replay, and clear errors on bad files."""
import hashlib
import json
import os
import zipfile

import pytest

from mocks.scenarios import case_0x76
from pykd_ext.analyses import analyze
from pykd_ext.render.jsonout import render_json
from pykd_ext.targets.base import MemoryReadError, PfnRange, SearchUnavailable, SymbolNotFound
from pykd_ext.console import OutputError
from pykd_ext.targets.snapshot import (FORMAT_VERSION, MANIFEST_NAME, RecordingTarget, SnapshotError, SnapshotTarget,
                                       load_snapshot, save_snapshot)


@pytest.fixture
def scenario():
    return case_0x76("x64", "irp", noise_pages=4)


def test_round_trip_keeps_everything(tmp_path, scenario):
    path = str(tmp_path / "case.snap")
    save_snapshot(scenario.data, path)
    loaded = load_snapshot(path)
    original = scenario.data
    assert loaded.pages == original.pages and loaded.physical == original.physical
    assert loaded.bugcheck == original.bugcheck and loaded.symbols == original.symbols
    assert loaded.modules == original.modules and loaded.max_pfn == original.max_pfn
    assert (loaded.arch, loaded.pointer_size, loaded.build, loaded.complete) == ("x64", 8, 19045, True)


def test_the_manifest_is_readable_json_with_hex_addresses(tmp_path, scenario):
    path = str(tmp_path / "case.snap")
    save_snapshot(scenario.data, path)
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    assert manifest["format"] == "leakhunt-snapshot" and manifest["version"] == FORMAT_VERSION
    assert manifest["bugcheck"]["code"] == "0x76"
    assert manifest["symbols"]["nt!KiBugCheckDriver"].startswith("0xfffff803")


def test_writing_is_deterministic(tmp_path, scenario):
    first, second = str(tmp_path / "a.snap"), str(tmp_path / "b.snap")
    save_snapshot(scenario.data, first)
    save_snapshot(case_0x76("x64", "irp", noise_pages=4).data, second)
    assert open(first, "rb").read() == open(second, "rb").read()


def test_an_existing_file_is_not_overwritten_without_being_told(tmp_path, scenario):
    path = tmp_path / "case.snap"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        save_snapshot(scenario.data, str(path))
    assert path.read_bytes() == b"precious"
    save_snapshot(scenario.data, str(path), overwrite=True)
    assert load_snapshot(str(path)).bugcheck.code == 0x76


def test_record_then_replay_gives_the_same_report_byte_for_byte(tmp_path, scenario):
    recorder = RecordingTarget(SnapshotTarget(scenario.data))
    live = render_json(analyze(recorder))
    path = str(tmp_path / "recorded.snap")
    save_snapshot(recorder.snapshot(), path)
    recording = load_snapshot(path)
    # The searches replay from the recording: here one pass that also collected the IRP headers.
    assert not recording.complete and recording.header_searches
    ((values, pfn_range), (header_type, sizes)), = recording.header_searches
    assert values == (scenario.expected["process"],) and pfn_range is None and header_type == 6 and len(sizes) == 127
    hits, header_hits = recording.header_searches[((values, pfn_range), (header_type, sizes))]
    assert {h.virtual for h in header_hits} >= set(scenario.expected["irps"])
    assert len(recording.pages) < len(scenario.data.pages)  # only what the hunt read
    assert render_json(analyze(SnapshotTarget(recording))) == live


def test_a_recording_of_a_source_that_finds_values_only_replays_its_searches(tmp_path, scenario):
    class ValuesOnly(SnapshotTarget):
        finds_object_headers = False  # the debugger's !search

    recorder = RecordingTarget(ValuesOnly(scenario.data))
    live = render_json(analyze(recorder))
    path = str(tmp_path / "recorded.snap")
    save_snapshot(recorder.snapshot(), path)
    recording = load_snapshot(path)
    assert recording.searches and not recording.header_searches
    replay = SnapshotTarget(recording)
    assert not replay.finds_object_headers
    assert render_json(analyze(replay)) == live


def test_replaying_a_recording_answers_only_what_was_recorded(tmp_path, scenario):
    recorder = RecordingTarget(SnapshotTarget(scenario.data))
    analyze(recorder)
    target = SnapshotTarget(recorder.snapshot())
    with pytest.raises(SearchUnavailable):
        target.search_pointers([0x1234])
    with pytest.raises(MemoryReadError):
        target.read(0xFFFFF00000000000, 8)
    with pytest.raises(SymbolNotFound):
        target.symbol("nt!NoSuchSymbol")


def test_complete_snapshots_search_with_a_pfn_range(scenario):
    target = SnapshotTarget(scenario.data)
    process = scenario.expected["process"]
    everywhere = target.search_pointers([process])[process]
    assert everywhere and all(hit.physical is not None for hit in everywhere)
    first_pfn = everywhere[0].physical >> 12
    limited = target.search_pointers([process], PfnRange(first_pfn, first_pfn))[process]
    assert limited and all(hit.physical >> 12 == first_pfn for hit in limited)
    assert len(limited) < len(everywhere)


def _write_manifest(path, manifest, pages=b""):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MANIFEST_NAME, json.dumps(manifest))
        if pages:
            archive.writestr("pages.bin", pages)


@pytest.mark.parametrize("damage, message", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("empty", "not a leakhunt snapshot"),
    ("text", "not a leakhunt snapshot"),
    ("truncated", "truncated"),
    ("newer", "upgrade leakhunt"),
    ("not-json", "not valid JSON"),
    ("wrong-format", "format marker"),
    ("short-pages", "truncated or corrupt"),
    ("bad-number", "not a number"),
])
def test_bad_files_give_one_clear_error(tmp_path, scenario, damage, message):
    path = str(tmp_path / "bad.snap")
    good = str(tmp_path / "good.snap")
    save_snapshot(scenario.data, good)
    manifest = json.loads(zipfile.ZipFile(good).read(MANIFEST_NAME))
    if damage == "directory":
        path = str(tmp_path)
    elif damage == "empty":
        open(path, "wb").close()
    elif damage == "text":
        open(path, "w").write("hello, I am not a snapshot\n")
    elif damage == "truncated":
        open(path, "wb").write(open(good, "rb").read()[:-200])
    elif damage == "newer":
        _write_manifest(path, dict(manifest, version=FORMAT_VERSION + 1))
    elif damage == "not-json":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(MANIFEST_NAME, "{not json")
    elif damage == "wrong-format":
        _write_manifest(path, dict(manifest, format="something-else"))
    elif damage == "short-pages":
        _write_manifest(path, manifest, b"\0" * 4096)
    elif damage == "bad-number":
        manifest["bugcheck"]["parameters"][1] = "0xzz"
        _write_manifest(path, dict(manifest, pages=[]))
    with pytest.raises(SnapshotError, match=message) as raised:
        load_snapshot(path)
    assert "\n" not in str(raised.value)


def test_loading_never_modifies_the_file(tmp_path, scenario):
    path = str(tmp_path / "case.snap")
    save_snapshot(scenario.data, path)
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    os.chmod(path, 0o444)
    analyze(SnapshotTarget.open(path))
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before
