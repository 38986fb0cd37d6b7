"""Bucket keys: which dumps are the same failure, in the spirit of ``!analyze``'s FAILURE_BUCKET_ID.

A key is built from the report only, from what identifies the bug and nothing that differs between
two crashes of the same bug (no addresses, offsets, counts, paths or times):

    <code>[_<variant>]_<failure bucket>    e.g. 0x7e_AV_amdppm!WriteIoMemRawEx, where a symbol file named the
                                          followup function (the report's ``analyze.failure_bucket``)
    <code>[_<variant>]_<culprit image>      e.g. 0x76_0_leakyflt.sys, 0xcb_current_leakyflt.sys
    <code>[_<variant>]_NO_SUSPECT           the report names nobody (or the hunt was not possible)
    DAMAGED_DUMP, INPUT_ERROR, ANALYSIS_ERROR, TIMEOUT, CRASHED   the input was not analyzed

- ``code``: the bug check code in lower-case hex; the "_M" form (0x10000000 added) of a code in
  leakhunt's catalog is folded into its base code, as the catalog does.
- ``variant``: only for the bug checks whose variants are different bugs: the P1 subcode (hex, no
  ``0x``) where P1 selects the form (0x76: 0 = pages left locked, 1 = unlock of unlocked pages; 0x4E,
  0xD9, 0xC4 subcodes), and the parameter format for 0xCB (``current`` or ``legacy``).
- ``failure bucket``: ``!analyze``'s FAILURE_BUCKET_ID as the report gives it, when the followup is a
  function a symbol file named (the faulting code, or the first frame outside nt and hal of the unwound
  stack): crashes in different functions of one driver are different bugs. Characters other than
  letters, digits, ``.``, ``-``, ``_`` and ``!`` become ``_``.
- ``culprit``: else the image of the most likely suspect (``report["suspects"][0]``), in lower case; the
  driver name's last component when the image is unknown. Characters other than letters, digits,
  ``.``, ``-`` and ``_`` become ``_``.

BUCKET_VERSION changes whenever these rules change, so that keys of different versions are never
compared as if they were the same: each record of results.jsonl carries the version it was bucketed
with, and a run resumed over an earlier version's records keeps their keys (summary.json counts the
records of each version). Version 1 had no failure-bucket keys.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, Optional

from ..bugchecks import lookup
from .inputs import (STATUS_ANALYSIS_ERROR, STATUS_ANALYZED, STATUS_CRASHED, STATUS_DAMAGED, STATUS_INPUT_ERROR,
                     STATUS_TIMEOUT)

BUCKET_VERSION = 2

NO_SUSPECT = "NO_SUSPECT"
FAILURE_BUCKETS = {STATUS_DAMAGED: "DAMAGED_DUMP", STATUS_INPUT_ERROR: "INPUT_ERROR",
                   STATUS_ANALYSIS_ERROR: "ANALYSIS_ERROR", STATUS_TIMEOUT: "TIMEOUT", STATUS_CRASHED: "CRASHED"}

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_UNSAFE_IN_FUNCTION = re.compile(r"[^A-Za-z0-9._!-]+")


def _parameter(report: Dict[str, Any], index: int) -> int:
    for parameter in report["bugcheck"]["parameters"]:
        if parameter["index"] == index:
            return int(parameter["value"], 16)
    return 0


def variant_of(report: Dict[str, Any]) -> Optional[str]:
    """The variant part of the key, or None where the bug check has a single form."""
    code = int(report["bugcheck"]["code"], 16)
    entry = lookup(code)
    if entry is None or not entry.selector:
        return None
    if entry.selector == "p1":
        return f"{_parameter(report, 1):x}"
    # The format an analysis settled on (it may re-decode 0xCB) is the one the report's title names.
    title = report["bugcheck"].get("variant") or ""
    for variant in entry.variants:
        if variant.title == title:
            return variant.key
    return "current" if _parameter(report, 2) == 0 else "legacy"


def culprit_of(report: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``{driver, image, confidence}`` of the most likely suspect, or None."""
    suspects = report.get("suspects") or []
    if not suspects:
        return None
    first = suspects[0]
    return {"driver": first.get("driver"), "image": first.get("image"), "confidence": first.get("confidence")}


def _culprit_label(culprit: Dict[str, Any]) -> str:
    name = culprit.get("image") or (culprit.get("driver") or "").replace("/", "\\").rsplit("\\", 1)[-1]
    label = _UNSAFE.sub("_", name.lower()).strip("_")
    return label or NO_SUSPECT


def bucket_key(status: str, report: Optional[Dict[str, Any]]) -> str:
    """The bucket of one result: its status's bucket when it was not analyzed, else from its report."""
    if status != STATUS_ANALYZED or report is None:
        return FAILURE_BUCKETS.get(status, FAILURE_BUCKETS[STATUS_ANALYSIS_ERROR])
    code = int(report["bugcheck"]["code"], 16)
    entry = lookup(code)
    parts = [f"{entry.code if entry else code:#x}"]
    variant = variant_of(report)
    if variant is not None:
        parts.append(variant)
    named = named_failure_bucket(report)
    culprit = culprit_of(report)
    parts.append(named or (_culprit_label(culprit) if culprit else NO_SUSPECT))
    return "_".join(parts)


def named_failure_bucket(report: Dict[str, Any]) -> Optional[str]:
    """The report's FAILURE_BUCKET_ID when a symbol file named its followup function, else None."""
    summary = report.get("analyze") or {}
    bucket = summary.get("failure_bucket") or ""
    if "!" not in bucket or bucket.endswith("!unknown_function"):
        return None
    return _UNSAFE_IN_FUNCTION.sub("_", bucket)


def bucket_hash(key: str) -> str:
    """A short stable identifier of a key and its rules' version (for file names, URLs, databases)."""
    return hashlib.sha256(f"{BUCKET_VERSION}:{key}".encode("utf-8")).hexdigest()[:16]
