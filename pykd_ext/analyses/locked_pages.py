"""Bug check 0x76 PROCESS_HAS_LOCKED_PAGES: the documented !search hunt, automated.

P1=0 (P2 = EPROCESS): every pointer-aligned occurrence of P2 is a candidate MDL.Process; real MDLs
are kept and classified. Where the source collects IRP headers in the same pass (dump files, complete
snapshots), IRPs are joined to the MDLs without another search; elsewhere (inside WinDbg) all the MDLs
are searched for at once. Each IRP's stack names the driver. The locked MDLs that no IRP holds are then
searched for, and every other place holding them is classified (analyses/holders.py): a device
extension, a driver's global or a tagged pool block names the driver that keeps them.
P1=1 (P2 = the MDL a driver tried to unlock): the MDL is decoded and its holders are hunted the same way.
With locked-page tracking on (P4, or EPROCESS.LockedPagesList), the trackers are walked first
(analyses/trackers.py): the stacks they saved are the strongest evidence.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

from ..bugchecks import TRACK_LOCKED_PAGES_STEPS
from ..kernel.mdl import LOCKED, MDL_PAGES_LOCKED, MDL_SOURCE_IS_NONPAGED_POOL, Mdl, read_mdl
from ..report import HIGH, MEDIUM, Fact, NextStep, Rejected
from ..targets.base import HeaderHit, MemoryReadError, SearchUnavailable
from .common import Context, irp_record, mdl_record, read_ki_bugcheck_driver, read_process
from .holders import (Holders, Places, blame_irp, blame_private, find_holders, follow_blocks, holder_records, join_irps,
                      list_mdls, search_with_irps)
from .trackers import tracked_pages_for_0x76

NOBODY_NAMED = ("No driver is named by the evidence: no locked MDL of the process is held by an IRP, a device "
                "extension, a driver's global or a pool block that names a driver. leakhunt does not guess; the "
                "next steps say how to find the driver.")


def analyze_0x76(context: Context) -> None:
    report = context.report
    p1, p2, p3, p4 = context.bugcheck.parameters
    report.analysis = "0x76 locked-pages hunt"
    report.locked_pages_expected = p3
    if p4:
        report.facts.append(Fact("locked-page tracking", "on",
                                 f"P4 = {context.address(p4)} is the process's LockedPagesList (_LOCK_HEADER): "
                                 f"the kernel tracked who locked each MDL"))
    read_ki_bugcheck_driver(context)
    if p1 in (0, 1):
        tracked_pages_for_0x76(context, p1, p2, p4)
    try:
        if p1 in (0, 1) and not context.target.is_kernel_object_address(p2):
            # Searching for 0, a user address or an odd value would "find" it in most words of memory.
            report.complete_hunt = False
            report.warn(f"P2 = {context.address(p2)} is not a kernel address an {'EPROCESS' if p1 == 0 else 'MDL'} "
                        f"can be at (corrupt bug check data): it is not searched for")
        elif p1 == 0:
            _hunt_process(context, p2, p3)
        elif p1 == 1:
            _hunt_unlocked_mdl(context, p2)
        else:
            report.warn(f"P1 = {p1:#x} is not a documented form of bug check 0x76 (0 or 1); only the "
                        f"parameters are decoded")
    except SearchUnavailable as error:
        report.complete_hunt = False
        report.warn(f"the memory search is not possible on this source: {error}")
    finally:
        report.next_steps.extend(_next_steps(context, p1))


def _hunt_process(context: Context, process: int, expected_pages: int) -> None:
    report = context.report
    read_process(context, process)
    kept: Dict[int, Mdl] = {}
    holders = Holders()
    places = Places(context, process)
    try:
        irp_headers = _find_process_mdls(context, process, kept)
        locked = sorted(address for address, mdl in kept.items() if mdl.locked)
        if irp_headers is not None:  # one pass found the IRPs too: a search only for the MDLs they do not hold
            join_irps(context, kept, irp_headers, holders)
            unheld = [address for address in locked if not holders.held_by.get(address)]
            find_holders(context, unheld, holders, places, classify=unheld)
        else:
            find_holders(context, sorted(kept), holders, places, classify=locked)
        follow_blocks(context, holders, places)
    finally:
        # Also when the hunt is interrupted: what was found so far is reported and blamed (every
        # holder recorded is a whole chain that was validated before it was recorded).
        _report_mdls_and_irps(context, kept, holders)
        _blame_holders(context, process, kept, holders)
    locked = [m for m in kept.values() if m.locked]
    accounted = sum(m.pages for m in locked if not m.partial)
    report.locked_pages_accounted = accounted
    tracked = report.tracked_pages
    named_by_trackers = {t.mdl for t in tracked.trackers if t.locker} if tracked is not None else set()
    orphans = [m for m in locked if not holders.named_drivers(m.address) and m.address not in named_by_trackers]
    unplaced = [m for m in orphans if not holders.private.get(m.address)]
    if unplaced:
        report.warn(f"{len(unplaced)} locked MDL(s) of the process are held by no IRP and named by no lock tracker: "
                    f"the driver that locked them keeps them privately, so memory alone cannot name it")
    if len(unplaced) < len(orphans):
        report.warn(f"{len(orphans) - len(unplaced)} locked MDL(s) of the process are held only in places that name "
                    f"no driver (a kernel stack, the kernel, a free or kernel-tagged pool block, memory leakhunt "
                    f"cannot place) and named by no lock tracker: memory alone cannot name the driver that keeps them")
    if not kept:
        report.warn("no MDL pointing at the process was found in memory: the MDLs may have been freed, paged out "
                    "or be missing from this source")
    if accounted != expected_pages:
        report.warn(f"the locked MDLs found describe {accounted} page(s) but the kernel counted {expected_pages} "
                    f"(P3): the rest are in MDLs not in this memory image, or were charged without an MDL")


def _find_process_mdls(context: Context, process: int, kept: Dict[int, Mdl]) -> Optional[List[HeaderHit]]:
    """Every valid MDL whose Process is ``process``, added to ``kept`` as it is found; and, when the source
    collects them in the same pass, every IRP header of memory (else None)."""
    report = context.report
    process_offset = context.layouts.get("_MDL").offset("Process")
    hits, irp_headers = search_with_irps(context, [process])
    for hit in hits.get(process, []):
        if hit.virtual is None:
            report.rejected.append(Rejected(hit.physical or 0, "MDL", ["the hit has no virtual address"]))
            continue
        candidate = hit.virtual - process_offset
        if candidate in kept:
            continue
        try:
            mdl = read_mdl(context.target, context.layouts, candidate)
        except MemoryReadError:
            report.rejected.append(Rejected(candidate, "MDL", ["the would-be MDL header is unreadable"]))
            continue
        if mdl.problems:
            report.rejected.append(Rejected(candidate, "MDL", mdl.problems))
            continue
        kept[candidate] = mdl
    return irp_headers


def _blame_holders(context: Context, process: int, kept: Dict[int, Mdl], holders: Holders) -> None:
    """Blame the driver of each IRP that holds locked MDLs of the process (one piece of evidence per IRP),
    and the drivers the other holders of locked MDLs name (one piece per driver, kind and place)."""
    locked_by_irp: Dict[int, List[Mdl]] = {}
    for mdl in kept.values():
        if mdl.locked:
            for irp_address in holders.held_by.get(mdl.address, []):
                locked_by_irp.setdefault(irp_address, []).append(mdl)
    for irp_address, mdls in sorted(locked_by_irp.items()):
        chained = [m for m in mdls if m.address in holders.chain_parent]
        why = (f"locked MDL{'s' if len(mdls) > 1 else ''} {', '.join(context.address(m.address) for m in mdls)} "
               f"of process {context.address(process)} ({sum(m.pages for m in mdls)} page(s), MDL_PAGES_LOCKED set"
               f"{', reached through the MDL.Next chain' if chained else ''})")
        blame_irp(context, holders.irps[irp_address], why, HIGH, [m.address for m in mdls])

    def locked_mdls(addresses: List[int]) -> str:
        pages = sum(kept[a].pages for a in addresses)
        return (f"locked MDL{'s' if len(addresses) > 1 else ''} {list_mdls(context, addresses)} of process "
                f"{context.address(process)} ({pages} page(s), MDL_PAGES_LOCKED set)")

    blame_private(context, holders, sorted(a for a, m in kept.items() if m.locked), locked_mdls, HIGH)


def _hunt_unlocked_mdl(context: Context, mdl_address: int) -> None:
    """P1=1: a driver asked to unlock an MDL whose pages are not (or no longer) locked."""
    report = context.report
    try:
        mdl = read_mdl(context.target, context.layouts, mdl_address)
    except MemoryReadError:
        report.warn(f"the MDL {context.address(mdl_address)} (P2) is not in memory; its holders are still hunted")
        mdl = None
    if mdl is not None:
        record = mdl_record(mdl, role="P2: the MDL the driver tried to unlock")
        record.problems.extend(_why_not_locked(context, mdl))
        report.mdls.append(record)
        if mdl.problems:
            report.warn(f"the MDL {context.address(mdl_address)} (P2) is not a valid MDL ({'; '.join(mdl.problems)}): "
                        f"its memory is corrupt or reused, so no driver is blamed through what holds it")
        elif mdl.process:
            read_process(context, mdl.process)
    holders = Holders()
    places = Places(context, mdl.process if mdl is not None and mdl.valid and mdl.process else None)
    blamed = mdl is not None and mdl.valid
    try:
        find_holders(context, [mdl_address], holders, places, classify=[mdl_address])
        follow_blocks(context, holders, places)
    finally:
        irps = [holders.irps[a] for a in holders.held_by.get(mdl_address, [])]
        for record in report.mdls:
            record.irps = [irp.address for irp in irps]
            record.chained_from = holders.chain_parent.get(mdl_address)
            record.holders = holder_records(holders, mdl_address)
        why = f"MDL {context.address(mdl_address)} (P2), whose pages were not locked when a driver unlocked them"
        for irp in irps:
            irp_report = irp_record(context, irp)
            irp_report.holds = [mdl_address]
            report.irps.append(irp_report)
            if blamed:
                blame_irp(context, irp, why, MEDIUM, [mdl_address])
        if blamed:
            blame_private(context, holders, [mdl_address], lambda _: why, MEDIUM)


def _why_not_locked(context: Context, mdl: Mdl) -> List[str]:
    reasons = []
    if not mdl.flags & MDL_PAGES_LOCKED:
        reasons.append("MDL_PAGES_LOCKED is clear: the pages were already unlocked (a second MmUnlockPages) or "
                       "never locked")
    if mdl.flags & MDL_SOURCE_IS_NONPAGED_POOL:
        reasons.append("MDL_SOURCE_IS_NONPAGED_POOL is set: the MDL was built for nonpaged pool, which is never "
                       "locked or unlocked")
    if mdl.process == 0:
        reasons.append("MDL.Process is NULL: the pages were not charged to any process")
    if not reasons and mdl.locked:
        reasons.append("MDL_PAGES_LOCKED is set, yet the kernel's locked-page accounting for the process does "
                       "not know this MDL (with tracking on, no tracker describes it)")
    return reasons


def _report_mdls_and_irps(context: Context, kept: Dict[int, Mdl], holders) -> None:
    report = context.report
    # Locked MDLs first, then stale ones, each in address order.
    for mdl in sorted(kept.values(), key=lambda m: (m.classification() != LOCKED, m.address)):
        record = mdl_record(mdl)
        record.irps = list(holders.held_by.get(mdl.address, []))
        record.chained_from = holders.chain_parent.get(mdl.address)
        record.holders = holder_records(holders, mdl.address)
        report.mdls.append(record)
    holds: Dict[int, List[int]] = {}
    for mdl_address, irp_addresses in holders.held_by.items():
        for irp_address in irp_addresses:
            holds.setdefault(irp_address, []).append(mdl_address)
    for address in sorted(holders.irps):
        irp_report = irp_record(context, holders.irps[address])
        irp_report.holds = sorted(holds.get(address, []))
        report.irps.append(irp_report)


def _next_steps(context: Context, p1: int) -> List[Union[str, NextStep]]:
    ranked = context.suspects.ranked()
    top = ranked[0].label if ranked else None
    if p1 == 1:
        return _unlock_next_steps(top)
    steps: List[Union[str, NextStep]] = []
    if top:
        steps.append(f"Review {top}: every MmProbeAndLockPages (or IRP it pends with a locked MDL) needs a "
                     f"matching MmUnlockPages / completion before the process exits, including on cancel and "
                     f"cleanup paths.")
    pfn_range = context.options.pfn_range
    if pfn_range is not None and not top:
        # Memory outside the range was not searched: the hunt itself is the next step, not a reboot.
        steps.append(f"Run the hunt again without --pfn-range (or with a wider one): only page frames "
                     f"{pfn_range.first:x}-{pfn_range.last:x} were searched, so MDLs and IRPs elsewhere in "
                     f"memory were not looked for.")
        return steps
    if context.report.tracked_pages is not None or context.bugcheck.parameters[3] != 0:
        # Tracking was on: its procedure's last step still applies once the investigation is over.
        steps.append(TRACK_LOCKED_PAGES_STEPS[-1])
    else:
        steps.append(NextStep("Confirm the culprit by reproducing with locked-page tracking on:" if top
                              else "Reproduce with locked-page tracking on, so that Windows names the driver:",
                              TRACK_LOCKED_PAGES_STEPS))
    return steps


def _unlock_next_steps(top: Optional[str]) -> List[Union[str, NextStep]]:
    """P1 = 1: a driver unlocked pages that were not locked; the crash happened in that unlock."""
    who = top or "the drivers that use MDLs of this process"
    return [
        f"Review {who} for an MmUnlockPages with no matching MmProbeAndLockPages, or two on the same MDL "
        f"(for instance once on completion and again on cleanup or cancel).",
        "Run k on the thread that crashed: with P1 = 1 the bug check is raised while the MDL (P2) is being "
        "unlocked (the locked-page tracker found no record of it), so the first frame outside nt and hal "
        "is the driver that was unlocking it.",
    ]
