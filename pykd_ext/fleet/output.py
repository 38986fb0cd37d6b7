"""The --out folder: results.jsonl, reports/, buckets.csv, summary.json (report.html: see html.py).

``results.jsonl`` gets one line per input as its result arrives (flushed at once), and the input's
full JSON report goes to ``reports/`` first, so an interrupted run loses nothing that finished.
``buckets.csv`` and ``summary.json`` are rewritten (atomically: a temporary file renamed over the
old one) from every record while the run goes on and at its end. With --resume the existing
results.jsonl is read back: a line cut short by a killed run is dropped (and cut off the file), and
a path listed twice counts with its latest record.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .. import __version__
from ..console import OutputError, why_not_written
from ..outfiles import make_folder, open_for_append, refuse_unless_replaceable, write_text_atomically
from .buckets import BUCKET_VERSION
from .inputs import STATUS_ANALYZED, STATUSES, InputFile

RESULTS_NAME = "results.jsonl"
REPORTS_DIR = "reports"
BUCKETS_NAME = "buckets.csv"
SUMMARY_NAME = "summary.json"
HTML_NAME = "report.html"
EXAMPLES_PER_BUCKET = 5
CONFIDENCE_ORDER = ("low", "medium", "high")
BUCKET_COLUMNS = ("bucket", "bucket_hash", "count", "share", "first_seen", "last_seen", "culprit_image",
                  "culprit_driver", "confidence_min", "confidence_max", "image_timestamps", "image_versions",
                  "examples")

# What a line of results.jsonl needs to count (a line without them is not one this version wrote).
REQUIRED_KEYS = {"path", "size", "mtime", "status", "bucket", "bucket_hash", "culprit"}

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def seen_time(record: Dict[str, Any]) -> Optional[str]:
    """When a dump was written: the crash time from its header, else the file's modification time."""
    if record.get("dump_time"):
        return record["dump_time"]
    if record.get("mtime") is not None:
        return datetime.fromtimestamp(record["mtime"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


class ResultsStore:
    """The records of a run (and, with resume, of the runs before it), and the files that hold them.

    Every file goes through pykd_ext/outfiles.py: the --out folder may be a link the user named, but
    nothing inside it is written through a link or over anything but a regular file. Errors are
    OutputError (one line)."""

    def __init__(self, folder: str, resume: bool):
        self.folder = folder
        self.results_path = os.path.join(folder, RESULTS_NAME)
        self.reports_path = os.path.join(folder, REPORTS_DIR)
        self.records: Dict[str, Dict[str, Any]] = {}
        self.done: Set[Tuple[str, Optional[int], Optional[float]]] = set()
        make_folder(folder, "the --out folder", named=True)
        make_folder(self.reports_path, "the reports folder")
        refuse_unless_replaceable(self.results_path, overwrite=True, what="results file")
        try:
            if os.path.exists(self.results_path) and os.path.getsize(self.results_path):
                if not resume:
                    raise OutputError(f"{folder} already holds the results of a run: pass --resume to carry it "
                                      f"on, or choose another --out")
                self._load()
        except OSError as error:
            raise OutputError(f"cannot read {self.results_path}: {error.strerror or error}") from None
        self._results = open_for_append(self.results_path, "results file")

    def write_text(self, name: str, text: str) -> None:
        """Replace the file ``name`` of the --out folder with ``text``, whole or not at all."""
        write_text_atomically(os.path.join(self.folder, name), text, "results file")

    def _load(self) -> None:
        with open(self.results_path, "rb") as handle:
            content = handle.read()
        complete = content[:content.rfind(b"\n") + 1]
        if len(complete) != len(content):  # the last line of a killed run: dropped
            with open(self.results_path, "r+b") as handle:
                handle.truncate(len(complete))
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and REQUIRED_KEYS <= set(record):
                self._remember(record)

    def _remember(self, record: Dict[str, Any]) -> None:
        self.records[record["path"]] = record
        self.done.add((record["path"], record["size"], record["mtime"]))

    def is_done(self, item: InputFile) -> bool:
        return item.key in self.done

    def report_name(self, path: str) -> str:
        digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        stem = _UNSAFE_NAME.sub("_", os.path.basename(path))[:80]
        return f"{REPORTS_DIR}/{stem}.{digest}.json"

    def add(self, record: Dict[str, Any], report_json: Optional[str]) -> None:
        record = dict(record)
        record["report"] = None
        if report_json is not None:
            name = self.report_name(record["path"])
            self.write_text(name, report_json)
            record["report"] = name
        try:
            self._results.write(json.dumps(record) + "\n")  # ASCII: any file name survives, as \uXXXX escapes
            self._results.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.results_path}: {why_not_written(error)}") from None
        self._remember(record)

    def close(self) -> None:
        try:
            self._results.close()
        except OSError:
            pass  # what could not be written was said when it was written

    # ---- summaries ------------------------------------------------------------------------------

    def buckets(self) -> List[Dict[str, Any]]:
        """One entry per bucket, largest first."""
        return summarize_buckets(self.records.values())

    def write_summaries(self) -> Dict[str, Any]:
        buckets = self.buckets()
        summary = summary_of(self.records.values(), buckets)
        self.write_text(SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        self.write_text(BUCKETS_NAME, buckets_csv(buckets))
        return summary


def _confidence_range(values: Iterable[str]) -> Tuple[Optional[str], Optional[str]]:
    ranked = sorted((v for v in values if v in CONFIDENCE_ORDER), key=CONFIDENCE_ORDER.index)
    return (ranked[0], ranked[-1]) if ranked else (None, None)


def summarize_buckets(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    grouped: Dict[str, List[Dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["bucket"], []).append(record)
    total = sum(len(members) for members in grouped.values())
    buckets = []
    for key, members in grouped.items():
        members.sort(key=lambda r: (seen_time(r) or "", r["path"]))
        times = [t for t in (seen_time(r) for r in members) if t]
        culprits = [r["culprit"] for r in members if r.get("culprit")]
        images = Counter(c.get("image") or c.get("driver") for c in culprits)
        drivers = Counter(c.get("driver") for c in culprits if c.get("driver"))
        low, high = _confidence_range(c.get("confidence") for c in culprits)
        buckets.append({
            "bucket": key, "bucket_hash": members[0]["bucket_hash"], "count": len(members),
            "share": round(len(members) / total, 4) if total else 0.0,
            "first_seen": times[0] if times else None, "last_seen": times[-1] if times else None,
            "culprit_image": images.most_common(1)[0][0] if images else None,
            "culprit_driver": drivers.most_common(1)[0][0] if drivers else None,
            "confidence_min": low, "confidence_max": high,
            "image_timestamps": sorted({str(c["image_timestamp"]) for c in culprits if c.get("image_timestamp")}),
            "image_versions": sorted({str(c["image_version"]) for c in culprits if c.get("image_version")}),
            "statuses": dict(Counter(r["status"] for r in members)),
            "examples": [r["path"] for r in members[:EXAMPLES_PER_BUCKET]],
            # Each example's JSON report under reports/ (null when it has none), for report.html's links.
            "example_reports": [r.get("report") for r in members[:EXAMPLES_PER_BUCKET]],
        })
    buckets.sort(key=lambda b: (-b["count"], b["bucket"]))
    return buckets


def per_day(records: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    """{day: {bucket: count}} by the dumps' time (see seen_time)."""
    days: Dict[str, Counter] = {}
    for record in records:
        moment = seen_time(record)
        if moment:
            days.setdefault(moment[:10], Counter())[record["bucket"]] += 1
    return {day: dict(days[day]) for day in sorted(days)}


def summary_of(records: Iterable[Dict[str, Any]], buckets: List[Dict[str, Any]]) -> Dict[str, Any]:
    records = list(records)
    statuses = Counter(r["status"] for r in records)
    return {
        "bucket_version": BUCKET_VERSION,
        # Records bucketed by each version's rules (a resumed run may hold an earlier version's).
        "bucket_versions": dict(sorted(Counter(str(r.get("bucket_version", 1)) for r in records).items())),
        "leakhunt_version": __version__,
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inputs": len(records),
        "analyzed": statuses.get(STATUS_ANALYZED, 0),
        "failed": len(records) - statuses.get(STATUS_ANALYZED, 0),
        "by_status": {status: statuses.get(status, 0) for status in STATUSES},
        "buckets": buckets,
        "per_day": per_day(records),
    }


def buckets_csv(buckets: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BUCKET_COLUMNS)
    for bucket in buckets:
        writer.writerow([";".join(bucket[c]) if isinstance(bucket[c], list) else
                         ("" if bucket[c] is None else bucket[c]) for c in BUCKET_COLUMNS])
    return out.getvalue()
