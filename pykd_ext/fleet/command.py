"""``leakhunt triage``: analyze every input, bucket the results, write --out, print the top buckets.

Exit codes (pykd_ext/console.py): 0 every input was analyzed, 1 some were not (their status says why,
and the summary lists them), 2 usage (bad arguments, a path given on the command line that does not
exist, an unusable --out folder or cluster), 3 the inputs named hold no dump or snapshot, 6 the
results could not be written (a full disk...), 130 interrupted (what finished is kept; --resume
carries on).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import List, Optional

from ..console import (EXIT_INPUT, EXIT_INTERRUPTED, EXIT_NO_SUSPECT, EXIT_SUSPECT, OutputError, UsageError,
                       is_terminal, printable, stderr_line, write_report)
from .inputs import (DEFAULT_GLOBS, STATUS_ANALYZED, TIMEOUT_BASE_S, TIMEOUT_PER_GIB_S, InputFile, read_path_list,
                     timeout_for_size)

EXIT_ALL_ANALYZED = EXIT_SUSPECT
EXIT_SOME_FAILED = EXIT_NO_SUSPECT
EXIT_NOTHING_FOUND = EXIT_INPUT
SUMMARY_EVERY_S = 2.0  # buckets.csv and summary.json are rewritten at most this often during a run
TOP_BUCKETS = 10
FAILURES_LISTED = 10  # failed inputs named in the summary printed at the end (all are in results.jsonl)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "triage", help="analyze many dumps, each in isolation, and sort them into buckets",
        description="Analyze every dump and snapshot given (files, folders walked recursively, or a list), each "
                    "in a process of its own, on every core of this machine or on a Dask cluster; write the results "
                    "to --out as they arrive and sort them into buckets.")
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="dump or snapshot files, or folders to walk")
    parser.add_argument("--from", dest="from_list", metavar="FILE", help="read more paths from FILE (one a line; - for stdin)")
    parser.add_argument("--glob", action="append", metavar="PATTERN",
                        help=f"file names to take in folders, any case (repeatable; default {' '.join(DEFAULT_GLOBS)})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where results.jsonl, reports/, buckets.csv, summary.json and report.html go")
    parser.add_argument("--jobs", type=positive_int, metavar="N", help="worker processes of the local engine (default: one per core)")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help=f"stop the analysis of one input after this long (default: {TIMEOUT_BASE_S:g} s + "
                             f"{TIMEOUT_PER_GIB_S:g} s per GiB of the file)")
    parser.add_argument("--symbol-path", metavar="PATH",
                        help="where to find the kernels' symbols, as for leakhunt analyze (default: "
                             "$_NT_SYMBOL_PATH); on a cluster, paths are the workers'")
    parser.add_argument("--resume", action="store_true",
                        help="carry on a run in --out: skip inputs already there with the same path, size and mtime")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask cluster, e.g. tcp://scheduler:8786")
    cluster.add_argument("--scheduler-file", metavar="FILE", help="run on the Dask cluster this scheduler file names")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


class Progress:
    """done/total, failures, rate and ETA on one stderr line, when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled and total > 0
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, record) -> None:
        self.done += 1
        self.failed += record["status"] != STATUS_ANALYZED
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and self.done < self.total):
            return
        self._last = now
        rate = self.done / max(now - self.started, 1e-6)
        eta = (self.total - self.done) / rate if rate else 0
        sys.stderr.write(f"\rtriage: {self.done}/{self.total} done, {self.failed} failed, {rate:.1f}/s, "
                         f"ETA {eta:.0f} s   ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _paths(args) -> List[str]:
    paths = list(args.inputs)
    if args.from_list:
        try:
            if args.from_list == "-":
                paths += read_path_list(sys.stdin)
            else:
                with open(args.from_list, "r", encoding="utf-8", errors="surrogateescape") as handle:
                    paths += read_path_list(handle)
        except OSError as error:
            raise UsageError(f"cannot read the list {args.from_list}: {error.strerror or error}") from None
    if not paths:
        raise UsageError("nothing to triage: give dump files or folders, or --from FILE")
    if not (args.scheduler or args.scheduler_file):  # on a cluster, paths are the workers' to look at
        missing = [path for path in args.inputs if not os.path.lexists(path)]
        if missing:
            raise UsageError(f"no such file or folder: {', '.join(missing)}")
    return [os.path.abspath(path) for path in paths]  # as the workers will see them (shared storage)


def _engine(args):
    if args.scheduler or args.scheduler_file:
        from .dask_engine import DaskEngine, EngineError
        try:
            return DaskEngine(args.scheduler, args.scheduler_file)
        except EngineError as error:
            raise UsageError(str(error)) from None
    from .local import LocalEngine
    return LocalEngine(args.jobs)


def _top_table(summary) -> str:
    """The largest buckets as a plain table, columns padded to their widest cell."""
    header = ("bucket", "dumps", "share", "culprit", "confidence")
    rows = [(b["bucket"], str(b["count"]), f"{100 * b['share']:.1f}%",
             b["culprit_driver"] or b["culprit_image"] or "-", b["confidence_max"] or "-")
            for b in summary["buckets"][:TOP_BUCKETS]]
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, tuple("-" * width for width in widths)] + rows]
    more = len(summary["buckets"]) - TOP_BUCKETS
    if more > 0:
        lines.append(f"... and {more} more bucket(s)")
    return "\n".join(lines) + "\n"


def _failures_text(failed: List[dict]) -> str:
    """One line per input that was not analyzed (status and reason), up to FAILURES_LISTED."""
    lines = []
    for record in failed[:FAILURES_LISTED]:
        path, error = record["path"], record.get("error") or ""
        said = error if error.startswith(path) else f"{path}: {error}" if error else path
        lines.append(f"  {record['status']}: {printable(said)}")
    if len(failed) > FAILURES_LISTED:
        lines.append(f"  ... and {len(failed) - FAILURES_LISTED} more (every one, with its reason, in results.jsonl)")
    return "".join(line + "\n" for line in lines)


def command_triage(args) -> int:
    # Loaded by the command only: ``leakhunt --help`` loads none of it (nor numpy below it).
    from .html import render_html
    from .output import HTML_NAME, ResultsStore

    globs = args.glob or list(DEFAULT_GLOBS)
    paths = _paths(args)
    try:
        store = ResultsStore(args.out, args.resume)
    except OutputError as error:
        raise UsageError(str(error)) from None
    engine = None
    interrupted = False
    listed: List[InputFile] = []
    todo: List[InputFile] = []
    progress: Optional[Progress] = None
    try:
        engine = _engine(args)
        symbol_path = args.symbol_path if args.symbol_path is not None else os.environ.get("_NT_SYMBOL_PATH")
        listed = engine.list_inputs(paths, globs)
        todo = [dataclasses.replace(item, symbol_path=symbol_path or None) for item in listed
                if not store.is_done(item)]
        progress = Progress(len(todo), is_terminal(sys.stderr))
        last_summary = time.monotonic()

        def deliver(outcome) -> None:
            nonlocal last_summary
            record, report_json = outcome
            store.add(record, report_json)
            progress.update(record)
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                store.write_summaries()
                last_summary = time.monotonic()

        def timeout_for(item: InputFile) -> float:
            return args.timeout or timeout_for_size(item.size)

        engine.run(todo, timeout_for, deliver)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.finish()
        if engine is not None:
            engine.close()
        summary = _close_store(store, render_html, HTML_NAME)
    if not listed:
        stderr_line(f"warning: no dump or snapshot found in {', '.join(paths)} (file names matching "
                    f"{' '.join(globs)}, any case); --glob takes other names")
        return EXIT_NOTHING_FOUND
    current = [store.records.get(item.path) for item in listed]
    failed = [record for record in current if record is not None and record["status"] != STATUS_ANALYZED]
    not_done = sum(1 for record in current if record is None)
    text = _top_table(summary) + _failures_text(failed)
    if interrupted:
        done = len(todo) - not_done
        text += (f"{len(listed)} input(s): interrupted after {done} of the {len(todo)} this run had to do; "
                 f"{len(listed) - len(failed) - not_done} analyzed, {len(failed)} not, {not_done} not yet; "
                 f"results in {args.out}\n")
    else:
        text += (f"{len(listed)} input(s): {len(listed) - len(failed)} analyzed, {len(failed)} not; "
                 f"results in {args.out}\n")
    write_report(text)
    if interrupted:
        stderr_line(f"interrupted: the results so far are in {args.out}; run the same command again with --resume "
                    f"to carry on where it stopped")
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if failed or not_done else EXIT_ALL_ANALYZED


def _close_store(store, render_html, html_name: str):
    """The summaries and report.html written one last time, and results.jsonl closed; the summary."""
    try:
        summary = store.write_summaries()
        store.write_text(html_name, render_html(summary))
    finally:
        store.close()
    return summary
