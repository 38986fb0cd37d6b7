"""The Report: plain data produced by an analysis and consumed by the renderers.

``Report.as_dict()`` is the JSON contract for automation (see README, "JSON report"). Its shape is
versioned by SCHEMA_VERSION: keys are only ever added within a major version.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .targets.base import hex_address

SCHEMA_VERSION = "1.0"

HIGH = "high"
MEDIUM = "medium"
LOW = "low"
CONFIDENCE_RANK = {HIGH: 3, MEDIUM: 2, LOW: 1}


def _hex(value: Optional[int]) -> Optional[str]:
    return None if value is None else hex_address(value)


@dataclass
class Parameter:
    index: int
    value: int
    meaning: str

    def as_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "value": _hex(self.value), "meaning": self.meaning}


@dataclass
class BugCheckSection:
    code: int
    name: str
    summary: str
    variant: str  # the selected parameter form, e.g. "P1=0x0: process terminating with locked pages"
    parameters: List[Parameter]
    known: bool = True

    def as_dict(self) -> Dict[str, Any]:
        return {"code": _hex(self.code), "name": self.name, "known": self.known, "summary": self.summary,
                "variant": self.variant, "parameters": [p.as_dict() for p in self.parameters]}


@dataclass
class Suspect:
    driver: Optional[str]  # "\Driver\leakyflt" when known
    image: Optional[str]  # "leakyflt.sys" when known
    confidence: str
    evidence: List[str] = field(default_factory=list)
    driver_object: Optional[int] = None
    image_base: Optional[int] = None
    score: int = 0  # ranking weight: the sum of the evidence weights

    @property
    def label(self) -> str:
        if self.driver and self.image:
            return f"{self.driver} ({self.image})"
        return self.driver or self.image or "unknown driver"

    def as_dict(self) -> Dict[str, Any]:
        return {"driver": self.driver, "image": self.image, "confidence": self.confidence,
                "driver_object": _hex(self.driver_object), "image_base": _hex(self.image_base),
                "evidence": list(self.evidence)}


@dataclass
class MdlRecord:
    address: int
    process: int
    flags: int
    flag_names: List[str]
    pages: int
    byte_count: int
    start_va: int
    locked: bool
    classification: str  # "locked", "unlocked", "not an MDL"
    irps: List[int] = field(default_factory=list)
    chained_from: Optional[int] = None  # the MDL whose Next points here, when found through a chain
    problems: List[str] = field(default_factory=list)
    role: str = ""  # e.g. "P2 of the bug check"

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "process": _hex(self.process), "flags": _hex(self.flags),
                "flag_names": list(self.flag_names), "pages": self.pages, "byte_count": self.byte_count,
                "start_va": _hex(self.start_va), "locked": self.locked, "classification": self.classification,
                "irps": [_hex(a) for a in self.irps], "chained_from": _hex(self.chained_from),
                "problems": list(self.problems), "role": self.role}


@dataclass
class StackRecord:
    number: int
    current: bool
    unused: bool
    major: int
    major_name: str
    minor: int
    control: int
    conditions: List[str]
    device: Optional[int]
    driver_object: Optional[int]
    driver: Optional[str]
    image: Optional[str]
    completion_routine: Optional[int]
    completion_symbol: Optional[str]
    context: Optional[int]
    file_object: Optional[int]

    def as_dict(self) -> Dict[str, Any]:
        return {"number": self.number, "current": self.current, "unused": self.unused, "major": self.major,
                "major_name": self.major_name, "minor": self.minor, "control": self.control,
                "conditions": list(self.conditions), "device": _hex(self.device),
                "driver_object": _hex(self.driver_object), "driver": self.driver, "image": self.image,
                "completion_routine": _hex(self.completion_routine), "completion_symbol": self.completion_symbol,
                "context": _hex(self.context), "file_object": _hex(self.file_object)}


@dataclass
class IrpRecord:
    address: int
    mdl_address: int
    stack_count: int
    current_location: int
    flags: int
    thread: Optional[int]
    file_object: Optional[int]
    file_name: Optional[str]
    stack: List[StackRecord]
    holds: List[int] = field(default_factory=list)  # the hunted MDLs this IRP's MDL chain reaches

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "mdl_address": _hex(self.mdl_address),
                "stack_count": self.stack_count, "current_location": self.current_location,
                "flags": _hex(self.flags), "thread": _hex(self.thread), "file_object": _hex(self.file_object),
                "file_name": self.file_name, "stack": [s.as_dict() for s in self.stack],
                "holds": [_hex(a) for a in self.holds]}


@dataclass
class Rejected:
    address: int
    what: str  # what it was a candidate for, e.g. "MDL (from a hit on the process pointer)"
    reasons: List[str]

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "candidate": self.what, "reasons": list(self.reasons)}


@dataclass
class Fact:
    """A labelled finding shown in the report's facts section, e.g. nt!KiBugCheckDriver."""

    label: str
    value: str
    note: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {"label": self.label, "value": self.value, "note": self.note}


@dataclass
class Report:
    tool_version: str
    source: str
    arch: str
    pointer_size: int
    build: Optional[int]
    bugcheck: BugCheckSection
    analysis: str = ""  # which analysis ran, e.g. "0x76 locked-pages hunt"
    verdict: str = ""  # one or two sentences
    suspects: List[Suspect] = field(default_factory=list)
    mdls: List[MdlRecord] = field(default_factory=list)
    irps: List[IrpRecord] = field(default_factory=list)
    locked_pages_expected: Optional[int] = None
    locked_pages_accounted: Optional[int] = None
    facts: List[Fact] = field(default_factory=list)
    next_steps: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    rejected: List[Rejected] = field(default_factory=list)
    layouts: Dict[str, str] = field(default_factory=dict)
    searches: int = 0  # passes over memory the hunt made
    partial: bool = False
    complete_hunt: bool = True  # False when the source lacked what the hunt needs (no memory to search)
    process: Optional[int] = None
    process_name: Optional[str] = None

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "tool": {"name": "leakhunt", "version": self.tool_version},
            "source": self.source,
            "target": {"arch": self.arch, "pointer_size": self.pointer_size, "build": self.build},
            "bugcheck": self.bugcheck.as_dict(),
            "analysis": self.analysis,
            "partial": self.partial,
            "hunt_possible": self.complete_hunt,
            "verdict": self.verdict,
            "suspects": [s.as_dict() for s in self.suspects],
            "process": {"address": _hex(self.process), "name": self.process_name} if self.process is not None else None,
            "mdls": [m.as_dict() for m in self.mdls],
            "irps": [i.as_dict() for i in self.irps],
            "locked_pages": {"expected": self.locked_pages_expected, "accounted": self.locked_pages_accounted},
            "facts": [f.as_dict() for f in self.facts],
            "next_steps": list(self.next_steps),
            "warnings": list(self.warnings),
            "rejected": [r.as_dict() for r in self.rejected],
            "layouts": dict(self.layouts),
            "search_passes": self.searches,
        }
