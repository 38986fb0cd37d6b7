"""Bug check 0x4E PFN_LIST_CORRUPT: every documented subcode decoded; for the lock-count subcodes the
MDLs that still describe the page are found, then the IRPs that hold them and their drivers.

An MDL's PFN array follows its header, so a page frame number that appears in memory as a pointer-sized
word may be slot k of some MDL whose header starts (sizeof(MDL) + k * sizeof(PFN_NUMBER)) bytes earlier.
One batched search finds every occurrence; for each, the candidate headers within the largest PFN array
an MDL can have (its Size field is 16 bits) are filtered on their Size field, then validated by read_mdl,
and kept only if the page really is in the slot the candidate implies.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..kernel.mdl import MAX_MDL_SIZE, Mdl, read_mdl
from ..report import LOW, MEDIUM, Fact, Rejected
from ..targets.base import PAGE_SIZE, MemoryReadError, SearchUnavailable
from .common import Context
from .holders import hunt_mdls

NOBODY_NAMED = ("No driver is named by the evidence: no MDL still describing the page is held by an IRP. "
                "leakhunt does not guess; run !analyze -v and look at the stack (k) for the driver that "
                "unlocked or freed the page.")

# Page locations (MMLISTS, the u3.e1.PageLocation field of a PFN entry): 0x99 and 0x9A report one in P3.
PAGE_LOCATIONS = {
    0: "ZeroedPageList", 1: "FreePageList", 2: "StandbyPageList", 3: "ModifiedPageList",
    4: "ModifiedNoWritePageList", 5: "BadPageList", 6: "ActiveAndValid", 7: "TransitionPage",
}

# What each documented subcode means for the investigation, and how confident an MDL found through it is.
SUBCODES: Dict[int, Tuple[str, str]] = {
    0x01: ("a PFN list head is corrupted: something wrote over the memory manager's data (a stray write or "
           "hardware); no MDL names the culprit", ""),
    0x02: ("a PFN list entry is corrupted: a stray write or hardware error; no MDL names the culprit", ""),
    0x06: ("a hardware or prototype PTE is corrupted: single-bit errors and broken DMA are the usual causes", ""),
    0x07: ("the page was unlocked more times than it was locked: a driver called MmUnlockPages twice on an MDL, "
           "or unlocked an MDL it never locked; an MDL that still lists the page points at the driver", MEDIUM),
    0x8D: ("the free-page list is inconsistent: most likely a hardware problem; test the memory first", ""),
    0x8F: ("the free or zeroed page list head is corrupted: a stray write or hardware error", ""),
    0x99: ("a PTE or PFN entry is corrupted: an MDL that still lists the page is only a lead", LOW),
    0x9A: ("a page still locked for I/O was being freed: the driver that locked it has not unlocked it yet; an "
           "MDL that still locks the page points at the driver", MEDIUM),
}
HUNTED_SUBCODES = (0x07, 0x99, 0x9A)

# Bounds for one page frame (noise in a large dump can hold a small value often): occurrences examined,
# candidate MDL headers validated.
MAX_HITS = 4096
MAX_CANDIDATES = 20000
MAX_CACHED_PAGES = 256


def analyze_0x4e(context: Context) -> None:
    report = context.report
    p1, p2, p3, p4 = context.bugcheck.parameters
    report.analysis = "0x4E PFN hunt"
    meaning = SUBCODES.get(p1)
    if meaning is None:
        report.warn(f"P1 = {p1:#x} is not a documented 0x4E subcode; only the parameters are decoded")
        report.next_steps.extend(context.decoded.next_steps)
        return
    report.facts.append(Fact("what went wrong", f"subcode {p1:#x}", meaning[0]))
    if p1 in (0x99, 0x9A):
        report.facts.append(Fact("page state (P3)", PAGE_LOCATIONS.get(p3, f"{p3:#x} (not a page list)"),
                                 "the list the page was on (MMLISTS)"))
    if p1 == 0x9A:
        report.facts.append(Fact("reference count (P4)", str(p4), "I/O references still held on the page"))
    if p1 == 0x07:
        report.facts.append(Fact("share count (P3)", str(p3), "mappings of the page still counted"))
    try:
        if p1 in HUNTED_SUBCODES:
            _hunt_page(context, p2, p1, meaning[1])
    except SearchUnavailable as error:
        report.complete_hunt = False
        report.warn(f"the memory search is not possible on this source: {error}")
    finally:
        steps = []
        ranked = context.suspects.ranked()
        if ranked:
            steps.append(f"Review {ranked[0].label}: look for an MmUnlockPages without a matching MmProbeAndLockPages, "
                         f"or a second MmUnlockPages on the same MDL.")
        report.next_steps.extend(steps + list(context.decoded.next_steps))


def _hunt_page(context: Context, pfn: int, subcode: int, confidence: str) -> None:
    report = context.report
    found = find_mdls_holding_pfn(context, pfn)
    report.facts.append(Fact("MDLs listing the page", str(len(found)),
                             f"MDLs whose PFN array holds page frame {pfn:#x}"))
    if not found:
        report.warn(f"no MDL listing page frame {pfn:#x} was found in memory: it was freed or reused, or is "
                    f"missing from this source")
        return
    wanted = [(mdl.address, f"lists PFN {pfn:#x} in slot {slot}"
                            f" ({'pages locked' if mdl.locked else 'pages not locked'})") for mdl, slot in found]
    holders = hunt_mdls(context, wanted, f"it still lists page frame {pfn:#x} of bug check 0x4E/{subcode:#x}",
                        confidence)
    orphans = [mdl for mdl, _ in found if not holders.named_drivers(mdl.address)]
    if orphans:
        held = "held by nothing that names a driver" if any(holders.private.get(m.address) for m in orphans) \
            else "held by no IRP"
        report.warn(f"{len(orphans)} MDL(s) listing the page are {held}: whoever keeps them cannot be named "
                    f"from memory alone")


def find_mdls_holding_pfn(context: Context, pfn: int) -> List[Tuple[Mdl, int]]:
    """(MDL, slot) for every valid MDL whose PFN array holds ``pfn``, from one batched search."""
    target, layouts = context.target, context.layouts
    layout = layouts.get("_MDL")
    header, ps = layout.size, target.pointer_size
    size_offset = layout.offset("Size")
    max_slots = (MAX_MDL_SIZE - header) // ps
    hits = [hit for hit in context.search([pfn]).get(pfn, []) if hit.virtual is not None]
    if len(hits) > MAX_HITS:
        context.report.warn(f"page frame {pfn:#x} occurs {len(hits)} times in memory; only the first {MAX_HITS} "
                            f"occurrences were examined")
        hits = hits[:MAX_HITS]
    found: Dict[int, Tuple[Mdl, int]] = {}
    validated = 0
    pages: Dict[int, Optional[bytes]] = {}
    for hit in hits:
        buffer, start = _bytes_before(context, pages, hit.virtual, header + (max_slots - 1) * ps)
        for slot in _plausible_slots(buffer, start, hit.virtual, header, ps, size_offset, max_slots):
            candidate = hit.virtual - header - slot * ps
            if candidate in found:
                continue
            if validated >= MAX_CANDIDATES:
                _report_cap(context, pfn)
                return sorted(found.values(), key=lambda item: item[0].address)
            validated += 1
            try:
                mdl = read_mdl(target, layouts, candidate)
            except MemoryReadError:
                continue
            if mdl.problems:
                continue
            if slot < len(mdl.pfns) and mdl.pfns[slot] == pfn:
                found[candidate] = (mdl, slot)
            else:
                context.report.rejected.append(Rejected(candidate, f"MDL listing PFN {pfn:#x}",
                                                        [f"PFN-array slot {slot} is past the pages it describes"]))
    return sorted(found.values(), key=lambda item: item[0].address)


def _report_cap(context: Context, pfn: int) -> None:
    context.report.warn(f"page frame {pfn:#x} occurs so often in memory that only {MAX_CANDIDATES} candidate MDL "
                        f"headers were examined")


def _page(context: Context, pages: Dict[int, Optional[bytes]], address: int) -> Optional[bytes]:
    """One page of memory, read once per search (neighbouring hits share the pages before them)."""
    if address not in pages:
        if len(pages) >= MAX_CACHED_PAGES:
            pages.clear()
        try:
            pages[address] = context.target.read(address, PAGE_SIZE)
        except MemoryReadError:
            pages[address] = None
    return pages[address]


def _bytes_before(context: Context, pages: Dict[int, Optional[bytes]], address: int,
                  span: int) -> Tuple[bytes, int]:
    """The readable bytes from at most ``span`` before ``address`` up to it: (data, its start address)."""
    page = address & ~(PAGE_SIZE - 1)
    lowest = max(address - span, 0)
    content = _page(context, pages, page)
    if content is None:
        return b"", address
    chunks = [content[:address - page]]
    start = page
    while start > lowest:
        previous = _page(context, pages, start - PAGE_SIZE)
        if previous is None:
            break
        chunks.append(previous)
        start -= PAGE_SIZE
    data = b"".join(reversed(chunks))
    cut = max(lowest - start, 0)
    return data[cut:], start + cut


def _plausible_slots(buffer: bytes, start: int, hit: int, header: int, ps: int, size_offset: int,
                     max_slots: int) -> List[int]:
    """Slots k whose candidate header (hit - header - k*ps) has a Size with room for k+1 PFNs."""
    slots = np.arange(max_slots, dtype=np.int64)
    offsets = (hit - start) - header - slots * ps + size_offset
    inside = offsets >= 0
    slots, offsets = slots[inside], offsets[inside]
    if not len(offsets):
        return []
    raw = np.frombuffer(buffer, dtype=np.uint8)
    sizes = raw[offsets].astype(np.int64) | (raw[offsets + 1].astype(np.int64) << 8)
    room = (sizes - header) // ps
    keep = (sizes >= header + ps) & ((sizes - header) % ps == 0) & (room > slots)
    return slots[keep].tolist()
