"""`leakhunt triage` on the local engine: real worker processes, real faulty inputs, real signals."""
import csv
import ctypes
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from pykd_ext import cli
from pykd_ext.fleet.analysis import make_record
from pykd_ext.fleet.inputs import InputFile, collect_inputs
from pykd_ext.fleet.local import LocalEngine
from pykd_ext.fleet.output import ResultsStore
from test_fleet_inputs import ROOT, copy_snapshot, fingerprints, write_case


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


RECORD_KEYS = {"path", "size", "mtime", "status", "exit_code", "bucket", "bucket_hash", "bucket_version",
               "bucket_followup", "bugcheck", "culprit",
               "dump_time", "duration_s", "worker", "leakhunt_version", "error", "report"}
# Linux capabilities that let root read a file whatever its mode (capability.h), and prctl's
# PR_CAPBSET_DROP: dropped from the bounding set before exec, a root process no longer has them.
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
PR_CAPBSET_DROP = 24


def drop_file_read_override():
    """preexec_fn: the program run next obeys file modes even as root."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def can_drop_file_read_override():
    try:
        return subprocess.run(["true"], preexec_fn=drop_file_read_override).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def triage(arguments, env=None, obey_file_modes=False, timeout=120):
    """Run ``python -m pykd_ext triage ...`` as a user would."""
    environment = dict(os.environ, **(env or {}))
    environment.pop("LEAKHUNT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pykd_ext", "triage"] + list(arguments), cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=drop_file_read_override if obey_file_modes else None)


def records_of(out):
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as handle:
        return {os.path.basename(r["path"]): r for r in map(json.loads, handle)}


def test_every_record_says_what_happened_and_each_report_is_what_analyze_prints(folder, capsys):
    inputs = os.path.join(folder, "in")
    os.mkdir(inputs)
    dump = write_case(os.path.join(inputs, "MEMORY.DMP"))
    copy_snapshot("0x76-orphan-x64.snap", inputs)
    copy_snapshot("0xcb-current-x64.snap", inputs)
    out = os.path.join(folder, "out")
    result = triage([inputs, "--out", out, "--jobs", "2"])
    assert result.returncode == 0, result.stderr
    records = records_of(out)
    assert sorted(records) == ["0x76-orphan-x64.snap", "0xcb-current-x64.snap", "MEMORY.DMP"]
    for record in records.values():
        assert set(record) == RECORD_KEYS
        assert record["status"] == "analyzed" and record["error"] is None
    memory = records["MEMORY.DMP"]
    assert memory["bucket"] == "0x76_0_leakyflt.sys" and memory["exit_code"] == 0
    assert memory["culprit"] == {"driver": "\\Driver\\leakyflt", "image": "leakyflt.sys", "confidence": "high"}
    assert memory["bugcheck"]["code"] == "0x76" and len(memory["bugcheck"]["parameters"]) == 4
    assert memory["dump_time"] == "2024-01-01T00:00:00Z" and memory["size"] == os.path.getsize(dump)
    assert records["0x76-orphan-x64.snap"]["bucket"] == "0x76_0_NO_SUSPECT"
    assert records["0x76-orphan-x64.snap"]["exit_code"] == 1
    assert records["0x76-orphan-x64.snap"]["culprit"] is None
    # The report beside each record is byte for byte what `leakhunt analyze --format json` prints.
    assert cli.main(["analyze", dump, "--format", "json"]) == 0
    with open(os.path.join(out, memory["report"]), encoding="utf-8") as handle:
        assert handle.read() == capsys.readouterr().out
    assert cli.main(["replay", os.path.join(inputs, "0xcb-current-x64.snap"), "--format", "json"]) == 0
    with open(os.path.join(out, records["0xcb-current-x64.snap"]["report"]), encoding="utf-8") as handle:
        assert handle.read() == capsys.readouterr().out
    # The table of top buckets on stdout, and the bucket files.
    assert "0x76_0_leakyflt.sys" in result.stdout and "3 input(s): 3 analyzed, 0 not" in result.stdout
    with open(os.path.join(out, "buckets.csv"), encoding="utf-8") as handle:
        rows = {row["bucket"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"0x76_0_leakyflt.sys", "0x76_0_NO_SUSPECT", "0xcb_current_leakyflt.sys"}
    assert rows["0x76_0_leakyflt.sys"]["culprit_image"] == "leakyflt.sys"
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["bucket_version"] >= 1 and summary["inputs"] == 3 and summary["analyzed"] == 3
    assert sum(b["count"] for b in summary["buckets"]) == 3
    assert abs(sum(b["share"] for b in summary["buckets"]) - 1) < 1e-3


def test_a_folder_of_faults_gives_each_its_status_and_loses_nothing_else(folder):
    """Truncated dump, random bytes, a directory and a FIFO named like dumps, an unreadable file, a folder
    that cannot be listed, a dump that crashes its worker and one that runs past --timeout, beside two
    good dumps."""
    inputs = os.path.join(folder, "in")
    os.mkdir(inputs)
    good = write_case(os.path.join(inputs, "good.dmp"))
    write_case(os.path.join(inputs, "good-too.dmp"), kind="orphan")
    with open(good, "rb") as handle:
        head = handle.read(os.path.getsize(good) // 3)
    with open(os.path.join(inputs, "truncated.dmp"), "wb") as handle:
        handle.write(head)
    with open(os.path.join(inputs, "random.dmp"), "wb") as handle:
        handle.write(os.urandom(20000))
    os.mkdir(os.path.join(inputs, "x.dmp"))
    os.mkfifo(os.path.join(inputs, "y.dmp"))
    unreadable = write_case(os.path.join(inputs, "unreadable.dmp"))
    os.chmod(unreadable, 0)
    write_case(os.path.join(inputs, "slow.dmp"))
    write_case(os.path.join(inputs, "boom.dmp"))
    locked = os.path.join(inputs, "locked")
    os.mkdir(locked)
    write_case(os.path.join(locked, "inside.dmp"))
    os.chmod(locked, 0)
    before = fingerprints(inputs)
    out = os.path.join(folder, "out")
    # Root reads a mode-000 file anyway: as root the run is made without the capabilities that allow it.
    root = os.geteuid() == 0
    if root and not can_drop_file_read_override():
        pytest.skip("running as root, and this system does not let a process drop CAP_DAC_OVERRIDE (prctl): "
                    "a mode-000 file cannot be made unreadable here")
    started = time.monotonic()
    result = triage([inputs, "--out", out, "--jobs", "2", "--timeout", "5"], obey_file_modes=root,
                    env={"LEAKHUNT_TEST_FAULTS": "slow.dmp=sleep:60,boom.dmp=crash"})
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    records = records_of(out)
    expected = {"good.dmp": ("analyzed", "0x76_0_leakyflt.sys"), "good-too.dmp": ("analyzed", "0x76_0_NO_SUSPECT"),
                "truncated.dmp": ("damaged", "DAMAGED_DUMP"), "random.dmp": ("input_error", "INPUT_ERROR"),
                "x.dmp": ("input_error", "INPUT_ERROR"), "y.dmp": ("input_error", "INPUT_ERROR"),
                "unreadable.dmp": ("input_error", "INPUT_ERROR"), "slow.dmp": ("timeout", "TIMEOUT"),
                "boom.dmp": ("crashed", "CRASHED"), "locked": ("input_error", "INPUT_ERROR")}
    assert {name: (r["status"], r["bucket"]) for name, r in records.items()} == expected
    errors = {name: r["error"] for name, r in records.items()}
    assert "truncated" in errors["truncated.dmp"]
    assert "nor a Windows kernel crash dump" in errors["random.dmp"]
    assert "directory" in errors["x.dmp"] and "named pipe" in errors["y.dmp"]
    assert "permission denied" in errors["unreadable.dmp"]
    assert "--timeout" in errors["slow.dmp"] and "SIGSEGV" in errors["boom.dmp"]
    assert "cannot list this folder" in errors["locked"]
    assert all("\n" not in (error or "") for error in errors.values())
    assert errors["good.dmp"] is None and records["good.dmp"]["report"]
    # The summary names every input that was not analyzed, with its status and reason.
    for name, (status, _) in expected.items():
        if status != "analyzed":
            assert any(line.startswith(f"  {status}: ") and name in line for line in result.stdout.splitlines()), name
    assert "10 input(s): 2 analyzed, 8 not" in result.stdout
    assert elapsed < 40, "the slow dump was not stopped at its timeout"
    assert fingerprints(inputs) == before  # no input was modified
    os.chmod(locked, 0o755)


def test_a_file_that_vanishes_after_listing_is_an_input_error(folder):
    write_case(os.path.join(folder, "stays.dmp"))
    write_case(os.path.join(folder, "vanishes.dmp"))
    listed = collect_inputs([folder])
    os.unlink(os.path.join(folder, "vanishes.dmp"))
    delivered = []
    LocalEngine(jobs=2).run(listed, lambda item: 30.0, delivered.append)
    by_name = {os.path.basename(record["path"]): record for record, _ in delivered}
    assert by_name["stays.dmp"]["status"] == "analyzed"
    assert by_name["vanishes.dmp"]["status"] == "input_error"
    assert "no such file" in by_name["vanishes.dmp"]["error"]


def test_the_pool_replaces_workers_that_crash_or_time_out(folder, monkeypatch):
    names = ["a-crash.dmp", "b-good.dmp", "c-hang.dmp", "d-good.dmp", "e-exit.dmp", "f-good.dmp"]
    for name in names:
        write_case(os.path.join(folder, name))
    monkeypatch.setenv("LEAKHUNT_TEST_FAULTS", "a-crash.dmp=crash,c-hang.dmp=sleep:60,e-exit.dmp=exit")
    delivered = []
    LocalEngine(jobs=1).run(collect_inputs([folder]), lambda item: 2.0, delivered.append)
    statuses = {os.path.basename(record["path"]): record["status"] for record, _ in delivered}
    assert statuses == {"a-crash.dmp": "crashed", "b-good.dmp": "analyzed", "c-hang.dmp": "timeout",
                        "d-good.dmp": "analyzed", "e-exit.dmp": "crashed", "f-good.dmp": "analyzed"}
    workers = [record["worker"] for record, _ in delivered]
    assert len(set(workers)) == 4  # the first worker, then one new worker after each of the three losses


def test_resume_skips_what_is_done_and_redoes_what_changed(folder):
    inputs = os.path.join(folder, "in")
    os.mkdir(inputs)
    for name in ("one.snap", "two.snap"):
        copy_snapshot("0x76-irp-x64.snap", inputs, name)
    out = os.path.join(folder, "out")
    assert triage([inputs, "--out", out]).returncode == 0
    again = triage([inputs, "--out", out])
    assert again.returncode == 2 and "--resume" in again.stderr  # results are never overwritten by accident
    assert triage([inputs, "--out", out, "--resume"]).returncode == 0
    with open(os.path.join(out, "results.jsonl")) as handle:
        assert len(handle.readlines()) == 2
    changed = os.path.join(inputs, "two.snap")
    os.utime(changed, (time.time() + 5, time.time() + 5))
    copy_snapshot("0x76-orphan-x64.snap", inputs, "three.snap")
    assert triage([inputs, "--out", out, "--resume"]).returncode == 0
    with open(os.path.join(out, "results.jsonl")) as handle:
        lines = [json.loads(line) for line in handle]
    assert [os.path.basename(r["path"]) for r in lines[2:]] == ["three.snap", "two.snap"]
    with open(os.path.join(out, "summary.json")) as handle:
        assert json.load(handle)["inputs"] == 3  # two.snap counts once, with its latest record


def test_a_line_cut_short_by_a_killed_run_is_dropped_on_resume(folder):
    copy_snapshot("0x76-irp-x64.snap", folder, "a.snap")
    out = os.path.join(folder, "out")
    store = ResultsStore(out, resume=False)
    store.close()
    earlier = make_record(InputFile("/elsewhere/x.dmp", 1, 1.0, "no such file"), "input_error", 3, None, 0.0, "w")
    with open(os.path.join(out, "results.jsonl"), "w") as handle:
        handle.write(json.dumps(earlier) + "\n" + '{"path": "/cut/sho')
    assert triage([folder, "--out", out, "--resume"]).returncode == 0
    with open(os.path.join(out, "results.jsonl")) as handle:
        lines = [json.loads(line) for line in handle]  # every line parses
    assert [os.path.basename(r["path"]) for r in lines] == ["x.dmp", "a.snap"]


def test_ctrl_c_keeps_what_finished_and_resume_carries_on(folder):
    inputs = os.path.join(folder, "in")
    os.mkdir(inputs)
    for name in ("a.snap", "b.snap", "m-slow.snap", "z.snap"):
        copy_snapshot("0x76-irp-x64.snap", inputs, name)
    out = os.path.join(folder, "out")
    environment = dict(os.environ, LEAKHUNT_TEST_FAULTS="m-slow.snap=sleep:60")
    # A session of its own, so that the interrupt goes to the whole process group as a terminal's Ctrl+C does,
    # with Ctrl+C handled as in a terminal even where the tests run in the background (a shell's `&` makes
    # its commands ignore SIGINT, and Python then leaves it ignored).
    process = subprocess.Popen([sys.executable, "-m", "pykd_ext", "triage", inputs, "--out", out, "--jobs", "1"],
                               cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = os.path.join(out, "results.jsonl")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(results) and open(results).read().count("\n") >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # the worker is now inside the slow analysis
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert "4 input(s): interrupted after 2 of the 4 this run had to do; 2 analyzed, 0 not, 2 not yet" in stdout
    assert sorted(records_of(out)) == ["a.snap", "b.snap"]
    with open(os.path.join(out, "summary.json")) as handle:
        assert json.load(handle)["inputs"] == 2
    resumed = triage([inputs, "--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    with open(results) as handle:
        names = [os.path.basename(json.loads(line)["path"]) for line in handle]
    assert names[:2] == ["a.snap", "b.snap"] and sorted(names[2:]) == ["m-slow.snap", "z.snap"]


def test_a_mistyped_path_is_a_usage_error_naming_it(folder):
    copy_snapshot("0x76-irp-x64.snap", folder, "real.snap")
    out = os.path.join(folder, "out")
    result = triage([os.path.join(folder, "real.snap"), os.path.join(folder, "typo.snap"), "--out", out])
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no such file or folder" in result.stderr and "typo.snap" in result.stderr
    assert not os.path.exists(out)  # refused before anything was written


def test_a_folder_without_dumps_is_said_and_exits_3(folder):
    empty = os.path.join(folder, "empty")
    os.mkdir(empty)
    with open(os.path.join(empty, "notes.txt"), "w") as handle:
        handle.write("no dumps here")
    for arguments in ([empty], [empty, "--glob", "*.nothing"]):
        result = triage(arguments + ["--out", os.path.join(folder, "out")])
        assert result.returncode == 3 and "no dump or snapshot found" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_a_snapshot_recorded_from_a_dump_keeps_its_crash_time(folder):
    dump = write_case(os.path.join(folder, "crash.dmp"), when=datetime(2021, 2, 21, 1, 38, 22, tzinfo=timezone.utc))
    recorded = os.path.join(folder, "recorded", "crash.snap")
    os.mkdir(os.path.dirname(recorded))
    assert cli.main(["analyze", dump, "--record", recorded, "--format", "json"]) == 0
    os.utime(recorded, (0, 0))  # the file's own time says nothing of the crash
    out = os.path.join(folder, "out")
    assert triage([os.path.dirname(recorded), "--out", out]).returncode == 0
    assert records_of(out)["crash.snap"]["dump_time"] == "2021-02-21T01:38:22Z"
    with open(os.path.join(out, "summary.json")) as handle:
        assert json.load(handle)["buckets"][0]["first_seen"] == "2021-02-21T01:38:22Z"


def test_usage_errors_exit_2(folder):
    assert triage(["--out", os.path.join(folder, "o")]).returncode == 2  # nothing to triage
    assert triage([folder]).returncode == 2  # no --out
    assert triage([folder, "--out", os.path.join(folder, "o"), "--jobs", "0"]).returncode == 2
    missing_list = triage(["--from", os.path.join(folder, "none.txt"), "--out", os.path.join(folder, "o")])
    assert missing_list.returncode == 2 and "cannot read the list" in missing_list.stderr


def test_paths_from_a_list_on_stdin(folder):
    snapshot = copy_snapshot("0x76-irp-x64.snap", folder, "listed.snap")
    copy_snapshot("0x76-irp-x64.snap", folder, "not-listed.snap")
    out = os.path.join(folder, "out")
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "triage", "--from", "-", "--out", out], cwd=ROOT,
                            input=snapshot + "\n" + os.path.join(folder, "missing.dmp") + "\n", text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 1  # the missing one failed
    records = records_of(out)
    assert sorted(records) == ["listed.snap", "missing.dmp"]
    assert records["missing.dmp"]["status"] == "input_error"


def test_dump_times_spanning_days_are_counted_per_day(folder):
    for day in (1, 1, 2, 4):
        write_case(os.path.join(folder, f"d{day}-{len(os.listdir(folder))}.dmp"),
                   when=datetime(2026, 11, day, 12, tzinfo=timezone.utc))
    out = os.path.join(folder, "out")
    assert triage([folder, "--out", out]).returncode == 0
    with open(os.path.join(out, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["per_day"] == {"2026-11-01": {"0x76_0_leakyflt.sys": 2}, "2026-11-02": {"0x76_0_leakyflt.sys": 1},
                                  "2026-11-04": {"0x76_0_leakyflt.sys": 1}}
    bucket = summary["buckets"][0]
    assert (bucket["first_seen"], bucket["last_seen"]) == ("2026-11-01T12:00:00Z", "2026-11-04T12:00:00Z")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="checks the fork start method")
def test_workers_are_forked_after_the_imports():
    from pykd_ext.fleet.workers import ForkedWorker
    assert ForkedWorker.context.get_start_method() == "fork"


def test_progress_goes_to_a_terminal_only(folder):
    for name in ("a.snap", "b.snap"):
        copy_snapshot("0x76-irp-x64.snap", folder, name)
    primary, secondary = pty.openpty()
    try:
        process = subprocess.run([sys.executable, "-m", "pykd_ext", "triage", folder, "--out", os.path.join(folder, "o")],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=secondary, timeout=60)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert process.returncode == 0
    assert re.search(rb"triage: 2/2 done, 0 failed, [0-9.]+/s, ETA 0 s", shown), shown
    piped = triage([folder, "--out", os.path.join(folder, "p")])
    assert "triage:" not in piped.stderr and "2/2" not in piped.stdout


def test_a_file_name_that_is_not_utf8_is_recorded_and_reported(folder):
    name = os.fsdecode(b"crash-\xff.snap")
    copy_snapshot("0x76-irp-x64.snap", folder, name)
    out = os.path.join(folder, "out")
    result = triage([folder, "--out", out])
    assert result.returncode == 0, result.stderr
    (record,) = records_of(out).values()
    assert record["path"] == os.path.join(folder, name) and record["bucket"] == "0x76_0_leakyflt.sys"
    with open(os.path.join(out, record["report"]), encoding="utf-8") as handle:
        assert json.load(handle)["suspects"][0]["image"] == "leakyflt.sys"
    for summary_file in ("summary.json", "buckets.csv", "report.html"):
        with open(os.path.join(out, summary_file), encoding="utf-8") as handle:
            assert "crash-" in handle.read()


SAMPLES = os.path.join(ROOT, "..", "shared", "samples")  # the real dumps beside this checkout


needs_samples = pytest.mark.skipif(not os.path.exists(os.path.join(SAMPLES, "triage_x64.dmp")),
                                   reason="the real sample dumps are not here")


@needs_samples
def test_real_small_dumps_are_bucketed_with_their_culprits_image_timestamp(folder):
    out = os.path.join(folder, "out")
    result = triage([os.path.join(SAMPLES, "triage_x64.dmp"), os.path.join(SAMPLES, "triage_arm64.dmp"), "--out", out])
    assert result.returncode == 0, result.stderr
    records = records_of(out)
    x64 = records["triage_x64.dmp"]
    assert x64["bucket"] == "0x7e_amdppm.sys"  # 0x1000007E: the "_M" form of 0x7E
    assert x64["culprit"]["image"] == "amdppm.sys" and x64["culprit"]["image_timestamp"] == "0xc9c03000"
    assert x64["dump_time"] == "2021-02-21T01:38:22Z"
    assert records["triage_arm64.dmp"]["bucket"].endswith("_NO_SUSPECT")
    with open(os.path.join(out, "buckets.csv"), encoding="utf-8") as handle:
        rows = {row["bucket"]: row for row in csv.DictReader(handle)}
    assert rows["0x7e_amdppm.sys"]["image_timestamps"] == "0xc9c03000"


@needs_samples
def test_the_kernels_symbols_come_from_the_symbol_path_as_for_analyze(folder):
    """--symbol-path (or _NT_SYMBOL_PATH) reaches every worker: the real x64 small dump is decoded with the
    one real kernel symbol file that fits it, exactly as ``leakhunt analyze --symbol-path`` decodes it."""
    symbols = os.path.join(ROOT, "tests", "data", "symbols")
    dump = os.path.join(SAMPLES, "triage_x64.dmp")
    for arguments, env in (([f"--symbol-path={symbols}"], None), ([], {"_NT_SYMBOL_PATH": symbols})):
        out = os.path.join(folder, f"out-{len(arguments)}")
        result = triage([dump, "--out", out] + arguments, env=env)
        assert result.returncode == 0, result.stderr
        with open(os.path.join(out, records_of(out)["triage_x64.dmp"]["report"]), encoding="utf-8") as handle:
            report = json.load(handle)
        assert set(report["layouts"].values()) == {"isf ntkrnlmp.pdb 5278AFF86C341677D7D7835C85B7B844-1"}
        analyzed = subprocess.run([sys.executable, "-m", "pykd_ext", "analyze", dump, "--format", "json",
                                   "--symbol-path", symbols], cwd=ROOT, capture_output=True, text=True)
        assert json.loads(analyzed.stdout) == report
