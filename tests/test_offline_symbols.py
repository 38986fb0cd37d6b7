"""The kernel's own symbols offline, end to end through ``leakhunt analyze``.

The dump is of a build leakhunt has no built-in tables for (22631), laid out as the test kernel's PDB
and ISF describe it (tests/data/testkernel: a real PE + PDB made by clang and lld), with nt's CodeView
record in memory. Given that kernel's symbols in any of the ways a user has them (a PDB in a symbol
store, an ISF file, _NT_SYMBOL_PATH, a symbol server), every layout comes from them, nt!KiBugCheckDriver
is read, and the findings are those of the same dump on the build whose table leakhunt has; without
them, one warning says what was looked for and where, and the nearest build's table is used.
"""
import contextlib
import copy
import functools
import http.server
import io
import json
import os
import shutil
import threading

import pytest

from mocks.dumpwriter import write_dump
from mocks.memory import SymbolFit, fit_of_pdb
from mocks.scenarios import case_0x76
from mocks.scenarios_family import case_0xcb
from pykd_ext.cli import main
from pykd_ext.console import EXIT_SUSPECT

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join(HERE, "data", "testkernel")
PDB = os.path.join(KERNEL, "ntkrnlmp.pdb")
ISF_FOLDER = os.path.join(KERNEL, "isf")
BUILD_WITHOUT_TABLE = 22631


def fit() -> SymbolFit:
    return fit_of_pdb(PDB)


def identity():
    return fit().guid, fit().age


def isf_file() -> str:
    guid, age = identity()
    return os.path.join(ISF_FOLDER, "windows", "ntkrnlmp.pdb", f"{guid}-{age}.json.xz")


def pdb_label() -> str:
    guid, age = identity()
    return f"pdb ntkrnlmp.pdb {guid}-{age}"


def write_kernel_dump(path, build=BUILD_WITHOUT_TABLE, kind="0x76"):
    """A dump of the test kernel that says it is of ``build``, and the scenario it holds."""
    if kind == "0x76":
        scenario = case_0x76("x64", "irp", noise_pages=4, fit=fit(), ki_bugcheck_driver="leakyflt.sys")
    else:
        scenario = case_0xcb("x64", "current", noise_pages=2, fit=fit())
    scenario.data.build = build
    write_dump(scenario.data, str(path))
    return scenario


def symbol_store(root) -> str:
    """A symbol store holding the test kernel's PDB, laid out as symstore and WinDbg's cache do."""
    guid, age = identity()
    folder = root / "ntkrnlmp.pdb" / f"{guid}{age:X}"
    folder.mkdir(parents=True)
    shutil.copy(PDB, folder / "ntkrnlmp.pdb")
    return str(root)


def run(*args, env=None):
    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.pop("_NT_SYMBOL_PATH", None)
    if env is not None:
        os.environ["_NT_SYMBOL_PATH"] = env
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.pop("_NT_SYMBOL_PATH", None)
        if saved is not None:
            os.environ["_NT_SYMBOL_PATH"] = saved
    return code, out.getvalue(), err.getvalue()


def report_of(*args, env=None):
    code, out, err = run(*args, "--format", "json", env=env)
    assert err == "" or err.count("\n") == 1, err
    return code, json.loads(out)


def findings(report):
    """What the hunt found, without what names the source, the build, or where layouts came from."""
    result = copy.deepcopy(report)
    for key in ("source", "target", "crash_time", "layouts", "symbols", "warnings", "module_symbols", "names",
                "registers", "call_stack"):
        del result[key]
    return result


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dumps")
    unknown, known = folder / "unknown-build.dmp", folder / "known-build.dmp"
    write_kernel_dump(unknown)
    write_kernel_dump(known, build=19045)
    return str(unknown), str(known)


@pytest.fixture(scope="module")
def with_table(dumps):
    """The same kernel on the build leakhunt has tables for, analyzed without symbols: the reference."""
    code, report = report_of("analyze", dumps[1], "--symbol", "nt!KiBugCheckDriver=0x0")
    return report


def assert_all_from(report, label):
    assert report["layouts"] and set(report["layouts"].values()) == {label}, report["layouts"]
    assert report["symbols"]["nt!KiBugCheckDriver"]["source"] == label
    fact = next(f for f in report["facts"] if f["label"] == "nt!KiBugCheckDriver")
    assert fact["value"] == "leakyflt.sys"
    assert report["target"]["build"] == BUILD_WITHOUT_TABLE
    # Nothing to warn of but the drivers this synthetic dump holds no image of (no PE header to name them by).
    assert [w for w in report["warnings"] if w not in report["module_symbols"]] == []


def assert_same_findings(report, reference):
    """The findings of the dump with the table, bar KiBugCheckDriver (read only where the symbol is)."""
    ours, theirs = findings(report), findings(reference)
    ours["facts"] = [f for f in ours["facts"] if f["label"] != "nt!KiBugCheckDriver"]
    theirs["facts"] = [f for f in theirs["facts"] if f["label"] != "nt!KiBugCheckDriver"]
    for suspects in (ours["suspects"], theirs["suspects"]):
        for suspect in suspects:
            suspect["evidence"] = [e for e in suspect["evidence"] if "KiBugCheckDriver" not in e]
    assert ours == theirs


def test_a_pdb_in_a_symbol_store_gives_every_layout_and_ki_bugcheck_driver(tmp_path, dumps, with_table):
    code, report = report_of("analyze", dumps[0], "--symbol-path", symbol_store(tmp_path / "store"))
    assert code == EXIT_SUSPECT
    assert_all_from(report, pdb_label())
    assert_same_findings(report, with_table)
    assert report["suspects"][0]["image"] == "leakyflt.sys"
    assert any("nt!KiBugCheckDriver names leakyflt.sys" in e for e in report["suspects"][0]["evidence"])


def test_an_isf_file_gives_the_same_report(dumps):
    by_pdb = report_of("analyze", dumps[0], "--symbols", PDB)[1]
    code, report = report_of("analyze", dumps[0], "--symbols", isf_file())
    guid, age = identity()
    assert_all_from(report, f"isf ntkrnlmp.pdb {guid}-{age}")
    assert findings(report) == findings(by_pdb)


def test_a_volatility3_symbols_folder_on_the_symbol_path(dumps):
    code, report = report_of("analyze", dumps[0], "--symbol-path", ISF_FOLDER)
    guid, age = identity()
    assert_all_from(report, f"isf ntkrnlmp.pdb {guid}-{age}")


def test_nt_symbol_path_is_used_as_windbg_users_have_it(tmp_path, dumps):
    store = symbol_store(tmp_path / "store")
    code, report = report_of("analyze", dumps[0], env=f"{tmp_path / 'elsewhere'};cache*{tmp_path / 'cache'};{store}")
    assert_all_from(report, pdb_label())


class _Store(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def symbol_server(folder):
    """A symbol server on 127.0.0.1 serving ``folder`` (a symbol store); stopped on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Store, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_symbol_server_download_once_into_the_cache_then_offline(tmp_path, dumps):
    store, cache = symbol_store(tmp_path / "served"), tmp_path / "cache"
    with symbol_server(store) as url:
        code, report = report_of("analyze", dumps[0], "--symbol-path", f"srv*{cache}*{url}")
    assert_all_from(report, pdb_label())
    guid, age = identity()
    cached = cache / "ntkrnlmp.pdb" / f"{guid}{age:X}" / "ntkrnlmp.pdb"
    assert cached.read_bytes() == open(PDB, "rb").read()
    assert [p.name for p in cached.parent.iterdir()] == ["ntkrnlmp.pdb"]  # no partial or temporary file
    # The server is gone: the cached copy is used without the network.
    code, again = report_of("analyze", dumps[0], "--symbol-path", f"srv*{cache}*{url}")
    assert findings(again) == findings(report) and again["layouts"] == report["layouts"]


def test_without_symbols_one_warning_says_what_was_looked_for_and_where(tmp_path, dumps):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    code, report = report_of("analyze", dumps[0], "--symbol-path", str(empty))
    guid, age = identity()
    looked = [w for w in report["warnings"] if "ntkrnlmp.pdb" in w]
    assert len(looked) == 1 and guid in looked[0] and f"age {age}" in looked[0] and str(empty) in looked[0]
    guessed = [w for w in report["warnings"] if f"no built-in layouts for build {BUILD_WITHOUT_TABLE}" in w]
    assert len(guessed) == 1 and "_EPROCESS from the build 26100 table" in guessed[0]
    assert report["layouts"]["_EPROCESS"].startswith("built-in x64 build 26100 table (guessed")
    assert report["suspects"][0]["image"] == "leakyflt.sys"  # the hunt itself needs no moving layout


def test_a_symbol_file_of_another_kernel_is_never_used(dumps):
    real_19041 = os.path.join(HERE, "data", "symbols", "windows", "ntkrnlmp.pdb",
                              "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
    code, report = report_of("analyze", dumps[0], "--symbols", real_19041)
    refused = [w for w in report["warnings"] if "does not fit this dump" in w]
    assert len(refused) == 1 and "5278AFF86C341677D7D7835C85B7B844-1" in refused[0]
    assert not any(source.startswith("isf") for source in report["layouts"].values())


def test_ki_bugcheck_driver_is_read_from_symbols_for_0xcb_and_shown_in_text(tmp_path):
    dump = tmp_path / "cb.dmp"
    scenario = write_kernel_dump(dump, kind="0xcb")
    code, out, err = run("analyze", str(dump), "--symbols", PDB)
    assert code == EXIT_SUSPECT and err == ""
    assert "nt!KiBugCheckDriver" in out and "leakyflt.sys" in out
    verbose = run("analyze", str(dump), "--symbols", PDB, "-v")[1]
    symbols = verbose[verbose.index("\nSYMBOLS\n"):]
    assert "nt!KiBugCheckDriver: " in symbols and f"({pdb_label()})" in symbols and "(dump header)" in symbols
    code, report = report_of("analyze", str(dump), "--symbols", PDB)
    assert report["symbols"]["nt!KiBugCheckDriver"]["source"] == pdb_label()
    assert report["suspects"][0]["image"] == scenario.expected["culprit_image"]


def test_a_recording_keeps_the_symbols_so_replay_gives_the_same_bytes(tmp_path, dumps):
    snapshot = tmp_path / "case.snap"
    code, recorded, err = run("analyze", dumps[0], "--symbols", PDB, "--record", str(snapshot), "--format", "json")
    assert code == EXIT_SUSPECT and "recorded" in err
    code, replayed, err = run("replay", str(snapshot), "--format", "json")
    assert replayed == recorded
    assert set(json.loads(replayed)["layouts"].values()) == {pdb_label()}


SAMPLES = os.path.join(HERE, "..", "..", "shared", "samples")
REAL_SYMBOLS = os.path.join(HERE, "data", "symbols")


@pytest.mark.skipif(not os.path.exists(os.path.join(SAMPLES, "triage_x64.dmp")), reason="the real sample dumps are not here")
def test_a_real_small_dump_takes_the_one_real_symbol_file_that_fits_it():
    """The x64 sample's nt image header is not in the dump: of the four real kernels' ISF files, only the
    one whose RVAs of the header's globals agree with the dump is used; the ARM64 sample fits none."""
    code, report = report_of("analyze", os.path.join(SAMPLES, "triage_x64.dmp"), "--symbol-path", REAL_SYMBOLS)
    assert set(report["layouts"].values()) == {"isf ntkrnlmp.pdb 5278AFF86C341677D7D7835C85B7B844-1"}
    assert not any("symbol file" in w for w in report["warnings"])
    assert report["process"]["name"] == "System"
    code, report = report_of("analyze", os.path.join(SAMPLES, "triage_arm64.dmp"), "--symbol-path", REAL_SYMBOLS)
    refused = [w for w in report["warnings"] if "kernel symbol file(s) on the symbol path fits it" in w]
    assert len(refused) == 1 and "none of the 4" in refused[0]
    assert not any(source.startswith("isf") for source in report["layouts"].values())
