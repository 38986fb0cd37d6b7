"""Benchmark: `leakhunt triage` against `leakhunt analyze` run on each dump one after the other.

Generates ``--dumps`` bitmap kernel dumps (``mocks/dumpwriter.py``: 0x76 cases, most with a culprit,
some with none, each with ``--noise-pages`` pages of pointer-rich noise) in a temporary directory and
measures, side by side and interleaved (``--repeat`` rounds, medians):

* ``sequential``: ``leakhunt analyze --format json DUMP`` for each dump, one process after the other
  (what a user scripts today: Python start-up and imports for every dump);
* ``triage --jobs 2`` (and ``--jobs 1``) as a program over the folder: the goal is at most 0.6 of
  ``sequential``;
* the analysis alone: ``analyze_file`` on each dump in this process, one after the other (no process,
  no output), and the same triage run made in this process (``--jobs 1``); their difference divided by
  the number of dumps is the local engine's cost per dump beyond the analysis (goal: at most 10 ms);
* the same on a Dask ``LocalCluster`` of one worker process with one thread, on 127.0.0.1 (when
  dask.distributed is installed): the Dask engine's cost per dump beyond the analysis;
* with ``--big SIZE`` (e.g. 770M), one dump of that size analyzed inside a triage run, in streaming
  reads of the same file with the file in the page cache (goal: at most 3);
* with ``--real-small N``, N copies of the real x64 small dump of the tests (../shared/samples) triaged
  with ``--jobs 2`` with and without ``--symbol-path`` the real symbol store (../shared/symstore and
  symbols): what naming every address from the modules' own PDBs and unwinding the stack from their
  images costs (goal: at most 1.5 times the run without symbols). Only these runs are made.

Not a test: ``python3 benchmarks/bench_triage.py``; the dumps are removed afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.bench_dump_search import generate, machine, parse_size, stream_read  # noqa: E402
from mocks.dumpwriter import DumpImage  # noqa: E402
from mocks.scenarios import case_0x76  # noqa: E402
from pykd_ext import cli  # noqa: E402
from pykd_ext.fleet.analysis import analyze_file  # noqa: E402
from pykd_ext.targets.dumpheader import DUMP_BITMAP  # noqa: E402


def write_dumps(folder: str, count: int, noise_pages: int) -> list:
    paths = []
    for number in range(count):
        kind = "orphan" if number % 5 == 4 else "irp"
        scenario = case_0x76("x64", kind, leaked=1 + number % 3, noise_pages=16)
        path = os.path.join(folder, f"dump-{number:04d}.dmp")
        DumpImage(scenario.data, noise_pages=noise_pages, seed=number + 1).write(path, DUMP_BITMAP)
        paths.append(path)
    return paths


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def leakhunt_command() -> list:
    installed = shutil.which("leakhunt")
    return [installed] if installed else [sys.executable, "-m", "pykd_ext"]


# The programs run as installed: with their modules' bytecode cached (the first run writes it), even
# where the environment says not to write bytecode.
PROGRAM_ENVIRONMENT = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def sequential(paths) -> None:
    for path in paths:
        subprocess.run(leakhunt_command() + ["analyze", "--format", "json", path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, env=PROGRAM_ENVIRONMENT)


def triage_program(folder: str, out: str, jobs: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(leakhunt_command() + ["triage", folder, "--out", out, "--jobs", str(jobs)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=PROGRAM_ENVIRONMENT)


def triage_here(arguments, out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["triage"] + arguments + ["--out", out])


def analysis_alone(paths) -> None:
    for path in paths:
        analyze_file(path)


def median_times(operations: dict, repeat: int) -> dict:
    """Median seconds of each operation, the operations run in turn ``repeat`` times."""
    times = {name: [] for name in operations}
    for _ in range(repeat):
        for name, operation in operations.items():
            times[name].append(seconds(operation))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dumps", type=int, default=40, help="generated dumps (default 40)")
    parser.add_argument("--noise-pages", type=int, default=2048, help="noise pages per dump (default 2048: 8 MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--big", default="", help="also one dump of this size inside a triage run, e.g. 770M")
    parser.add_argument("--no-dask", action="store_true", help="leave out the Dask engine")
    parser.add_argument("--dir", default=None, help="where to write the temporary dumps (default: the temp dir)")
    parser.add_argument("--real-small", type=int, default=0, metavar="N",
                        help="only time N copies of the real small dump, with and without the real symbol store")
    args = parser.parse_args()
    if args.real_small:
        return real_small_dumps(args.real_small, args.repeat, args.dir)
    workdir = tempfile.mkdtemp(prefix="leakhunt-bench-triage-", dir=args.dir)
    inputs = os.path.join(workdir, "dumps")
    os.mkdir(inputs)
    out = os.path.join(workdir, "out")
    print(f"machine: {machine()}; load average at the start {os.getloadavg()[0]:.1f}")
    try:
        paths = write_dumps(inputs, args.dumps, args.noise_pages)
        size = sum(os.path.getsize(p) for p in paths)
        print(f"{len(paths)} bitmap kernel dumps, {size / len(paths) / (1 << 20):.1f} MiB each; median of "
              f"{args.repeat} interleaved rounds", flush=True)
        for path in paths:
            stream_read(path)  # all in the page cache, for every contender alike
        sequential(paths[:1])  # writes the bytecode caches the programs use
        triage_program(inputs, out, 1)
        operations = {
            "sequential leakhunt analyze": lambda: sequential(paths),
            "leakhunt triage --jobs 2": lambda: triage_program(inputs, out, 2),
            "leakhunt triage --jobs 1": lambda: triage_program(inputs, out, 1),
            "analysis alone (in process)": lambda: analysis_alone(paths),
            "triage --jobs 1 (in process)": lambda: triage_here([inputs, "--jobs", "1"], out),
        }
        cluster = None
        if not args.no_dask:
            try:
                import distributed
                cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address="127.0.0.1:0")
                address = cluster.scheduler_address
                triage_here([inputs, "--scheduler", address], out)  # warm: the worker's helper process starts
                operations["triage on Dask, 1 worker x 1 thread (in process)"] = \
                    lambda: triage_here([inputs, "--scheduler", address], out)
            except ImportError:
                print("dask.distributed is not installed: the Dask engine is left out")
        try:
            times = median_times(operations, args.repeat)
        finally:
            if cluster is not None:
                cluster.close()
        count = len(paths)
        sequential_time = times["sequential leakhunt analyze"]
        alone = times["analysis alone (in process)"]
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print()
        print("| run | seconds | per dump | / sequential |")
        print("|---|---|---|---|")
        for name, value in times.items():
            print(f"| {name} | {value:.2f} | {1000 * value / count:.1f} ms | {value / sequential_time:.2f} |")
        print()
        print(f"triage --jobs 2 / sequential analyze: {times['leakhunt triage --jobs 2'] / sequential_time:.2f} "
              f"(goal <= 0.6)")
        local = (times["triage --jobs 1 (in process)"] - alone) / count
        print(f"local engine, cost per dump beyond the analysis: {1000 * local:.1f} ms (goal <= 10 ms)")
        dask_name = "triage on Dask, 1 worker x 1 thread (in process)"
        if dask_name in times:
            print(f"Dask engine, cost per dump beyond the analysis: {1000 * (times[dask_name] - alone) / count:.1f} ms")
        if args.big:
            big = os.path.join(workdir, "big", "MEMORY.DMP")
            os.makedirs(os.path.dirname(big))
            generate(big, parse_size(args.big), 1)
            stream_read(big)
            big_times = median_times({"read": lambda: stream_read(big),
                                      "triage": lambda: triage_here([os.path.dirname(big), "--jobs", "1"], out),
                                      "analysis": lambda: analyze_file(big)}, args.repeat)
            gib = os.path.getsize(big) / (1 << 30)
            print(f"{gib:.2f} GiB dump, warm: streaming read {big_times['read']:.3f} s; inside a triage run "
                  f"{big_times['triage'] / big_times['read']:.2f} reads ({big_times['triage']:.3f} s; goal <= 3); "
                  f"its analysis alone {big_times['analysis'] / big_times['read']:.2f} reads")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


SHARED = os.path.join(ROOT, "..", "shared")
REAL_SMALL_DUMP = os.path.join(SHARED, "samples", "triage_x64.dmp")
REAL_SYMBOL_PATH = f"{os.path.join(SHARED, 'symstore')};{os.path.join(SHARED, 'symbols')}"


def real_small_dumps(count: int, repeat: int, directory) -> int:
    """Triage ``count`` copies of the real small dump with and without the real symbol store, in turns."""
    if not os.path.exists(REAL_SMALL_DUMP):
        print("the real small dump (../shared/samples) is not here")
        return 1
    workdir = tempfile.mkdtemp(prefix="leakhunt-bench-triage-", dir=directory)
    try:
        inputs = os.path.join(workdir, "dumps")
        os.mkdir(inputs)
        for number in range(count):
            shutil.copyfile(REAL_SMALL_DUMP, os.path.join(inputs, f"small-{number:04d}.dmp"))
        out = os.path.join(workdir, "out")

        def triage(*extra) -> None:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(leakhunt_command() + ["triage", inputs, "--out", out, "--jobs", "2", *extra],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=PROGRAM_ENVIRONMENT)

        triage()  # the bytecode caches
        print(f"machine: {machine()}; load average at the start {os.getloadavg()[0]:.1f}; {count} copies of the "
              f"real small dump, triage --jobs 2, median of {repeat} interleaved rounds")
        times = median_times({"without symbols": triage,
                              "with the real symbol store": lambda: triage("--symbol-path", REAL_SYMBOL_PATH)},
                             repeat)
        without = times["without symbols"]
        for name, value in times.items():
            print(f"| {name} | {value:.2f} s | {1000 * value / count:.1f} ms per dump | {value / without:.2f} |")
        print(f"with symbols / without: {times['with the real symbol store'] / without:.2f} (goal <= 1.5); load "
              f"average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
