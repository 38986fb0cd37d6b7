"""`leakhunt triage --scheduler`: a real Dask LocalCluster (worker processes), and once a real
`dask scheduler` + `dask worker` started as programs; everything listens on 127.0.0.1 only."""
import json
import os
import subprocess
import sys
import time

import pytest

distributed = pytest.importorskip(
    "distributed", reason='the Dask engine needs dask.distributed (pip install "leakhunt[cluster]", Python >= 3.10)')

from test_fleet_inputs import copy_snapshot, write_case  # noqa: E402
from test_fleet_local import records_of, triage  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


FAULTS = "slow.dmp=sleep:60,boom.dmp=crash"


def fault_folder(folder):
    inputs = os.path.join(folder, "in")
    os.mkdir(inputs)
    write_case(os.path.join(inputs, "good.dmp"))
    copy_snapshot("0xcb-current-x64.snap", inputs)
    write_case(os.path.join(inputs, "slow.dmp"))
    write_case(os.path.join(inputs, "boom.dmp"))
    os.mkdir(os.path.join(inputs, "x.dmp"))
    os.mkfifo(os.path.join(inputs, "y.dmp"))
    with open(os.path.join(inputs, "random.dmp"), "wb") as handle:
        handle.write(os.urandom(5000))
    return inputs


EXPECTED = {"good.dmp": ("analyzed", "0x76_0_leakyflt.sys"), "0xcb-current-x64.snap": ("analyzed", "0xcb_current_leakyflt.sys"),
            "slow.dmp": ("timeout", "TIMEOUT"), "boom.dmp": ("crashed", "CRASHED"), "x.dmp": ("input_error", "INPUT_ERROR"),
            "y.dmp": ("input_error", "INPUT_ERROR"), "random.dmp": ("input_error", "INPUT_ERROR")}


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("LEAKHUNT_TEST_FAULTS", FAULTS)  # inherited by the worker processes
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as local_cluster:
        yield local_cluster


def test_a_local_cluster_analyses_every_input_and_its_worker_survives_the_bad_ones(folder, cluster):
    inputs = fault_folder(folder)
    with distributed.Client(cluster.scheduler_address) as client:
        workers_before = {address: info["pid"] if "pid" in info else info.get("id")
                          for address, info in client.scheduler_info()["workers"].items()}
        out = os.path.join(folder, "out")
        result = triage([inputs, "--out", out, "--timeout", "5", "--scheduler", cluster.scheduler_address])
        assert result.returncode == 1, result.stderr
        records = records_of(out)
        assert {name: (r["status"], r["bucket"]) for name, r in records.items()} == EXPECTED
        assert "SIGSEGV" in records["boom.dmp"]["error"] and "--timeout" in records["slow.dmp"]["error"]
        workers_after = {address: info["pid"] if "pid" in info else info.get("id")
                         for address, info in client.scheduler_info()["workers"].items()}
        assert workers_after == workers_before  # the same worker process, never restarted
        # The reports are the same as the local engine writes.
        local_out = os.path.join(folder, "local")
        triage([inputs, "--out", local_out, "--timeout", "5"], env={"LEAKHUNT_TEST_FAULTS": FAULTS})
        local = records_of(local_out)
        for name in ("good.dmp", "0xcb-current-x64.snap"):
            with open(os.path.join(out, records[name]["report"])) as dask_report, \
                    open(os.path.join(local_out, local[name]["report"])) as local_report:
                assert dask_report.read() == local_report.read()


def test_paths_are_listed_on_the_workers(folder, cluster):
    from pykd_ext.fleet.dask_engine import DaskEngine
    write_case(os.path.join(folder, "MEMORY.DMP"))
    engine = DaskEngine(cluster.scheduler_address)
    try:
        listed = engine.list_inputs([folder], ["*.dmp"])
        delivered = []
        engine.run(listed, lambda item: 30.0, delivered.append)
    finally:
        engine.close()
    assert [os.path.basename(item.path) for item in listed] == ["MEMORY.DMP"]
    (record, report_json), = delivered
    assert record["status"] == "analyzed" and json.loads(report_json)["suspects"][0]["image"] == "leakyflt.sys"
    assert record["worker"].split(":")[1] != str(os.getpid())  # analyzed in a helper of the worker


def test_an_unreachable_scheduler_is_one_line(folder, monkeypatch, capsys):
    from pykd_ext import cli
    from pykd_ext.fleet import dask_engine
    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT", "2s")
    assert cli.main(["triage", folder, "--out", os.path.join(folder, "out"), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("leakhunt: error: cannot reach tcp://127.0.0.1:9") and error.count("\n") == 1


def dask_program(*arguments, env=None):
    command = [sys.executable, "-m", "dask"]
    return subprocess.Popen(command + list(arguments), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process):
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_dask_scheduler_and_worker_started_as_programs(folder):
    inputs = fault_folder(folder)
    scheduler_file = os.path.join(folder, "scheduler.json")
    environment = dict(os.environ, LEAKHUNT_TEST_FAULTS=FAULTS)
    scheduler = dask_program("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                             "--scheduler-file", scheduler_file, env=environment)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.path.exists(scheduler_file), "the scheduler did not start"
        worker = dask_program("worker", "--scheduler-file", scheduler_file, "--host", "127.0.0.1", "--nthreads", "2",
                              "--no-dashboard", env=environment)
        with distributed.Client(scheduler_file=scheduler_file, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        out = os.path.join(folder, "out")
        result = triage([inputs, "--out", out, "--timeout", "5", "--scheduler-file", scheduler_file])
        assert result.returncode == 1, result.stderr
        assert {name: (r["status"], r["bucket"]) for name, r in records_of(out).items()} == EXPECTED
        assert worker.poll() is None  # the worker program is still running
    finally:
        for process in (worker, scheduler):
            if process is not None:
                stop(process)
