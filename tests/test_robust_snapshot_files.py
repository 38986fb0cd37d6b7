"""Hostile snapshot files: every damaged file is refused with one clear SnapshotError, or loads into
data the analysis can run on. Targeted cases for each class of damage found, then properties over
random damage (truncation, flipped bytes, ZIP header fields, manifest edits).

``LEAKHUNT_FUZZ_EXAMPLES`` scales the number of hypothesis examples (default: a fast CI run).
"""
import io
import json
import os
import tracemalloc
import zipfile
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutators import (DELETE, HOSTILE_VALUES, edit_manifest, flip_bytes, manifest_json, manifest_paths,
                           set_zip_field, snapshot_bytes, snapshot_members, truncate, zip_fields)
from mocks.scenarios import case_0x76
from pykd_ext.analyses import analyze
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_text
from pykd_ext.targets.snapshot import (MANIFEST_NAME, PAGES_NAME, RecordingTarget, SnapshotData, SnapshotError,
                                       SnapshotTarget, load_snapshot)

EXAMPLES = int(os.environ.get("LEAKHUNT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _base(arch="x64", kind="irp", recording=False):
    data = case_0x76(arch, kind, noise_pages=2).data
    if recording:
        recorder = RecordingTarget(SnapshotTarget(data))
        analyze(recorder)
        data = recorder.snapshot()
    return data


BASES = {(arch, recording): snapshot_members(_base(arch, recording=recording))
         for arch in ("x64", "x86") for recording in (False, True)}


def _write(tmp_path, raw, name="case.snap"):
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


def _load_or_refuse(path):
    """The contract of load_snapshot: data the analysis can run on, or one clear SnapshotError."""
    try:
        data = load_snapshot(path)
    except SnapshotError as error:
        message = str(error)
        assert message and "\n" not in message and "Traceback" not in message
        return None
    assert isinstance(data, SnapshotData)
    report = analyze(SnapshotTarget(data))
    render_text(report, verbose=True)
    json.loads(render_json(report))
    return data


# ---- targeted: one test per class of damage ---------------------------------------------------

def _members_of(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return {name: archive.getinfo(name) for name in archive.namelist()}


@pytest.mark.parametrize("member", [MANIFEST_NAME, PAGES_NAME])
def test_a_corrupt_deflate_stream_is_a_snapshot_error(tmp_path, member):
    manifest, pages = BASES[("x64", False)]
    raw = snapshot_bytes(manifest, pages)
    info = _members_of(raw)[member]
    # The compressed data starts after the local header (30 bytes + name + extra).
    local = info.header_offset
    name_length, extra_length = int.from_bytes(raw[local + 26:local + 28], "little"), \
        int.from_bytes(raw[local + 28:local + 30], "little")
    start = local + 30 + name_length + extra_length
    damaged = bytearray(raw)
    damaged[start:start + 8] = b"\xff" * 8  # an invalid deflate block header
    path = _write(tmp_path, bytes(damaged))
    with pytest.raises(SnapshotError, match="corrupt"):
        load_snapshot(path)


def test_an_encrypted_member_is_a_snapshot_error(tmp_path):
    manifest, pages = BASES[("x64", False)]
    raw = snapshot_bytes(manifest, pages)
    for signature, flags_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = raw.find(signature)
        while start >= 0:
            raw = set_zip_field(raw, (start + flags_offset, 2), 1)  # general purpose bit 0: encrypted
            start = raw.find(signature, start + 1)
    with pytest.raises(SnapshotError, match="encrypted"):
        load_snapshot(_write(tmp_path, raw))


def test_a_deeply_nested_manifest_is_a_snapshot_error(tmp_path):
    raw = snapshot_bytes(b"[" * 200000 + b"]" * 200000, b"")
    with pytest.raises(SnapshotError, match="nested too deeply"):
        load_snapshot(_write(tmp_path, raw))


def test_a_manifest_without_a_page_list_loads_with_no_memory(tmp_path):
    manifest, _ = BASES[("x64", False)]
    data = load_snapshot(_write(tmp_path, snapshot_bytes(edit_manifest(manifest, ("pages",), DELETE), b"")))
    assert data.pages == {}
    report = analyze(SnapshotTarget(data))
    assert not report.suspects


@pytest.mark.parametrize("arch, pointer_size", [("x64", 8.0), ("x64", 4), ("x86", 8), ("arm64", 4), ("x86", "4")])
def test_a_pointer_size_that_does_not_fit_the_architecture_is_refused(tmp_path, arch, pointer_size):
    manifest, pages = BASES[("x64", False)]
    manifest = edit_manifest(edit_manifest(manifest, ("target", "arch"), arch), ("target", "pointer_size"),
                             pointer_size)
    with pytest.raises(SnapshotError, match="pointer size"):
        load_snapshot(_write(tmp_path, snapshot_bytes(manifest, pages)))


def test_a_bug_check_code_wider_than_32_bits_is_refused(tmp_path):
    manifest, pages = BASES[("x64", False)]
    manifest = edit_manifest(manifest, ("bugcheck", "code"), "0x100000076")
    with pytest.raises(SnapshotError, match="bug check code"):
        load_snapshot(_write(tmp_path, snapshot_bytes(manifest, pages)))


def test_an_x86_bug_check_parameter_wider_than_a_pointer_is_refused(tmp_path):
    manifest, pages = BASES[("x86", False)]
    manifest = edit_manifest(manifest, ("bugcheck", "parameters", 1), "0xffffa58a1c000000")
    with pytest.raises(SnapshotError, match="parameter"):
        load_snapshot(_write(tmp_path, snapshot_bytes(manifest, pages)))


def test_searching_for_a_value_wider_than_a_pointer_finds_nothing():
    data = _base("x86")
    target = SnapshotTarget(data)
    process = data.bugcheck.parameters[1]
    wide = process | (1 << 40)  # the same low 32 bits: a masked search would wrongly "find" it
    assert target.search_pointers([wide]) == {wide: []}
    assert target.search_pointers([process])[process]


@pytest.mark.parametrize("path, value", [
    (("types", "nt!_MDL"), {"size": 0x30, "fields": {"Next": [2 ** 40, 8]}}),
    (("types", "nt!_MDL"), {"size": 2 ** 40, "fields": {}}),
    (("types", "nt!_MDL"), {"size": 0x30, "fields": {"Next": [0, 2 ** 33]}}),
])
def test_absurd_type_layouts_are_refused(tmp_path, path, value):
    manifest, pages = BASES[("x64", False)]
    with pytest.raises(SnapshotError, match="out of range"):
        load_snapshot(_write(tmp_path, snapshot_bytes(edit_manifest(manifest, path, value), pages)))


def test_a_page_store_larger_than_the_page_list_is_refused_before_it_is_inflated(tmp_path):
    """A ZIP bomb: 64 MiB of zeros in a few kilobytes, for a manifest that lists one page."""
    manifest, pages = BASES[("x64", False)]
    manifest = dict(manifest, pages=manifest["pages"][:1])
    path = tmp_path / "bomb.snap"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_NAME, json.dumps(manifest))
        with archive.open(PAGES_NAME, "w") as member:
            zeros = bytes(1 << 20)
            for _ in range(64):
                member.write(zeros)
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotError, match="page store"):
            load_snapshot(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# ---- properties over random damage ------------------------------------------------------------

bases = st.sampled_from(sorted(BASES))


@FUZZ
@given(base=bases, fraction=st.floats(0, 1, exclude_max=True))
def test_a_truncated_snapshot_is_refused_or_analyzed(tmp_path_factory, base, fraction):
    raw = snapshot_bytes(*BASES[base])
    path = _write(tmp_path_factory.mktemp("t"), truncate(raw, int(len(raw) * fraction)))
    assert _load_or_refuse(path) is None  # a truncated ZIP loses its central directory


@FUZZ
@given(base=bases, flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=8))
def test_flipped_bytes_are_refused_or_analyzed(tmp_path_factory, base, flips):
    raw = snapshot_bytes(*BASES[base])
    _load_or_refuse(_write(tmp_path_factory.mktemp("f"), flip_bytes(raw, flips)))


@FUZZ
@given(base=bases, data=st.data())
def test_damaged_zip_headers_are_refused_or_analyzed(tmp_path_factory, base, data):
    raw = snapshot_bytes(*BASES[base])
    fields = zip_fields(raw)
    for _ in range(data.draw(st.integers(1, 3), label="fields damaged")):
        field = data.draw(st.sampled_from(fields), label="field")
        value = data.draw(st.one_of(st.sampled_from([0, 1, 8, 12, 14, 99, 0xFFFF, 0xFFFFFFFF, 2 ** 64 - 1]),
                                    st.integers(0, 2 ** 64 - 1)), label="value")
        raw = set_zip_field(raw, field, value)
    _load_or_refuse(_write(tmp_path_factory.mktemp("z"), raw))


@FUZZ
@given(base=bases, data=st.data())
def test_hostile_manifest_values_are_refused_or_analyzed(tmp_path_factory, base, data):
    manifest, pages = BASES[base]
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = manifest_paths(manifest)
        path = data.draw(st.sampled_from(paths), label="path")
        value = data.draw(st.one_of(st.sampled_from(HOSTILE_VALUES + [DELETE]),
                                    st.integers(-2 ** 70, 2 ** 70), st.text(max_size=12)), label="value")
        manifest = edit_manifest(manifest, path, value)
    raw = snapshot_bytes(manifest_json(manifest), pages)
    _load_or_refuse(_write(tmp_path_factory.mktemp("m"), raw))


@FUZZ
@given(base=bases, version=st.one_of(st.integers(-2 ** 64, 2 ** 64), st.floats(allow_nan=True),
                                     st.text(max_size=4), st.none(), st.booleans()))
def test_unknown_versions_are_refused(tmp_path_factory, base, version):
    manifest, pages = BASES[base]
    raw = snapshot_bytes(manifest_json(edit_manifest(manifest, ("version",), version)), pages)
    path = _write(tmp_path_factory.mktemp("v"), raw)
    if version == 1 and type(version) is int:
        assert _load_or_refuse(path) is not None
    else:
        with pytest.raises(SnapshotError, match="version"):
            load_snapshot(path)
