"""The leakhunt command on hostile input: every failure is one line on stderr and a documented exit code,
never a traceback; files given to it are opened read-only and stay byte-identical; ``--record`` never
overwrites without ``--force`` and never leaves a partial file behind."""
import contextlib
import hashlib
import io
import json
import mmap
import os
import random
import subprocess
import sys
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutators import (DELETE, HOSTILE_VALUES, clone, edit_manifest, field_address, flip_bytes, manifest_json,
                           manifest_paths, poke, scenario_objects, snapshot_bytes, snapshot_members, truncate)
from mocks.dumpwriter import write_dump
from mocks.scenarios import case_0x76
from pykd_ext.sources import open_dump
from pykd_ext.cli import main, parse_symbols
from pykd_ext.console import (EXIT_INPUT, EXIT_NO_HUNT, EXIT_NO_SUSPECT, EXIT_SUSPECT, EXIT_USAGE, OutputError,
                              UsageError)
from pykd_ext.layouts import IMAGE_FILE_NAME_LENGTH, builtin_layout
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.analyses import analyze
from pykd_ext.targets.base import Module
from pykd_ext.targets.snapshot import SnapshotTarget, load_snapshot, save_snapshot
from pykd_ext.symbols.base import SymbolFileError
from pykd_ext.symbols.files import open_symbol_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = int(os.environ.get("LEAKHUNT_FUZZ_EXAMPLES", "60"))
# What a report or a refused input may exit with; 5 (internal error) and tracebacks never.
DOCUMENTED = {EXIT_SUSPECT, EXIT_NO_SUSPECT, EXIT_INPUT, EXIT_NO_HUNT}
SCENARIO = case_0x76("x64", "irp", noise_pages=2)
MEMBERS = snapshot_members(SCENARIO.data)


def run(argv, stdout=None):
    """main(argv) with its own stdout/stderr; returns (exit code, stdout text, stderr text)."""
    out = stdout or io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if isinstance(out, io.TextIOWrapper):
        out.flush()
        return code, out.buffer.getvalue().decode(out.encoding), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def assert_one_clear_line(code, err):
    assert code in DOCUMENTED, (code, err)
    assert "Traceback" not in err
    if code == EXIT_INPUT:
        assert err.count("\n") == 1 and err.startswith("leakhunt: error: ")
    else:
        assert err == ""


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# ---- any damaged snapshot: a documented exit code and at most one line --------------------------

@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), command=st.sampled_from([["replay"], ["replay", "--format", "json"], ["replay", "-v"],
                                                ["inspect"]]))
def test_a_damaged_snapshot_gives_a_documented_exit_code_and_one_line(tmp_path, data, command):
    manifest, pages = MEMBERS
    kind = data.draw(st.sampled_from(["truncate", "flip", "manifest"]), label="damage")
    if kind == "manifest":
        path = data.draw(st.sampled_from(manifest_paths(manifest)), label="path")
        value = data.draw(st.sampled_from(HOSTILE_VALUES + [DELETE]), label="value")
        raw = snapshot_bytes(manifest_json(edit_manifest(manifest, path, value)), pages)
    else:
        raw = snapshot_bytes(manifest, pages)
        if kind == "truncate":
            raw = truncate(raw, data.draw(st.integers(0, len(raw) - 1), label="length"))
        else:
            raw = flip_bytes(raw, data.draw(st.lists(st.tuples(st.integers(0, len(raw)), st.integers(1, 255)),
                                                     min_size=1, max_size=6), label="flips"))
    snap = tmp_path / f"case-{random.getrandbits(32)}.snap"
    snap.write_bytes(raw)
    code, out, err = run([command[0], str(snap)] + command[1:])
    assert_one_clear_line(code, err)


def test_hostile_inputs_through_the_real_command_never_show_a_traceback(tmp_path):
    """The same contract end to end, in a fresh interpreter (as a user or a CI job runs it)."""
    manifest, pages = MEMBERS
    cases = {
        "random.snap": bytes(random.Random(1).getrandbits(8) for _ in range(5000)),
        "truncated.snap": truncate(snapshot_bytes(manifest, pages), 1500),
        "nested.snap": snapshot_bytes(b"[" * 100000 + b"]" * 100000, b""),
        "wrong-types.snap": snapshot_bytes(manifest_json(edit_manifest(manifest, ("target",), [1, 2])), pages),
        "empty.snap": b"",
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        for command in ("replay", "inspect"):
            result = subprocess.run([sys.executable, "-m", "pykd_ext", command, str(tmp_path / name)],
                                    cwd=ROOT, capture_output=True, text=True)
            assert result.returncode == EXIT_INPUT, (name, result.stderr)
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, (name, result.stderr)


# ---- targeted ------------------------------------------------------------------------------------

def _renamed_driver(name):
    """The irp case with the culprit's DriverName rewritten in place (same length, so it fits)."""
    data = clone(SCENARIO.data)
    driver = scenario_objects(data, SCENARIO.expected)["_DRIVER_OBJECT"][0]
    string = field_address(data, "_DRIVER_OBJECT", driver, "DriverName")
    buffer = SnapshotTarget(data).read_pointer(string + 8)
    assert poke(data, buffer, name.encode("utf-16-le"))
    return data


def test_a_name_the_console_cannot_encode_is_escaped_not_fatal(tmp_path):
    name = "\\Driver\\leaky\u2603lt"  # a snowman: not in cp1252
    assert len(name) == len(SCENARIO.expected["culprit"])
    path = str(tmp_path / "snowman.snap")
    save_snapshot(_renamed_driver(name), path)
    console = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    code, out, err = run(["replay", path], stdout=console)
    assert code == EXIT_SUSPECT and err == ""
    assert "\\Driver\\leaky\\u2603lt" in out


@pytest.mark.skipif(os.name != "posix", reason="file names that are not UTF-8 are a POSIX matter")
def test_a_file_name_that_is_not_utf8_is_shown_escaped(tmp_path):
    path = os.path.join(os.fsencode(str(tmp_path)), b"case-\xff.snap")
    save_snapshot(SCENARIO.data, os.fsdecode(path))
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    code, out, err = run(["inspect", os.fsdecode(path)], stdout=strict)
    assert code == 0 and "case-\\udcff.snap" in out


def test_an_error_about_a_file_name_with_a_line_break_is_one_line(tmp_path):
    code, out, err = run(["replay", str(tmp_path / "two\nlines\x1b[2J.snap")])
    assert code == EXIT_INPUT and err.count("\n") == 1 and "\x1b" not in err
    assert "two\\nlines\\x1b[2J.snap" in err


def test_control_characters_from_memory_never_reach_the_terminal(tmp_path):
    data = clone(SCENARIO.data)
    layout = builtin_layout("_EPROCESS", 8, data.build)
    name = b"\x1b]0;owned\x07\x1b[2J"[:IMAGE_FILE_NAME_LENGTH]
    poke(data, SCENARIO.expected["process"] + layout.offsets["ImageFileName"], name)
    path = str(tmp_path / "escape.snap")
    save_snapshot(data, path)
    code, out, err = run(["replay", path, "-v"])
    assert code == EXIT_SUSPECT and "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07" in out


def test_a_line_break_in_a_module_name_does_not_break_a_table():
    data = clone(SCENARIO.data)
    data.modules = [Module("ufil\nter", m.image, m.base, m.size) if m.image == "ufilter.sys" else m
                    for m in data.modules]
    report = analyze(SnapshotTarget(data))
    for rendered in (render_text(report), render_dml(report)):
        assert "ufil\\nter+0x1a30" in rendered
        assert not any(line.startswith("ter+") for line in rendered.splitlines())


@pytest.mark.parametrize("content, message", [("[" * 100000 + "]" * 100000, "not valid JSON"),
                                              ('{"nt!KiBugCheckDriver": "0x1ffffffffffffffff"}', "bad symbol"),
                                              ('{"nt!KiBugCheckDriver": [1, 2]}', "bad symbol"),
                                              (b"\xff\xfe{}", "not valid JSON")],
                         ids=["nested", "wider-than-64-bits", "a-list", "not-utf8"])
def test_a_hostile_symbol_file_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "symbols.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(SymbolFileError, match=message):
        open_symbol_file(str(path))
    code, out, err = run(["analyze", str(tmp_path / "MEMORY.DMP"), "--symbols", str(path)])
    assert code == EXIT_INPUT and err.count("\n") == 1 and message in err


def test_a_symbol_wider_than_64_bits_is_a_usage_error():
    with pytest.raises(UsageError):
        parse_symbols(["nt!KiBugCheckDriver=0x10000000000000000"])


# ---- files stay read-only and byte-identical -----------------------------------------------------

class _OpenAudit:
    """Records every open() and mmap of the process (sys.addaudithook cannot be removed: it is
    installed once and only records while ``watching`` is set)."""

    installed = False
    watching = None

    @classmethod
    def start(cls):
        if not cls.installed:
            sys.addaudithook(cls._hook)
            cls.installed = True
        cls.watching = []
        return cls.watching

    @classmethod
    def stop(cls):
        cls.watching = None

    @classmethod
    def _hook(cls, event, args):
        if cls.watching is None:
            return
        if event == "open":
            cls.watching.append(("open", args[0], args[1], args[2]))
        elif event == "mmap.__new__":
            cls.watching.append(("mmap", args[0], args[2], None))


def _writes_to(events, path):
    wanted = os.path.realpath(path)
    bad = []
    for kind, target, mode, flags in events:
        if kind == "mmap":
            if mode != mmap.ACCESS_READ:
                bad.append((kind, target, mode))
            continue
        if not isinstance(target, (str, bytes)) or os.path.realpath(os.fsdecode(target)) != wanted:
            continue
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC)):
            bad.append((kind, target, mode, flags))
    return bad


@pytest.fixture
def audit():
    events = _OpenAudit.start()
    yield events
    _OpenAudit.stop()


@pytest.mark.parametrize("command", [["replay"], ["replay", "--format", "json", "-v"], ["inspect"]])
def test_a_snapshot_is_only_read(tmp_path, audit, command):
    path = str(tmp_path / "case.snap")
    save_snapshot(SCENARIO.data, path)
    before = digest(path)
    audit.clear()
    run([command[0], path] + command[1:])
    assert any(kind == "open" and os.fsdecode(target) == path for kind, target, _, _ in audit)
    assert _writes_to(audit, path) == [] and digest(path) == before


def test_a_dump_and_a_symbol_file_are_only_read(tmp_path, audit):
    dump, symbols, snap = str(tmp_path / "MEMORY.DMP"), str(tmp_path / "symbols.json"), str(tmp_path / "rec.snap")
    write_dump(SCENARIO.data, dump)
    with open(symbols, "w") as handle:
        json.dump({"nt!KiBugCheckDriver": hex(SCENARIO.data.symbols["nt!KiBugCheckDriver"])}, handle)
    before = (digest(dump), digest(symbols))
    audit.clear()
    code, _, _ = run(["analyze", dump, "--symbols", symbols, "--record", snap])
    assert code == EXIT_SUSPECT
    assert _writes_to(audit, dump) == [] and _writes_to(audit, symbols) == []
    assert (digest(dump), digest(symbols)) == before


# ---- --record: no overwrite without --force, no partial file ------------------------------------

def test_record_refuses_an_existing_file_before_reading_the_dump(tmp_path):
    dump, snap = str(tmp_path / "MEMORY.DMP"), tmp_path / "precious.snap"
    write_dump(SCENARIO.data, dump)
    snap.write_bytes(b"precious")
    code, out, err = run(["analyze", dump, "--record", str(snap)])
    assert code == EXIT_USAGE and "--force" in err and snap.read_bytes() == b"precious" and out == ""
    code, out, err = run(["analyze", dump, "--record", str(snap), "--force"])
    assert code == EXIT_SUSPECT and load_snapshot(str(snap)).bugcheck.code == 0x76


def test_saving_into_a_missing_directory_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        save_snapshot(SCENARIO.data, str(tmp_path / "no-such-dir" / "case.snap"))


class _FailingPages(dict):
    """Pages that fail after ``good`` of them were written: a recording cut off half way."""

    def __init__(self, pages, good, error):
        super().__init__(pages)
        self.good, self.error, self.served = good, error, 0

    def __getitem__(self, key):
        self.served += 1
        if self.served > self.good:
            raise self.error
        return super().__getitem__(key)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt(),
                                   RuntimeError("anything")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_recording_cut_off_half_way_leaves_no_file_behind(tmp_path, error, existing):
    path = tmp_path / "case.snap"
    if existing:
        path.write_bytes(b"the previous recording")
    data = clone(SCENARIO.data)
    data.pages = _FailingPages(data.pages, good=len(data.pages) // 2, error=error)
    with pytest.raises((OutputError, KeyboardInterrupt, RuntimeError)):
        save_snapshot(data, str(path), overwrite=True)
    assert os.listdir(tmp_path) == (["case.snap"] if existing else [])
    if existing:
        assert path.read_bytes() == b"the previous recording"


@pytest.mark.parametrize("pfn_range", ["0-ffffffffffffffffffffffff", "0-10000000000"])
def test_a_pfn_range_past_any_physical_page_is_a_usage_error(tmp_path, pfn_range):
    dump = str(tmp_path / "MEMORY.DMP")
    write_dump(SCENARIO.data, dump)
    for argv in (["analyze", dump], ["replay", os.path.join(ROOT, "mocks", "snapshots", "0x76-irp-x64.snap")]):
        code, _, err = run(argv + ["--pfn-range", pfn_range])
        assert code == EXIT_USAGE and "highest page frame number" in err and err.count("\n") == 1


def test_a_pfn_range_up_to_the_last_frame_searches_everything(tmp_path):
    dump = str(tmp_path / "MEMORY.DMP")
    write_dump(SCENARIO.data, dump)
    source = open_dump(dump)
    last = source.max_pfn
    source.close()
    code, out, err = run(["analyze", dump, "--pfn-range", f"0-{last:x}"])
    assert code == EXIT_SUSPECT and "stopped early" not in out


def test_a_page_range_that_overflows_prints_nothing_but_the_report(tmp_path):
    from pykd_ext.targets import dumpheader

    dump = tmp_path / "MEMORY.DMP"
    write_dump(SCENARIO.data, str(dump), dumpheader.DUMP_KERNEL_MEMORY)
    raw = bytearray(dump.read_bytes())
    first_range = dumpheader.HEADER64_SIZE + dumpheader.RDMP_RANGES
    raw[first_range + 8:first_range + 16] = (2 ** 64 - 1).to_bytes(8, "little")  # NumberOfPages of range 0
    dump.write_bytes(bytes(raw))
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "analyze", str(dump)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode in DOCUMENTED
    assert result.stderr == "" or (result.stderr.count("\n") == 1 and result.stderr.startswith("leakhunt: error: "))


@pytest.mark.parametrize("command", ["analyze", "replay", "inspect"])
def test_a_named_pipe_is_refused_without_being_opened(tmp_path, command):
    """Opening a FIFO waits for a writer: leakhunt looks at the file's type first and never opens it."""
    fifo = tmp_path / "MEMORY.DMP"
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "pykd_ext", command, str(fifo)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == EXIT_INPUT and "named pipe (FIFO)" in result.stderr
    assert result.stderr.count("\n") == 1
