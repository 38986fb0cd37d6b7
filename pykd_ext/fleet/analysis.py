"""One input analyzed: the adapter from a path to its report, and the task both engines run per input.

``analyze_file`` is the only place a triage run turns a path into a report: it opens the input as
``leakhunt analyze`` / ``leakhunt replay`` do (``pykd_ext.sources.open_source``: a snapshot or a crash
dump by its first bytes), analyzes it and returns the exit code those commands would give.
``run_task`` wraps it for one input: the checks before opening, the statuses, the one-line errors
and the result record. It runs inside an isolated process (a forked worker, or a Dask task's child),
so whatever it does to that process costs this input only.

For the tests only: ``LEAKHUNT_TEST_FAULTS`` (``NAME=ACTION[,NAME=ACTION]``; ``ACTION`` is
``sleep:SECONDS``, ``crash`` (the process kills itself with SIGSEGV) or ``exit`` (it exits without
a result)) makes the analysis of the inputs whose file name is ``NAME`` misbehave, so that the
timeout and crash handling can be tested on real processes. Nothing else sets it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any, Dict, Optional, Tuple

from .. import __version__
from ..analyses import Options
from ..console import EXIT_INPUT, EXIT_INTERNAL, exit_code_for
from ..render.jsonout import render_json
from ..run import run_analysis
from ..session import KernelSession, open_session
from ..sources import open_source
from ..targets.base import Target, TargetError
from ..targets.dumpfile import DumpFileTarget
from ..targets.dumpheader import DamagedDumpError
from .buckets import BUCKET_VERSION, bucket_hash, bucket_key, culprit_of, named_failure_bucket
from .inputs import STATUS_ANALYSIS_ERROR, STATUS_ANALYZED, STATUS_DAMAGED, STATUS_INPUT_ERROR, InputFile

TEST_FAULTS_VARIABLE = "LEAKHUNT_TEST_FAULTS"
MAX_ERROR_CHARS = 300


class InputProblem(Exception):
    """The input cannot be analyzed (a one-line reason): exit code 3, status ``status``."""

    def __init__(self, reason: str, status: str = STATUS_INPUT_ERROR):
        super().__init__(reason)
        self.status = status


def one_line(text: str) -> str:
    """An error message as one printable line of bounded length."""
    line = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 3] + "..."


def analyze_file(path: str, symbol_path: Optional[str] = None) -> Tuple[int, Dict[str, Any], str]:
    """Analyze one dump or snapshot through the run helper ``leakhunt analyze`` and ``leakhunt replay``
    use, a dump with its kernel's symbols looked for on ``symbol_path`` as ``leakhunt analyze
    --symbol-path`` does: (exit code, ``Report.as_dict()``, the JSON report as they print it with
    ``--format json``). Raises InputProblem for an input leakhunt cannot read."""

    def session_for_dump(target: Target) -> KernelSession:
        return open_session(target, symbol_path)

    try:
        target = open_source(path)
        try:
            report = run_analysis(target, Options(), session_for_dump if isinstance(target, DumpFileTarget) else None)
        finally:
            target.close()
    except DamagedDumpError as error:  # truncated or corrupt: refused, with a status of its own
        raise InputProblem(str(error), STATUS_DAMAGED) from None
    except TargetError as error:  # SnapshotError and DumpFileError too: missing, not a dump, unreadable
        raise InputProblem(str(error)) from None
    text = render_json(report)
    return exit_code_for(report), json.loads(text), text  # parsing the text back costs less than as_dict()


def worker_name(pid: Optional[int] = None) -> str:
    """How a record names the process that analyzed it: host:pid (this process by default)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def make_record(item: InputFile, status: str, exit_code: Optional[int], report: Optional[Dict[str, Any]],
                duration_s: float, worker: str, error: str = "", crash_time: Optional[str] = None) -> Dict[str, Any]:
    """One line of results.jsonl."""
    key = bucket_key(status, report)
    bugcheck = None
    if report is not None:
        section = report["bugcheck"]
        bugcheck = {"code": section["code"], "name": section["name"],
                    "parameters": [parameter["value"] for parameter in section["parameters"]]}
    followup = ((report or {}).get("analyze") or {}).get("followup") if named_failure_bucket(report or {}) else None
    return {"path": item.path, "size": item.size, "mtime": item.mtime, "status": status, "exit_code": exit_code,
            "bucket": key, "bucket_hash": bucket_hash(key), "bucket_version": BUCKET_VERSION,
            "bucket_followup": followup, "bugcheck": bugcheck,
            "culprit": _culprit(report),
            "dump_time": crash_time, "duration_s": round(duration_s, 4), "worker": worker,
            "leakhunt_version": __version__, "error": one_line(error) if error else None}


def _culprit(report: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The record's culprit: the first suspect, with its image's timestamp from the report's module list
    (small dumps list their modules) and its version where the report's !analyze fields have it."""
    culprit = culprit_of(report) if report is not None else None
    if culprit is None or not culprit.get("image"):
        return culprit
    base = report["suspects"][0].get("image_base")
    for module in report.get("modules") or []:
        if module.get("base") == base or (module.get("image") or "").lower() == culprit["image"].lower():
            if module.get("timestamp") is not None:
                culprit["image_timestamp"] = module["timestamp"]
            break
    summary = report.get("analyze") or {}
    if summary.get("image_version") and (summary.get("image_name") or "").lower() == culprit["image"].lower():
        culprit["image_version"] = summary["image_version"]
    return culprit


def _test_fault(path: str) -> None:
    """The misbehaviour LEAKHUNT_TEST_FAULTS asks for on this input (tests only)."""
    faults = os.environ.get(TEST_FAULTS_VARIABLE)
    if not faults:
        return
    for entry in faults.split(","):
        name, _, action = entry.partition("=")
        if name != os.path.basename(path):
            continue
        if action.startswith("sleep:"):
            time.sleep(float(action.split(":", 1)[1]))
        elif action == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif action == "exit":
            os._exit(70)


def run_task(item: InputFile) -> Tuple[Dict[str, Any], Optional[str]]:
    """Analyze one input: (its record, its JSON report or None). Never raises for a bad input."""
    started = time.perf_counter()
    worker = worker_name()
    if item.problem:
        return make_record(item, STATUS_INPUT_ERROR, EXIT_INPUT, None, 0.0, worker,
                           f"{item.path} {item.problem}"), None
    try:
        _test_fault(item.path)
        exit_code, report, text = analyze_file(item.path, item.symbol_path)
    except InputProblem as problem:
        return make_record(item, problem.status, EXIT_INPUT, None, time.perf_counter() - started, worker,
                           str(problem)), None
    except Exception as error:  # a bug in leakhunt: this input's status says so, the run goes on
        return make_record(item, STATUS_ANALYSIS_ERROR, EXIT_INTERNAL, None, time.perf_counter() - started, worker,
                           f"internal error: {type(error).__name__}: {error}"), None
    record = make_record(item, STATUS_ANALYZED, exit_code, report, time.perf_counter() - started, worker,
                         crash_time=report.get("crash_time"))
    return record, text

