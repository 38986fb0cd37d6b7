"""Triage inputs: listing, file types never opened, dump times, default timeouts.

Also the helpers the other triage tests share (generated dumps, a folder of faulty inputs).
"""
import hashlib
import io
import os
import shutil
import struct
from datetime import datetime, timezone

import pytest

from mocks.dumpwriter import write_dump
from mocks.scenarios import case_0x76
from pykd_ext.fleet.inputs import DEFAULT_GLOBS, collect_inputs, describe, read_path_list, timeout_for_size
from pykd_ext.sources import open_dump
from pykd_ext.targets.dumpheader import H64_SYSTEM_TIME, read_dump_header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOTS = os.path.join(ROOT, "mocks", "snapshots")
FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


def write_case(path, kind="irp", leaked=1, when=None):
    """A bitmap kernel dump of a 0x76 case; ``when`` (a UTC datetime) sets the header's crash time."""
    write_dump(case_0x76("x64", kind, leaked=leaked, noise_pages=8).data, path)
    if when is not None:
        ticks = int((when - FILETIME_EPOCH).total_seconds()) * 10_000_000
        with open(path, "r+b") as handle:
            handle.seek(H64_SYSTEM_TIME)
            handle.write(struct.pack("<Q", ticks))
    return path


def copy_snapshot(name, folder, as_name=None):
    target = os.path.join(folder, as_name or name)
    shutil.copyfile(os.path.join(SNAPSHOTS, name), target)
    return target


def fingerprints(folder):
    """Content hash, size, mtime and mode of every regular file under ``folder``."""
    found = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:  # the tests run as root, or modes allow it
                digest = hashlib.sha256(handle.read()).hexdigest()
            found[path] = (digest, info.st_size, info.st_mtime_ns, info.st_mode)
    return found


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


def test_folders_are_walked_recursively_with_case_blind_globs(folder):
    os.makedirs(os.path.join(folder, "week1", "deep"))
    open(os.path.join(folder, "MEMORY.DMP"), "wb").close()
    open(os.path.join(folder, "week1", "deep", "case.snap"), "wb").close()
    open(os.path.join(folder, "week1", "notes.txt"), "wb").close()
    listed = collect_inputs([folder], DEFAULT_GLOBS)
    assert sorted(os.path.relpath(i.path, folder) for i in listed) == ["MEMORY.DMP", os.path.join("week1", "deep", "case.snap")]
    assert all(not i.problem and i.size == 0 and i.mtime for i in listed)
    only_txt = collect_inputs([folder], ["*.TXT"])
    assert [os.path.basename(i.path) for i in only_txt] == ["notes.txt"]


def test_a_file_named_explicitly_is_taken_whatever_its_name_and_listed_once(folder):
    path = os.path.join(folder, "crash.bin")
    open(path, "wb").close()
    listed = collect_inputs([path, path, os.path.relpath(path)], DEFAULT_GLOBS)
    assert [i.path for i in listed] == [path]


def test_directories_fifos_and_missing_paths_get_a_problem_and_are_never_opened(folder):
    os.mkdir(os.path.join(folder, "x.dmp"))
    os.mkfifo(os.path.join(folder, "y.dmp"))  # opening it for reading would block: listing must not
    listed = {os.path.basename(i.path): i for i in collect_inputs([folder, os.path.join(folder, "gone.dmp")])}
    assert "directory" in listed["x.dmp"].problem
    assert "named pipe" in listed["y.dmp"].problem and "not opened" in listed["y.dmp"].problem
    assert "no such file" in listed["gone.dmp"].problem
    assert listed["x.dmp"].size is None and listed["gone.dmp"].mtime is None


def test_a_symbolic_link_is_described_by_what_it_points_to(folder):
    os.mkfifo(os.path.join(folder, "pipe"))
    os.symlink(os.path.join(folder, "pipe"), os.path.join(folder, "link.dmp"))
    assert "named pipe" in describe(os.path.join(folder, "link.dmp")).problem


def test_path_lists_skip_blank_lines_and_keep_spaces():
    assert read_path_list(io.StringIO("/a/b.dmp\n\n  \n/c/with space.dmp\r\n")) == ["/a/b.dmp", "/c/with space.dmp"]


def test_the_crash_time_comes_from_the_dump_header(folder):
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    target = open_dump(write_case(os.path.join(folder, "a.dmp"), when=when))
    try:
        assert target.crash_time == "2026-03-04T05:06:07Z"
    finally:
        target.close()
    absurd = write_case(os.path.join(folder, "absurd.dmp"))
    with open(absurd, "r+b") as handle:
        handle.seek(H64_SYSTEM_TIME)
        handle.write(b"\xff" * 8)  # a FILETIME past any date Python can hold
    with open(absurd, "rb") as handle:
        assert read_dump_header(handle, absurd, os.path.getsize(absurd)).crash_time is None


def test_default_timeout_grows_with_the_size():
    assert timeout_for_size(None) == timeout_for_size(0) < timeout_for_size(1 << 30) < timeout_for_size(16 << 30)
