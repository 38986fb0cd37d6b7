"""AutoBoost lock-entry bug checks: 0x153 KERNEL_LOCK_ENTRY_LEAKED_ON_THREAD_TERMINATION, 0x162
KERNEL_AUTO_BOOST_INVALID_LOCK_RELEASE and 0x192 KERNEL_AUTO_BOOST_LOCK_ACQUISITION_WITH_RAISED_IRQL.

Each names a thread (P1) and a lock (directly, or through the leaked lock entry). The thread gives its
process and start address; the lock's address says who owns it: a global inside a driver image belongs to
that driver (high confidence), a pool block is shown with its tag. Without such a lock, a thread that
started in a driver is that driver's (medium confidence); a kernel worker thread names nobody.
"""
from __future__ import annotations

from typing import List, Optional

from ..arch import Arch
from ..kernel.lock_entries import LEAK_STATES, LockEntry, LockLocation, locate, read_lock_entry, \
    thread_lock_entry_addresses
from ..kernel.modules import ModuleMap
from ..kernel.threads import ThreadInfo, read_process_info, read_thread
from ..layouts import LayoutError
from ..report import HIGH, MEDIUM, Fact, LockEntryRecord, LockRecord, ThreadRecord
from ..targets.base import MemoryReadError
from .common import Context, warn_unverified_layouts

NOBODY_NAMED = ("No driver is named by the evidence: the lock is not a driver's global and the thread did not start "
                "in a driver. leakhunt does not guess; run !thread on P1 and !pool on the lock in WinDbg.")

LOCK_OWNER_WEIGHT = 20
THREAD_START_WEIGHT = 8
IRQL_NAMES = {0: "PASSIVE_LEVEL", 1: "APC_LEVEL", 2: "DISPATCH_LEVEL"}


# ---- the pieces ---------------------------------------------------------------------------------

def _thread(context: Context, address: int) -> ThreadInfo:
    """Decode thread P1 into report.thread (and the process of the report); blame its start module."""
    report = context.report
    info = read_thread(context.target, context.layouts, address)
    record = ThreadRecord(address=address, process_id=info.process_id, thread_id=info.thread_id,
                          problems=list(info.problems))
    report.thread = record
    for name in info.missing:
        report.warn(f"the {name} layout is unknown for {context.target.arch} build {context.target.build or 'unknown'} "
                    f"and the target has no symbols for it: the thread's "
                    f"{'process' if name == '_KTHREAD' else 'start address'} is not decoded")
    if info.process:
        process = read_process_info(context.target, context.layouts, info.process)
        record.process, record.process_name = info.process, process.name
        record.problems.extend(process.problems)
        report.process, report.process_name = info.process, process.name
        if info.owner_process:
            report.facts.append(Fact("owning process (KTHREAD.Process)", context.address(info.owner_process),
                                     "differs from ApcState.Process: the thread was attached to another process"))
    if info.start_address:
        module = context.modules.find(info.start_address)
        record.start_address = info.start_address
        record.start_symbol = context.modules.symbolize(info.start_address)
        record.start_module = module.name if module else None
        if module is not None and not ModuleMap.is_kernel_or_hal(module):
            context.suspects.add(None, module.image, MEDIUM, THREAD_START_WEIGHT,
                                 f"thread {context.address(address)} (P1) started at {record.start_symbol}: a thread "
                                 f"{module.image} created", image_base=module.base)
    if info.win32_start_address:
        record.win32_start_address = info.win32_start_address
        record.win32_start_symbol = context.modules.symbolize(info.win32_start_address)
    return info


def _lock(context: Context, address: int, role: str, confidence: Optional[str] = HIGH) -> LockLocation:
    """Place the lock in report.lock; a driver's global makes that driver the owner.

    ``confidence`` is lowered by the caller when the lock pointer itself is less certain; None only
    places the lock without blaming anyone.
    """
    where = locate(context.target, context.layouts, context.modules, address)
    module = where.module
    context.report.lock = LockRecord(address=address, location=where.location,
                                     module=module.name if module else None, image=module.image if module else None,
                                     section=where.section, pool_block=where.pool_block, pool_tag=where.pool_tag,
                                     problems=list(where.problems))
    if confidence is not None and module is not None and not ModuleMap.is_kernel_or_hal(module):
        section = f" in its {where.section} section" if where.section else ""
        context.suspects.add(None, module.image, confidence, LOCK_OWNER_WEIGHT,
                             f"the lock {context.address(address)} ({role}) is a global of {module.image}{section} "
                             f"({context.modules.symbolize(address)}): the driver owns the lock", image_base=module.base)
    elif module is not None:
        context.report.facts.append(Fact("lock owner", module.name, "a lock of the kernel itself: its user is the "
                                                                    "thread's code"))
    elif where.location == "pool":
        context.report.facts.append(Fact("lock owner", f"pool block {context.address(where.pool_block)} tag "
                                                       f"{where.pool_tag}",
                                         "the tag names the allocator (pooltag.txt, or !pool in WinDbg)"))
    return where


def _entry_record(context: Context, entry: LockEntry, role: str) -> LockEntryRecord:
    return LockEntryRecord(**{**vars(entry), "problems": list(entry.problems)}, role=role)


def _read_entry(context: Context, address: int, role: str) -> Optional[LockEntry]:
    if context.layouts.find("_KLOCK_ENTRY") is None:
        context.report.warn(f"the _KLOCK_ENTRY layout is unknown for {context.target.arch} build "
                            f"{context.target.build or 'unknown'} and the target has no symbols for it: the lock "
                            f"entry {context.address(address)} ({role}) is not decoded")
        context.evidence_unread = (f"the lock entry {context.address(address)} ({role.split(':')[0]}) cannot be "
                                   f"decoded without the _KLOCK_ENTRY layout, which only this kernel's symbols give")
        return None
    try:
        entry = read_lock_entry(context.target, context.layouts, address)
    except (MemoryReadError, LayoutError) as error:
        context.report.warn(f"the lock entry {context.address(address)} ({role}) is unreadable ({error})")
        return None
    context.report.lock_entries.append(_entry_record(context, entry, role))
    return entry


def _thread_entries(context: Context, thread: int) -> List[int]:
    """The addresses of the thread's lock entries (empty, with warnings, when they cannot be listed)."""
    if context.layouts.find("_KLOCK_ENTRY") is None:
        return []
    addresses, problems = thread_lock_entry_addresses(context.target, context.layouts, thread)
    for problem in problems:
        context.report.warn(problem)
    return addresses


def _other_entries(context: Context, addresses: List[int], leaked: Optional[int]) -> None:
    """List the thread's other lock entries that still reference a lock or carry boosts."""
    for index, address in enumerate(addresses):
        if address == leaked:
            context.report.facts.append(Fact("leaked entry", f"entry {index} of the thread",
                                             "P2 is one of the thread's own lock entries"))
            continue
        try:
            entry = read_lock_entry(context.target, context.layouts, address)
        except (MemoryReadError, LayoutError):
            context.report.warn(f"the thread's lock entry {index} at {context.address(address)} is unreadable")
            continue
        if entry.lock is not None or entry.residual_boosts:
            context.report.lock_entries.append(_entry_record(context, entry, f"thread entry {index}"))


def _finish(context: Context) -> None:
    warn_unverified_layouts(context)
    ranked = context.suspects.ranked()
    steps = []
    if ranked:
        steps.append(f"Review {ranked[0].label}: each lock it acquires must be released by the same thread, through "
                     f"the API that matches the acquire, at the IRQL the lock allows.")
    context.report.next_steps.extend(steps + list(context.decoded.next_steps))


# ---- the analyses -------------------------------------------------------------------------------

def analyze_0x153(context: Context) -> None:
    report = context.report
    thread, entry_address, state, _ = context.bugcheck.parameters
    report.analysis = "0x153 leaked lock entry"
    try:
        _thread(context, thread)
        meaning = LEAK_STATES.get(state)
        report.facts.append(Fact("entry state (P3)", str(state), meaning or "not a documented state code"))
        thread_entries = _thread_entries(context, thread)
        entry = _read_entry(context, entry_address, "P2: the lock entry the thread did not free")
        if entry is not None:
            if state == 1 and entry.lock is None:
                report.warn("P3 says the entry still references a lock, but the entry read from memory has none "
                            "(it may have changed after the bug check)")
            if state == 4 and not entry.residual_boosts:
                report.warn("P3 says the entry carries boosts, but the entry read from memory has none")
            if entry.residual_boosts:
                report.facts.append(Fact("residual boosts", _boosts(entry),
                                         "boosts this entry still gives: the lock was not released through the "
                                         "matching API"))
            if entry.lock is not None:
                _lock_of_leaked_entry(context, entry, thread_entries)
        _other_entries(context, thread_entries, entry_address)
    finally:
        _finish(context)


def analyze_0x162(context: Context) -> None:
    report = context.report
    thread, lock, session, _ = context.bugcheck.parameters
    report.analysis = "0x162 invalid AutoBoost lock release"
    try:
        _thread(context, thread)
        report.facts.append(Fact("session ID (P3)", str(session), "the session of the releasing thread"))
        _lock(context, lock, "P2, released by a thread that does not own it")
        report.facts.append(Fact("what went wrong", "release by a non-owner",
                                 f"thread {context.address(thread)} released lock {context.address(lock)} that it "
                                 f"does not own: it released it for another thread (not allowed while AutoBoost "
                                 f"tracks the lock) or released it twice"))
        _other_entries(context, _thread_entries(context, thread), None)
    finally:
        _finish(context)


def analyze_0x192(context: Context) -> None:
    report = context.report
    thread, lock, irql, _ = context.bugcheck.parameters
    report.analysis = "0x192 AutoBoost lock acquired at raised IRQL"
    try:
        _thread(context, thread)
        name = irql_name(irql, context.target.architecture)
        report.facts.append(Fact("IRQL (P3)", name, "the IRQL at which the lock was acquired"))
        _lock(context, lock, "P2, acquired at raised IRQL")
        report.facts.append(Fact("what went wrong", f"acquired at {name}",
                                 f"thread {context.address(thread)} acquired lock {context.address(lock)} at {name}; "
                                 f"this lock may block, which is only allowed at APC_LEVEL or below (the code held a "
                                 f"spin lock, ran in a DPC or raised the IRQL itself)"))
        _other_entries(context, _thread_entries(context, thread), None)
    finally:
        _finish(context)


def _lock_of_leaked_entry(context: Context, entry: LockEntry, thread_entries: List[int]) -> None:
    """Attribute the lock P2 references, as firmly as P2 is known to be a real entry of thread P1.

    A P2 among the thread's own entries, decoded without problems, is trusted (high confidence); when
    the thread's entries cannot be listed, medium; a P2 that is not one of them, or a damaged entry,
    is only shown: its "lock" could be any word of memory.
    """
    role = "referenced by the leaked entry P2"
    if entry.problems:
        context.report.warn("the leaked entry P2 has problems when decoded: the lock it seems to reference is not "
                            "attributed to any driver")
        _lock(context, entry.lock, role, confidence=None)
    elif entry.address in thread_entries:
        _lock(context, entry.lock, role)
    elif thread_entries:
        context.report.warn(f"P2 {context.address(entry.address)} is not one of thread P1's lock entries: the lock "
                            f"it seems to reference is not attributed to any driver")
        _lock(context, entry.lock, role, confidence=None)
    else:
        _lock(context, entry.lock, role, confidence=MEDIUM)


def irql_name(irql: int, arch: Arch) -> str:
    if irql in IRQL_NAMES:
        return f"{IRQL_NAMES[irql]} ({irql})"
    if irql == arch.high_level_irql:
        return f"HIGH_LEVEL ({irql})"
    return f"IRQL {irql} (a device interrupt level or above)"


def _boosts(entry: LockEntry) -> str:
    parts: List[str] = []
    if entry.cpu_boosts:
        parts.append(f"CPU boosts {entry.cpu_boosts:#x}")
    if entry.io_boost:
        parts.append("I/O boost")
    if entry.io_qos_boost:
        parts.append("I/O QoS boost")
    return ", ".join(parts)
