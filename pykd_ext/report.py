"""The Report: plain data produced by an analysis and consumed by the renderers.

``Report.as_dict()`` is the JSON contract for automation (see README, "JSON report"). Its shape is
versioned by SCHEMA_VERSION: keys are only ever added within a major version.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from .kernel.lock_entries import LockEntry
from .targets.base import SymbolicAddress, hex_address

SCHEMA_VERSION = "1.0"

HIGH = "high"
MEDIUM = "medium"
LOW = "low"
CONFIDENCE_RANK = {HIGH: 3, MEDIUM: 2, LOW: 1}


def _hex(value: Optional[int]) -> Optional[str]:
    return None if value is None else hex_address(value)


def bugcheck_code_text(code: int) -> str:
    """A bug check code as the documentation writes it in prose: ``0xCB``, ``0x1000007E``."""
    return f"0x{code:X}"


@dataclass
class Parameter:
    index: int
    value: int
    meaning: str
    module: Optional[str] = None  # the image the value lies in, e.g. "amdppm.sys"
    symbol: Optional[str] = None  # the value as module+offset, e.g. "amdppm+0x334c"
    unloaded: bool = False  # True when the image had been unloaded before the crash
    status: Optional[str] = None  # an NTSTATUS parameter named: "c0000005 STATUS_ACCESS_VIOLATION"

    def as_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "value": _hex(self.value), "meaning": self.meaning, "module": self.module,
                "symbol": self.symbol, "unloaded": self.unloaded, "status": self.status}


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
    mdls: List[int] = field(default_factory=list)  # the MDLs the evidence against it is about
    pages: Optional[int] = None  # the pages of those MDLs, when every one of them was decoded

    @property
    def label(self) -> str:
        if self.driver and self.image:
            return f"{self.driver} ({self.image})"
        return self.driver or self.image or "unknown driver"

    def as_dict(self) -> Dict[str, Any]:
        return {"driver": self.driver, "image": self.image, "confidence": self.confidence,
                "driver_object": _hex(self.driver_object), "image_base": _hex(self.image_base),
                "evidence": list(self.evidence), "mdls": [_hex(a) for a in self.mdls], "pages": self.pages}


# The kinds of place that hold an MDL's address (analyses/holders.py), as JSON names them.
IRP_HOLDER = "irp"
CHAIN_HOLDER = "mdl_chain"
IMAGE_HOLDER = "image"
STACK_HOLDER = "kernel_stack"
DEVICE_HOLDER = "device_extension"
POOL_HOLDER = "pool_block"
UNKNOWN_HOLDER = "unknown"


@dataclass
class HolderRecord:
    """A place holding a copy of an MDL's address (analyses/holders.py), as the report shows it."""

    address: Optional[int]  # where the copy is (the IRP, for an IRP; the MDL whose Next it is, for a chain)
    kind: str  # one of the *_HOLDER names above
    summary: str  # the MDLs table's "held by" cell
    description: str  # where it is, in words
    physical: Optional[int] = None
    driver: Optional[str] = None  # the driver it names, if any
    image: Optional[str] = None
    evidence: Optional[str] = None  # the kind of evidence it is (evidence.py), when it names a driver
    nobody: str = ""  # why it names nobody, when it does not
    irp: Optional[int] = None
    parent_mdl: Optional[int] = None
    device: Optional[int] = None
    module: Optional[str] = None
    section: Optional[str] = None
    pool_block: Optional[int] = None
    pool_block_size: Optional[int] = None
    pool_tag: Optional[str] = None
    pool_finder: Optional[str] = None  # "pool header", "VS chunk header and pool header", "big pool table"
    tag_images: Optional[List[str]] = None  # the loaded images holding the pool tag as a constant
    thread: Optional[int] = None
    followed: bool = False  # a pool block whose own address was searched for (its tag names no single driver)
    held_by: List["HolderRecord"] = field(default_factory=list)  # what holds the pool block (one level up)

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "kind": self.kind, "summary": self.summary,
                "description": self.description, "physical": _hex(self.physical), "driver": self.driver,
                "image": self.image, "evidence": self.evidence, "nobody": self.nobody or None,
                "irp": _hex(self.irp), "parent_mdl": _hex(self.parent_mdl), "device": _hex(self.device),
                "module": self.module, "section": self.section, "pool_block": _hex(self.pool_block),
                "pool_block_size": self.pool_block_size, "pool_tag": self.pool_tag, "pool_finder": self.pool_finder,
                "tag_images": self.tag_images, "thread": _hex(self.thread), "followed": self.followed,
                "held_by": [h.as_dict() for h in self.held_by]}


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
    holders: List[HolderRecord] = field(default_factory=list)  # every place found holding it, IRPs first

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "process": _hex(self.process), "flags": _hex(self.flags),
                "flag_names": list(self.flag_names), "pages": self.pages, "byte_count": self.byte_count,
                "start_va": _hex(self.start_va), "locked": self.locked, "classification": self.classification,
                "irps": [_hex(a) for a in self.irps], "chained_from": _hex(self.chained_from),
                "problems": list(self.problems), "role": self.role,
                "holders": [h.as_dict() for h in self.holders]}


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
    stack: List[StackRecord]  # location 1 (the lowest driver) first, as !irp lists them
    holds: List[int] = field(default_factory=list)  # the hunted MDLs this IRP's MDL chain reaches
    flag_names: List[str] = field(default_factory=list)
    cancel: bool = False  # IRP.Cancel
    cancel_routine: Optional[int] = None  # IRP.CancelRoutine
    cancel_symbol: Optional[str] = None  # "leakyflt+0x1b00"
    current_stack_address: Optional[int] = None  # the current IO_STACK_LOCATION (!irp's "= 0x...")
    # The thread's Cid (ETHREAD.Cid.UniqueProcess / UniqueThread), when its layout is known.
    thread_process_id: Optional[int] = None
    thread_id: Optional[int] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "mdl_address": _hex(self.mdl_address),
                "stack_count": self.stack_count, "current_location": self.current_location,
                "flags": _hex(self.flags), "thread": _hex(self.thread), "file_object": _hex(self.file_object),
                "file_name": self.file_name, "stack": [s.as_dict() for s in self.stack],
                "holds": [_hex(a) for a in self.holds], "flag_names": list(self.flag_names),
                "cancel": self.cancel, "cancel_routine": _hex(self.cancel_routine),
                "cancel_symbol": self.cancel_symbol, "current_stack_address": _hex(self.current_stack_address),
                "thread_process_id": self.thread_process_id, "thread_id": self.thread_id}


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
class FrameRecord:
    """One saved return address of a stack trace, placed in a loaded image when possible."""

    address: int
    symbol: str  # "leakyflt+0x1a30", or the bare address outside every image
    module: Optional[str]  # "leakyflt", "nt"; None outside every image

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "symbol": self.symbol, "module": self.module}


@dataclass
class TrackerRecord:
    """A `_LOCK_TRACKER`: one MDL whose pages the memory manager tracked as locked (TrackLockedPages)."""

    address: int
    mdl: int
    start_va: int
    pages: int  # Count
    first_pfn: int  # Page
    who: int
    process: int
    stack: List[FrameRecord]
    locker: Optional[str]  # module of the first saved frame outside nt and hal
    locker_image: Optional[str]
    problems: List[str] = field(default_factory=list)
    role: str = ""  # e.g. "P1: tracker of the leaked MDL" or "LockTree"
    pool_tag: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "mdl": _hex(self.mdl), "start_va": _hex(self.start_va),
                "pages": self.pages, "first_pfn": _hex(self.first_pfn), "who": self.who,
                "process": _hex(self.process), "stack": [f.as_dict() for f in self.stack], "locker": self.locker,
                "locker_image": self.locker_image, "pool_tag": self.pool_tag, "problems": list(self.problems),
                "role": self.role}


@dataclass
class LockerGroup:
    """The tracked MDLs that one module locked (module None: no saved frame outside nt and hal)."""

    module: Optional[str]
    image: Optional[str]
    trackers: List[int]
    mdls: List[int]
    pages: int

    def as_dict(self) -> Dict[str, Any]:
        return {"module": self.module, "image": self.image, "trackers": [_hex(a) for a in self.trackers],
                "mdls": [_hex(a) for a in self.mdls], "pages": self.pages}


@dataclass
class TrackedPages:
    """The `!lockedpages` view: the process's `_LOCK_HEADER` and every tracker in its trees."""

    header: int
    source: str  # where the header pointer came from: "P4" or "EPROCESS.LockedPagesList"
    process: Optional[int]
    count: Optional[int]  # _LOCK_HEADER.Count
    valid: Optional[int]  # _LOCK_HEADER.Valid
    trackers: List[TrackerRecord] = field(default_factory=list)
    groups: List[LockerGroup] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    truncated: bool = False  # the walk stopped at its cap

    def as_dict(self) -> Dict[str, Any]:
        return {"header": _hex(self.header), "source": self.source, "process": _hex(self.process),
                "header_count": self.count, "valid": self.valid,
                "trackers": [t.as_dict() for t in self.trackers], "by_module": [g.as_dict() for g in self.groups],
                "problems": list(self.problems), "truncated": self.truncated}


@dataclass
class ThreadRecord:
    """The thread of a lock-entry bug check (P1), with its process and start address."""

    address: int
    process: Optional[int] = None
    process_name: Optional[str] = None
    process_id: Optional[int] = None  # EPROCESS.UniqueProcessId, when its layout is known
    thread_id: Optional[int] = None
    start_address: Optional[int] = None
    start_symbol: Optional[str] = None
    start_module: Optional[str] = None
    win32_start_address: Optional[int] = None
    win32_start_symbol: Optional[str] = None
    problems: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "process": _hex(self.process), "process_name": self.process_name,
                "process_id": self.process_id, "thread_id": self.thread_id,
                "start_address": _hex(self.start_address), "start_symbol": self.start_symbol,
                "start_module": self.start_module, "win32_start_address": _hex(self.win32_start_address),
                "win32_start_symbol": self.win32_start_symbol, "problems": list(self.problems)}


@dataclass
class LockRecord:
    """Where a lock lives: a global inside a driver image, a pool block, or elsewhere."""

    address: int
    location: str  # "image", "pool", "kernel memory", "user memory"
    module: Optional[str] = None
    image: Optional[str] = None
    section: Optional[str] = None  # PE section of the image holding it, when its headers are readable
    pool_block: Optional[int] = None
    pool_tag: Optional[str] = None
    problems: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "location": self.location, "module": self.module,
                "image": self.image, "section": self.section, "pool_block": _hex(self.pool_block),
                "pool_tag": self.pool_tag, "problems": list(self.problems)}


@dataclass
class LockEntryRecord(LockEntry):
    """A decoded AutoBoost `_KLOCK_ENTRY` and its part in the report."""

    role: str = ""  # "P2: the leaked entry", "thread entry 3"

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "role": self.role, "lock": _hex(self.lock),
                "lock_state": _hex(self.lock_state), "in_tree": self.in_tree,
                "cross_thread_releasable": self.cross_thread_releasable, "busy": self.busy,
                "acquired": self.acquired, "waiting": self.waiting, "session_id": self.session_id,
                "cpu_boosts": _hex(self.cpu_boosts), "io_boost": self.io_boost, "io_qos_boost": self.io_qos_boost,
                "residual_boosts": self.residual_boosts, "problems": list(self.problems)}


@dataclass
class NextStep:
    """A next step made of sub-steps (a procedure): JSON keeps it one whole sentence."""

    text: str  # "Confirm the culprit by reproducing with locked-page tracking on:"
    substeps: Tuple[str, ...] = ()

    def whole(self) -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return " ".join([self.text] + [f"({letters[i]}) {sub}" for i, sub in enumerate(self.substeps)])


def step_text(step: Union[str, NextStep]) -> str:
    """A next step as one sentence (the JSON form)."""
    return step.whole() if isinstance(step, NextStep) else step


@dataclass
class ModuleRecord:
    """A loaded image, like a line of ``lm t``."""

    name: str
    image: str
    base: int
    size: int
    timestamp: Optional[int] = None  # the PE TimeDateStamp, when the source recorded it

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "image": self.image, "base": _hex(self.base), "end": _hex(self.base + self.size),
                "size": _hex(self.size), "timestamp": _hex(self.timestamp)}


@dataclass
class UnloadedRecord:
    """An image unloaded before the crash, with the address range it had."""

    image: str
    start: int
    end: int
    truncated: bool = False  # the source kept only the first characters of the name

    def as_dict(self) -> Dict[str, Any]:
        return {"image": self.image, "start": _hex(self.start), "end": _hex(self.end), "truncated": self.truncated}


@dataclass
class StackCandidate:
    """A stack slot whose value lies inside a loaded image: a possible return address."""

    slot: int  # where on the stack
    value: int
    symbol: str  # "amdppm+0x334c"
    module: str

    def as_dict(self) -> Dict[str, Any]:
        return {"slot": _hex(self.slot), "value": _hex(self.value), "symbol": self.symbol, "module": self.module}


@dataclass
class StackScan:
    """The crashing thread's stack scanned for values inside loaded images (like ``dps``), not unwound."""

    base: int
    size: int
    candidates: List[StackCandidate] = field(default_factory=list)
    truncated: bool = False  # more candidates than the report keeps

    def as_dict(self) -> Dict[str, Any]:
        return {"method": "scan", "note": "return-address candidates found by scanning the stack for values inside "
                                          "loaded images, first (innermost) first; not an unwound call stack",
                "base": _hex(self.base), "size": _hex(self.size),
                "candidates": [c.as_dict() for c in self.candidates], "truncated": self.truncated}


@dataclass
class ExceptionRecord:
    """The exception a bug check names (0x7E P3...), as ``.exr`` decodes it."""

    address: int  # where the EXCEPTION_RECORD is
    code: int
    code_text: str  # "c0000005 (Access violation) STATUS_ACCESS_VIOLATION"
    flags: int
    exception_address: int
    exception_symbol: Optional[str]  # the faulting address placed in its image
    parameters: List[int]
    access: Optional[str] = None  # "read", "write", "execute" (access violations, in-page errors)
    accessed_address: Optional[int] = None
    io_status: Optional[str] = None  # an in-page error's failed I/O, named
    problems: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"address": _hex(self.address), "code": f"{self.code:#010x}", "code_text": self.code_text,
                "flags": f"{self.flags:#x}", "exception_address": _hex(self.exception_address),
                "exception_symbol": self.exception_symbol, "parameters": [_hex(p) for p in self.parameters],
                "access": self.access, "accessed_address": _hex(self.accessed_address), "io_status": self.io_status,
                "problems": list(self.problems)}


@dataclass
class AnalyzeSummary:
    """What ``!analyze -v``'s summary says (see analyses/summary.py): the followup place and a bucket."""

    failure_bucket: str  # "AV_amdppm!WriteIoMemRawEx", "0x76_leakyflt.sys"
    followup: str  # how the followup place was chosen, in words
    symbol_name: Optional[str] = None  # "amdppm!WriteIoMemRawEx+70"
    module_name: Optional[str] = None
    image_name: Optional[str] = None
    image_version: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"symbol_name": self.symbol_name, "module_name": self.module_name, "image_name": self.image_name,
                "image_version": self.image_version, "failure_bucket": self.failure_bucket,
                "followup": self.followup}


@dataclass
class CallFrame:
    """One frame of an unwound call stack, as ``k`` shows it."""

    number: int
    child_sp: int  # the stack pointer while the frame's function ran
    ip: int  # where it was
    return_address: Optional[int]  # where it returns to; None where the unwind stopped at this frame
    symbol: str  # the ip named: "amdppm!WriteIoMemRawEx+0x70"
    module: Optional[str]
    method: str  # how the frame was found: "context", "unwind data", "epilogue", "frame pointer chain"...
    trap_frame: Optional[int] = None  # the KTRAP_FRAME this frame's function (a kernel trap handler) built

    def as_dict(self) -> Dict[str, Any]:
        return {"number": self.number, "child_sp": _hex(self.child_sp), "ip": _hex(self.ip),
                "return_address": _hex(self.return_address), "symbol": self.symbol, "module": self.module,
                "method": self.method, "trap_frame": _hex(self.trap_frame)}


@dataclass
class CallStack:
    """The crashing thread's call stack, unwound from the images' unwind data, and where the unwind
    stopped; the values in images further up the stack, found by a scan (they may be stale)."""

    start: str  # which context it was unwound from
    context_address: Optional[int] = None  # the CONTEXT record's address, when it was one (.cxr)
    frames: List[CallFrame] = field(default_factory=list)
    stop_reason: str = ""
    stop: str = ""  # one line: why the unwind ended where it did
    complete: bool = False  # True when it reached the thread's first frame
    scan: List[StackCandidate] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {"start": self.start, "context_address": _hex(self.context_address),
                "frames": [f.as_dict() for f in self.frames],
                "stop": {"reason": self.stop_reason, "message": self.stop,
                         "frame": self.frames[-1].number if self.frames else None},
                "complete": self.complete, "scan_below": [c.as_dict() for c in self.scan]}


@dataclass
class RegisterRecord:
    """A register of the crash's context record, placed in an image when it points into one."""

    name: str
    value: int
    symbol: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "value": _hex(self.value), "symbol": self.symbol}


@dataclass
class Report:
    tool_version: str
    source: str
    arch: str
    pointer_size: int
    build: Optional[int]
    bugcheck: BugCheckSection
    crash_time: Optional[str] = None  # ISO 8601 UTC, when the source recorded it (a dump header's SystemTime)
    build_lab: Optional[str] = None  # the kernel's NtBuildLab, vertarget's "Built by"
    uptime_seconds: Optional[float] = None  # boot to crash (KUSER_SHARED_DATA.InterruptTime)
    analysis: str = ""  # which analysis ran, e.g. "0x76 locked-pages hunt"
    verdict: str = ""  # one or two sentences
    suspects: List[Suspect] = field(default_factory=list)
    mdls: List[MdlRecord] = field(default_factory=list)
    irps: List[IrpRecord] = field(default_factory=list)
    locked_pages_expected: Optional[int] = None
    locked_pages_accounted: Optional[int] = None
    facts: List[Fact] = field(default_factory=list)
    next_steps: List[Union[str, NextStep]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    rejected: List[Rejected] = field(default_factory=list)
    layouts: Dict[str, str] = field(default_factory=dict)
    # The kernel symbols the analysis used: name -> (address, where it came from).
    symbols: Dict[str, Tuple[int, str]] = field(default_factory=dict)
    searches: int = 0  # passes over memory the hunt made
    partial: bool = False
    complete_hunt: bool = True  # False when the source lacked what the hunt needs (no memory to search)
    process: Optional[int] = None
    process_name: Optional[str] = None
    process_id: Optional[int] = None  # EPROCESS.UniqueProcessId, when its layout is known
    # --pfn-range: the (first, last) page frame numbers the search was limited to, and the source's last.
    pfn_range: Optional[Tuple[int, int]] = None
    source_max_pfn: Optional[int] = None
    # Locked-page trackers named by the bug check parameters (0xCB P1, 0xD9 P2/P3).
    trackers: List[TrackerRecord] = field(default_factory=list)
    tracked_pages: Optional[TrackedPages] = None
    # Lock-entry bug checks (0x153, 0x162, 0x192).
    thread: Optional[ThreadRecord] = None
    lock: Optional[LockRecord] = None
    lock_entries: List[LockEntryRecord] = field(default_factory=list)
    # What the source says about the crash itself (all sources with modules; the rest from small dumps).
    modules: List[ModuleRecord] = field(default_factory=list)
    unloaded_modules: List[UnloadedRecord] = field(default_factory=list)
    registers: List[RegisterRecord] = field(default_factory=list)
    stack: Optional[StackScan] = None
    exception: Optional[ExceptionRecord] = None
    # The CONTEXT record a bug check parameter points at (.cxr), and the unwound call stack.
    context_record: List[RegisterRecord] = field(default_factory=list)
    context_record_address: Optional[int] = None
    call_stack: Optional[CallStack] = None
    # The first trap frame of the unwound stack (.trap): the registers the trap handler saved.
    trap_frame: List[RegisterRecord] = field(default_factory=list)
    trap_frame_address: Optional[int] = None
    summary: Optional[AnalyzeSummary] = None
    # Every address in an image the report names, as WinDbg names it (module, function, offset, line).
    names: Dict[int, SymbolicAddress] = field(default_factory=dict)
    # What finding each module's symbol file said (one line per module whose addresses were named).
    module_symbols: List[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "tool": {"name": "leakhunt", "version": self.tool_version},
            "source": self.source,
            "target": {"arch": self.arch, "pointer_size": self.pointer_size, "build": self.build},
            "crash_time": self.crash_time,
            "system": {"build_lab": self.build_lab, "uptime_seconds": self.uptime_seconds},
            "bugcheck": self.bugcheck.as_dict(),
            "analysis": self.analysis,
            "partial": self.partial,
            "hunt_possible": self.complete_hunt,
            "verdict": self.verdict,
            "suspects": [s.as_dict() for s in self.suspects],
            "process": {"address": _hex(self.process), "name": self.process_name, "id": self.process_id}
            if self.process is not None else None,
            "mdls": [m.as_dict() for m in self.mdls],
            "irps": [i.as_dict() for i in self.irps],
            "locked_pages": {"expected": self.locked_pages_expected, "accounted": self.locked_pages_accounted},
            "facts": [f.as_dict() for f in self.facts],
            "next_steps": [step_text(step) for step in self.next_steps],
            "warnings": list(self.warnings),
            "rejected": [r.as_dict() for r in self.rejected],
            "layouts": dict(self.layouts),
            "symbols": {name: {"address": _hex(address), "source": source}
                        for name, (address, source) in sorted(self.symbols.items())},
            "search_passes": self.searches,
            "pfn_range": {"first": _hex(self.pfn_range[0]), "last": _hex(self.pfn_range[1]),
                          "source_last": _hex(self.source_max_pfn)} if self.pfn_range is not None else None,
            "trackers": [t.as_dict() for t in self.trackers],
            "tracked_locked_pages": self.tracked_pages.as_dict() if self.tracked_pages is not None else None,
            "thread": self.thread.as_dict() if self.thread is not None else None,
            "lock": self.lock.as_dict() if self.lock is not None else None,
            "lock_entries": [e.as_dict() for e in self.lock_entries],
            "modules": [m.as_dict() for m in self.modules],
            "unloaded_modules": [m.as_dict() for m in self.unloaded_modules],
            "registers": [r.as_dict() for r in self.registers],
            "stack": self.stack.as_dict() if self.stack is not None else None,
            "exception": self.exception.as_dict() if self.exception is not None else None,
            "context_record": {"address": _hex(self.context_record_address),
                               "registers": [r.as_dict() for r in self.context_record]}
            if self.context_record else None,
            "call_stack": self.call_stack.as_dict() if self.call_stack is not None else None,
            "trap_frame": {"address": _hex(self.trap_frame_address), "registers": [r.as_dict() for r in self.trap_frame]}
            if self.trap_frame_address is not None else None,
            "analyze": self.summary.as_dict() if self.summary is not None else None,
            "names": {_hex(address): named.as_json() for address, named in sorted(self.names.items())
                      if named.module},
            "module_symbols": list(self.module_symbols),
        }
