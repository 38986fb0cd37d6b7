"""Locked-page trackers: 0xCB DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS, 0xD9 LOCKED_PAGES_TRACKER_CORRUPTION,
and the tracked-locked-pages walk (what ``!lockedpages`` shows) that 0x76 and 0xCB share.

With TrackLockedPages on, the memory manager keeps a `_LOCK_TRACKER` per locked MDL with the stack that
locked it. That record is the kernel's own account of who locked the pages, so a module named by it
weighs more than an IRP holding the MDL (the IRP may be pended by another driver in the stack).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..evidence import LOCKER_STACK
from ..kernel.pool import tag_before
from ..kernel.mdl import read_mdl
from ..kernel.modules import ModuleMap
from ..kernel.trackers import (LockTracker, first_frame_outside_kernel, read_lock_header, read_tracker,
                               tracker_at_node, walk_tree)
from ..layouts import LayoutError
from ..report import HIGH, MEDIUM, Fact, LockerGroup, Rejected, TrackedPages, TrackerRecord
from ..targets.base import MemoryReadError, SearchUnavailable
from .common import (Context, frame_records, read_ki_bugcheck_driver, read_process, steps_left_to_do,
                     warn_unverified_layouts)
from .holders import hunt_mdls

NOBODY_NAMED_CB = ("No driver is named by the evidence: the lock tracker's saved stack stays in nt and hal, no IRP "
                   "holds the MDL and the kernel recorded no culprit. leakhunt does not guess; run !lockedpages and "
                   "!analyze -v in WinDbg.")
NOBODY_NAMED_D9 = ("No driver is named by the evidence: the trackers' saved stacks stay in nt and hal and no IRP "
                   "holds the MDL. leakhunt does not guess; examine the MDL and the call stack (k) in WinDbg.")

# The kernel's record of who locked an MDL outweighs an IRP that holds it (evidence.py).
TRACKER_WEIGHT = LOCKER_STACK.weight
LOCKED_PAGES_LIST = "EPROCESS.LockedPagesList"


# ---- records -----------------------------------------------------------------------------------

def tracker_record(context: Context, tracker: LockTracker, role: str) -> TrackerRecord:
    _, module = first_frame_outside_kernel(context.modules, tracker.stack)
    record = TrackerRecord(address=tracker.address, mdl=tracker.mdl, start_va=tracker.start_va, pages=tracker.count,
                           first_pfn=tracker.page, who=tracker.who, process=tracker.process,
                           stack=frame_records(context, tracker.stack), locker=module.name if module else None,
                           locker_image=module.image if module else None, problems=list(tracker.problems), role=role)
    record.pool_tag = tag_before(context.target, context.layouts, tracker.address)
    return record


def _read_tracker(context: Context, address: int, role: str, process: Optional[int] = None) -> Optional[LockTracker]:
    """The tracker named by a bug check parameter, recorded in report.trackers; None when unreadable."""
    report = context.report
    if context.layouts.find("_LOCK_TRACKER") is None:
        report.warn(f"the _LOCK_TRACKER layout is unknown for {context.target.arch} build "
                    f"{context.target.build or 'unknown'} and the target has no symbols for it: the tracker "
                    f"{context.address(address)} ({role}) is not decoded (dt nt!_LOCK_TRACKER in WinDbg shows it)")
        context.strongest_evidence_unread = f"the lock tracker {context.address(address)} ({role.split(':')[0]})"
        return None
    try:
        tracker = read_tracker(context.target, context.layouts, address, process)
    except MemoryReadError:
        report.warn(f"the lock tracker {context.address(address)} ({role}) is not in memory")
        return None
    except LayoutError as error:
        report.warn(f"the lock tracker {context.address(address)} ({role}) cannot be decoded: {error}")
        return None
    report.trackers.append(tracker_record(context, tracker, role))
    if tracker.problems:
        report.warn(f"{context.address(address)} ({role}) does not read as a valid lock tracker "
                    f"({'; '.join(tracker.problems)}): nothing is concluded from it")
        return None
    return tracker


def _blame_locker(context: Context, tracker: LockTracker, why: str, confidence: str) -> None:
    """Name the module of the tracker's first saved frame outside nt and hal."""
    frame, module = first_frame_outside_kernel(context.modules, tracker.stack)
    if module is not None and frame is not None:
        context.suspects.add(None, module.image, confidence, TRACKER_WEIGHT,
                             f"{why}: the first frame outside nt and hal of the stack it saved is "
                             f"{context.modules.symbolize(frame)}", image_base=module.base, mdls=[tracker.mdl],
                             kind=LOCKER_STACK)
    elif frame is not None:
        context.report.warn(f"lock tracker {context.address(tracker.address)}: the first saved frame outside nt and "
                            f"hal, {context.address(frame)}, is in no loaded image (the driver may have been "
                            f"unloaded: lm shows unloaded modules)")
    elif tracker.stack:
        context.report.warn(f"lock tracker {context.address(tracker.address)}: every saved frame is in nt or hal "
                            f"(the I/O manager locked the pages for a driver): only an IRP holding the MDL can name it")
    else:
        context.report.warn(f"lock tracker {context.address(tracker.address)} saved no stack")


# ---- the tracked-locked-pages walk (!lockedpages) ----------------------------------------------

def hunt_tracked_pages(context: Context, header: int, source: str, process: Optional[int]) -> Optional[TrackedPages]:
    """Walk the `_LOCK_HEADER` trees at ``header``, list every valid tracker, group them by the module
    that locked them and make each group the strongest evidence against that module."""
    report = context.report
    missing = [name for name in ("_LOCK_HEADER", "_LOCK_TRACKER", "_RTL_BALANCED_NODE")
               if context.layouts.find(name) is None]
    if missing:
        report.warn(f"the {' and '.join(missing)} layout is unknown for {context.target.arch} build "
                    f"{context.target.build or 'unknown'} and the target has no symbols for it: the tracked locked "
                    f"pages at {context.address(header)} ({source}) are not walked (run !lockedpages in WinDbg)")
        context.strongest_evidence_unread = f"the lock trackers at {context.address(header)} ({source})"
        return None
    try:
        lock_header = read_lock_header(context.target, context.layouts, header)
    except MemoryReadError:
        report.warn(f"the lock-tracking header {context.address(header)} ({source}) is not in memory")
        return None
    except LayoutError as error:
        report.warn(f"the lock-tracking header {context.address(header)} ({source}) cannot be decoded: {error}")
        return None
    section = TrackedPages(header=header, source=source, process=process, count=lock_header.count,
                           valid=lock_header.valid, problems=list(lock_header.problems))
    report.tracked_pages = section
    for tree, root in (("LockTree", lock_header.lock_tree), ("LockMdlSwitchedTree", lock_header.switched_tree)):
        try:
            walk = walk_tree(context.target, context.layouts, root)
        except LayoutError as error:
            section.problems.append(f"{tree}: not walked ({error})")
            continue
        section.problems.extend(f"{tree}: {problem}" for problem in walk.problems)
        section.truncated = section.truncated or walk.truncated
        for node in walk.nodes:
            address = tracker_at_node(context.layouts, node)
            try:
                tracker = read_tracker(context.target, context.layouts, address, process)
            except (MemoryReadError, LayoutError) as error:
                section.problems.append(f"{tree}: tracker {address:#x} is unreadable ({error})")
                continue
            if tracker.problems:
                report.rejected.append(Rejected(address, f"lock tracker ({tree})", tracker.problems))
                continue
            section.trackers.append(tracker_record(context, tracker, tree))
    pages = sum(t.pages for t in section.trackers)
    report.facts.append(Fact("tracked locked pages", f"{len(section.trackers)} MDL(s), {pages} page(s)",
                             f"trackers under {source} {context.address(header)}; _LOCK_HEADER.Count says "
                             f"{lock_header.count} page(s)"))
    if pages != lock_header.count:
        report.warn(f"the trackers found describe {pages} page(s) but _LOCK_HEADER.Count is {lock_header.count}: "
                    f"some trackers are missing from this memory image or the tree is damaged")
    section.groups = _group_by_locker(section.trackers)
    _blame_groups(context, section)
    return section


def _group_by_locker(trackers: List[TrackerRecord]) -> List[LockerGroup]:
    groups: Dict[Optional[str], LockerGroup] = {}
    for tracker in trackers:
        group = groups.get(tracker.locker)
        if group is None:
            group = groups[tracker.locker] = LockerGroup(tracker.locker, tracker.locker_image, [], [], 0)
        group.trackers.append(tracker.address)
        group.mdls.append(tracker.mdl)
        group.pages += tracker.pages
    return sorted(groups.values(), key=lambda g: (g.module is None, -g.pages, g.module or ""))


def _blame_groups(context: Context, section: TrackedPages) -> None:
    by_address = {t.address: t for t in section.trackers}
    for group in section.groups:
        if group.module is None:
            context.report.warn(f"{len(group.trackers)} tracked MDL(s) ({group.pages} page(s)) were locked from nt "
                                f"or hal only, or from code outside every loaded image: their trackers name no "
                                f"driver")
            continue
        frames = sorted({f.symbol for a in group.trackers for f in by_address[a].stack if f.module == group.module})
        module = context.modules.by_image(group.image) if group.image else None
        context.suspects.add(
            None, group.image, HIGH, TRACKER_WEIGHT * len(group.trackers),
            f"the kernel's lock trackers ({section.source}) record that {group.module} locked "
            f"{len(group.trackers)} MDL(s), {group.pages} page(s), still locked in process "
            f"{context.address(section.process) if section.process else '(unknown)'}: saved frames "
            f"{', '.join(frames)}", image_base=module.base if module else None, mdls=group.mdls,
            kind=LOCKER_STACK)


def tracked_pages_for_0x76(context: Context, p1: int, p2: int, p4: int) -> None:
    """0x76: walk the trackers when P4 (the process's LockedPagesList) or EPROCESS.LockedPagesList is set.

    With P1 = 1, P2 is an MDL and the process is not known yet: only P4 is walked."""
    process = p2 if p1 == 0 else None
    from_process = _locked_pages_list(context, process) if process else None
    if p4 and from_process and from_process != p4:
        context.report.warn(f"P4 {context.address(p4)} differs from {LOCKED_PAGES_LIST} "
                            f"{context.address(from_process)}: P4 is walked")
    header, source = (p4, "P4") if p4 else (from_process, LOCKED_PAGES_LIST)
    if header:
        hunt_tracked_pages(context, header, source, process)
        warn_unverified_layouts(context)


def _locked_pages_list(context: Context, process: int) -> Optional[int]:
    layout = context.layouts.find("_EPROCESS")
    if layout is None or not layout.has("LockedPagesList"):
        return None
    try:
        return context.target.read_pointer(process + layout.offset("LockedPagesList")) or None
    except (MemoryReadError, LayoutError):
        return None


# ---- 0xCB ----------------------------------------------------------------------------------------

def analyze_0xcb(context: Context) -> None:
    report = context.report
    p1, p2, p3, p4 = context.bugcheck.parameters
    report.analysis = "0xCB locked-pages hunt"
    report.locked_pages_expected = p4
    read_ki_bugcheck_driver(context)
    fmt, why = _cb_format(context, p1, p2, p3)
    context.redecode(fmt)
    report.facts.append(Fact("0xCB parameter format", fmt, why))
    try:
        if fmt == "current":
            _cb_current(context, p1, p3, p4)
        else:
            _cb_legacy(context, p1, p2, p3)
        process = report.process or _mdl_process(context, p3)
        if process and report.process is None:
            read_process(context, process)
        wanted: List[Tuple[int, str]] = [(p3, "P3: the MDL holding the locked pages")]
        header = _locked_pages_list(context, process) if process else None
        if header:
            section = hunt_tracked_pages(context, header, LOCKED_PAGES_LIST, process)
            if section is not None:
                wanted += [(t.mdl, f"tracked by {context.address(t.address)}") for t in section.trackers]
        hunt_mdls(context, wanted, "an MDL whose pages the exiting process still had locked", HIGH)
        _compare_pages(context, p3, p4)
    except SearchUnavailable as error:
        report.complete_hunt = False
        report.warn(f"the memory search is not possible on this source: {error}")
    finally:
        warn_unverified_layouts(context)
        report.next_steps.extend(_cb_next_steps(context))


def _cb_format(context: Context, p1: int, p2: int, p3: int) -> Tuple[str, str]:
    """Tell the current format (P1 = tracker, P2 = 0) from the legacy one (P1 = code address)."""
    module = context.modules.find(p1)
    if module is not None:
        return "legacy", (f"P1 {context.modules.symbolize(p1)} is inside the loaded image {module.image}: a code "
                          f"address, so P1/P2 are the locking call site (legacy format)")
    if p2 != 0:
        return "legacy", "P2 is not 0 (a caller or a device object) and P1 is in no loaded image"
    if context.layouts.find("_LOCK_TRACKER") is None:
        return "current", ("P2 is 0 and P1 is in no loaded image (the _LOCK_TRACKER layout is unknown here, so P1 "
                           "was not confirmed as a tracker)")
    try:
        tracker = read_tracker(context.target, context.layouts, p1)
    except (MemoryReadError, LayoutError):
        return "current", "P2 is 0 and P1 is in no loaded image (P1 could not be read as a tracker to confirm it)"
    if tracker.mdl == p3:
        return "current", "P2 is 0, P1 is in no loaded image and reads as a _LOCK_TRACKER whose Mdl is P3"
    context.report.warn(f"P1 {context.address(p1)} does not read as the tracker of P3 (its Mdl field is "
                        f"{context.address(tracker.mdl)}); the current format is assumed because P2 is 0")
    return "current", "P2 is 0 and P1 is in no loaded image (P1 did not confirm as a tracker of P3)"


def _cb_current(context: Context, p1: int, p3: int, p4: int) -> None:
    tracker = _read_tracker(context, p1, "P1: the lock tracker of the leaked MDL (P3)")
    if tracker is None:
        return
    if tracker.mdl != p3:
        context.report.warn(f"the tracker's Mdl {context.address(tracker.mdl)} is not P3 {context.address(p3)}")
    if tracker.count != p4:
        context.report.warn(f"the tracker counts {tracker.count} page(s) but P4 says {p4}")
    if tracker.process and context.target.is_kernel_address(tracker.process):
        read_process(context, tracker.process)
    _blame_locker(context, tracker, f"lock tracker P1 recorded who locked MDL {context.address(p3)}", HIGH)


def _cb_legacy(context: Context, p1: int, p2: int, p3: int) -> None:
    """P1 = calling address (or dispatch routine), P2 = its caller (or the device object), P3 = the MDL."""
    report = context.report
    modules = context.modules
    report.facts.append(Fact("P1 (locking code)", modules.symbolize(p1), "the code that locked the pages"))
    device = None if modules.find(p2) is not None or not context.target.is_kernel_address(p2) \
        else context.io.read_device(p2)
    if device is not None and not device.problems and device.driver is not None and not device.driver.problems:
        driver = device.driver
        image = driver.image.image if driver.image else None
        report.facts.append(Fact("P2 (device object)", f"{context.address(p2)} of {driver.name}",
                                 "the I/O manager locked the pages for an IRP sent to this device; P1 is its "
                                 "driver's dispatch routine"))
        if driver.image is not None and not driver.image.contains(p1):
            report.warn(f"P1 {modules.symbolize(p1)} is not inside {driver.name}'s image {driver.image.image}")
        context.suspects.add(driver.name, image, HIGH, TRACKER_WEIGHT,
                             f"legacy 0xCB: the I/O manager locked the pages for an IRP sent to {driver.name}'s "
                             f"device {context.address(p2)} (P2), dispatch routine {modules.symbolize(p1)} (P1)",
                             driver.address, driver.image.base if driver.image else None,
                             mdls=[p3], kind=LOCKER_STACK)
        return
    report.facts.append(Fact("P2 (caller)", modules.symbolize(p2), "the caller of the locking code"))
    for value, role, confidence in ((p1, "P1, the code that locked the pages", HIGH),
                                    (p2, "P2, the caller of that code", MEDIUM)):
        module = modules.find(value)
        if module is not None and not ModuleMap.is_kernel_or_hal(module):
            context.suspects.add(None, module.image, confidence, TRACKER_WEIGHT,
                                 f"legacy 0xCB: {role}, is {modules.symbolize(value)}", image_base=module.base,
                                 mdls=[p3], kind=LOCKER_STACK)
            return
    report.warn("neither P1 nor P2 is in a driver image outside nt and hal")


def _mdl_process(context: Context, mdl_address: int) -> Optional[int]:
    try:
        mdl = read_mdl(context.target, context.layouts, mdl_address)
    except MemoryReadError:
        return None
    return mdl.process if not mdl.problems and mdl.process else None


def _compare_pages(context: Context, mdl_address: int, pages: int) -> None:
    for record in context.report.mdls:
        if record.address == mdl_address and record.classification != "not an MDL":
            context.report.locked_pages_accounted = record.pages
            if record.pages != pages:
                context.report.warn(f"P3 spans {record.pages} page(s) but P4 says {pages}")


def _cb_next_steps(context: Context) -> List[str]:
    steps = []
    ranked = context.suspects.ranked()
    if ranked:
        steps.append(f"Review {ranked[0].label}: every MmProbeAndLockPages needs a matching MmUnlockPages before the "
                     f"process exits, on every path (completion, cancel, cleanup, errors).")
    steps.extend(steps_left_to_do(context.report, context.decoded.next_steps))
    return steps


# ---- 0xD9 ----------------------------------------------------------------------------------------

D9_WHAT_WENT_WRONG = {
    1: "a driver locked an MDL that was already locked and tracked in this process (MmProbeAndLockPages called "
       "twice on the same MDL without MmUnlockPages in between)",
    2: "an MDL already in the system-wide tracking list was inserted again (the same MDL locked twice)",
    3: "when the MDL was unlocked it was found twice in the process's tracking list: it had been locked twice",
    4: "an MDL being freed was still in the system-wide list after its removal: the tracking data was corrupted "
       "(an MDL reused or freed while locked)",
}


def analyze_0xd9(context: Context) -> None:
    report = context.report
    p1, p2, p3, p4 = context.bugcheck.parameters
    report.analysis = "0xD9 lock-tracker corruption"
    what = D9_WHAT_WENT_WRONG.get(p1)
    if what is None:
        report.warn(f"P1 = {p1:#x} is not a documented 0xD9 subcode (1-4); only the parameters are decoded")
        report.next_steps.extend(context.decoded.next_steps)
        return
    report.facts.append(Fact("what went wrong", f"subcode {p1}", what))
    if p1 == 3:
        trackers = [(p2, "P2: the first tracker found for the MDL"), (p3, "P3: the tracker being freed")]
        mdl_address = p4
    else:
        trackers = [(p2, "P2: the lock tracker")]
        mdl_address = p3
    try:
        for address, role in trackers:
            tracker = _read_tracker(context, address, role)
            if tracker is None:
                continue
            if tracker.mdl != mdl_address:
                report.warn(f"tracker {context.address(address)} ({role}) describes MDL {context.address(tracker.mdl)}, "
                            f"not the MDL of the bug check {context.address(mdl_address)}")
            if report.process is None and tracker.process and context.target.is_kernel_address(tracker.process):
                read_process(context, tracker.process)
            fate = "freed while still tracked" if p1 == 4 else "locked twice"
            _blame_locker(context, tracker, f"tracker {context.address(address)} ({role}) of MDL "
                                            f"{context.address(mdl_address)}, which was {fate}", MEDIUM)
        hunt_mdls(context, [(mdl_address, "the MDL tracked twice")], "the MDL whose tracking went wrong", MEDIUM)
    except SearchUnavailable as error:
        report.complete_hunt = False
        report.warn(f"the memory search is not possible on this source: {error}")
    finally:
        warn_unverified_layouts(context)
        steps = []
        ranked = context.suspects.ranked()
        if ranked:
            steps.append(f"Review {ranked[0].label} for an MDL locked twice (MmProbeAndLockPages on an MDL whose pages "
                         f"are already locked) or reused while locked.")
        report.next_steps.extend(steps + list(context.decoded.next_steps))
