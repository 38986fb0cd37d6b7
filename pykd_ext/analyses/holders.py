"""What keeps a leaked MDL: every place memory holds its address, classified, and the drivers named.

The hunt's search finds every aligned, exact copy of an MDL's address (a one-bit neighbour or an
unaligned copy is never a hit). Each copy is classified by the first classifier of CLASSIFIERS that
recognises its place:

  IRP               an IRP's MdlAddress, the IRP valid and its MDL chain reaching the MDL
  MDL chain         the Next of another valid MDL (the chain is followed back, one search per level)
  image             a loaded image: in a writable section, a global of that driver, which keeps the MDL;
                    in code or read-only data, or where the section headers are not in memory, noted,
                    blaming nobody; in nt or hal, the kernel's (nobody)
  kernel stack      a kernel stack of one of the process's threads: a local variable (nobody)
  device extension  DeviceExtension up to DeviceObjectExtension of a valid device object: its driver
  pool block        the block !pool would show: a free block holds nothing; the kernel's own tag names
                    nobody; a tag that is a 32-bit constant in exactly one loaded image outside nt and hal
                    names that driver (medium); a tag in no image or in several is followed one level up:
                    the block's own address is searched for (all such blocks in one pass) and those copies
                    are classified the same way, without going further
  unknown           anything else: shown, blames nobody

Each kind that names a driver is a row of ``pykd_ext.evidence``.

When the source can collect IRP headers while it searches (dump files, complete snapshots), the
hunt for a process's MDLs makes one pass: the MDLs are found and every IRP header of memory is
collected with its MdlAddress in the same pass, and IRPs are joined to MDLs by following MDL chains
forward (``join_irps``). A second pass searches only for the locked MDLs no IRP holds, and a third
only for the pool blocks followed one level up.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..evidence import (DEVICE_EXTENSION, DRIVER_GLOBAL, HOLDING_BLOCK, IRP_CURRENT_LOCATION, POOL_TAG, EvidenceKind,
                        capped)
from ..kernel.images import find_tags_in_images, image_section
from ..kernel.io import DeviceObject, Irp, irp_headers, major_function_name
from ..kernel.mdl import Mdl, read_mdl
from ..kernel.modules import ModuleMap
from ..kernel.pool import FOUND_BY_BIG_POOL_TABLE, PoolBlock, PoolFinder
from ..kernel.threads import KernelStack, kernel_stacks
from ..report import (CHAIN_HOLDER, DEVICE_HOLDER, IMAGE_HOLDER, IRP_HOLDER, POOL_HOLDER, STACK_HOLDER, UNKNOWN_HOLDER,
                      HolderRecord, Rejected)
from ..targets.base import HeaderHit, MemoryReadError, Module, SearchHit
from .common import MAX_MDL_CHAIN, Context, irp_record, mdl_record

# Tags the kernel allocates with (the I/O manager's IRPs and MDLs, Mm's lock tracker and its header:
# pooltag.txt, WRK): a block with one of them is the kernel's whatever the images hold.
KERNEL_POOL_TAGS = frozenset({"Irp ", "Mdl ", "MmLk", "MmTx"})
# Copies of one value classified at most (a value copied thousands of times is not a leaked MDL's).
MAX_HOLDERS_PER_VALUE = 64
# Pool blocks followed one level up at most, in one search.
MAX_BLOCKS_FOLLOWED = 1024
# MDLs named in one sentence of evidence before "and N more".
MDLS_NAMED = 3


@dataclass
class Holder:
    """One place holding a copy of an MDL's address (or of a pool block's, one level up), other than an IRP
    or an MDL chain (those are the hunt's own: holder_records gives them)."""

    kind: str
    address: Optional[int]  # where the copy is (a kernel virtual address), None when only its physical one is known
    value: int  # what it holds: the MDL, or the pool block followed one level up
    physical: Optional[int] = None
    summary: str = ""  # the MDLs table's cell: "shmdrv devext+0x28", "pool 'ShmC' (shmdrv.sys)", "shmdrv+0x3040"
    description: str = ""  # where it is, in words
    driver: Optional[str] = None  # the driver it names (None: it names nobody)
    image: Optional[str] = None
    driver_object: Optional[int] = None
    image_base: Optional[int] = None
    evidence: Optional[EvidenceKind] = None
    nobody: str = ""  # why it names nobody, when it does not
    device: Optional[int] = None
    module: Optional[str] = None
    section: Optional[str] = None
    block: Optional[PoolBlock] = None
    tag_images: Optional[List[str]] = None  # the loaded images holding the block's tag
    tag_note: str = ""  # what the images holding the tag say, when it names a driver
    offset: Optional[int] = None  # from the start of the device extension or pool block holding the copy
    thread: Optional[int] = None
    follow: bool = False  # a pool block whose tag names no single driver: what holds the block is looked for
    held_by: List["Holder"] = field(default_factory=list)  # what holds that block (one level up)

    @property
    def names_driver(self) -> bool:
        return self.evidence is not None

    def record(self) -> HolderRecord:
        block = self.block
        return HolderRecord(
            address=self.address, physical=self.physical, kind=self.kind, summary=self.summary,
            description=self.description + (f"; {self.tag_note}" if self.tag_note else ""), driver=self.driver,
            image=self.image,
            evidence=self.evidence.name if self.evidence else None, nobody=self.nobody, device=self.device,
            module=self.module, section=self.section,
            pool_block=block.address if block else None, pool_block_size=block.size if block else None,
            pool_tag=block.tag if block else None, pool_finder=block.finder if block else None,
            tag_images=self.tag_images, thread=self.thread, followed=self.follow,
            held_by=[h.record() for h in self.held_by])


@dataclass
class Holders:
    """What holds each hunted MDL: IRPs (directly or through an MDL chain) and every other place."""

    irps: Dict[int, Irp] = field(default_factory=dict)  # IRP address -> IRP
    held_by: Dict[int, List[int]] = field(default_factory=dict)  # hunted MDL -> IRP addresses
    chain_parent: Dict[int, int] = field(default_factory=dict)  # MDL -> the MDL whose Next points to it
    private: Dict[int, List[Holder]] = field(default_factory=dict)  # hunted MDL -> the other places holding it

    def named_drivers(self, mdl: int) -> bool:
        """Whether an IRP or another holder of ``mdl`` names a driver."""
        return bool(self.held_by.get(mdl)) or any(h.names_driver or any(u.names_driver for u in h.held_by)
                                                  for h in self.private.get(mdl, []))


# ---- where a copy is: the classifiers -------------------------------------------------------------

class Places:
    """Classifies the places holding copies of a value, for one analysis (see the module docstring)."""

    def __init__(self, context: Context, process: Optional[int] = None):
        self.context = context
        self.process = process
        self.pool = PoolFinder(context.target, context.layouts, context.symbol, context.report.warn)
        self._stacks: Optional[List[KernelStack]] = None
        # The device extensions found so far, by their start: (start, end, device), for the next copies in them.
        self.extensions: List[Tuple[int, int, DeviceObject]] = []
        self.tags: Dict[str, List[Module]] = {}  # tag -> the loaded images holding it (searched so far)
        self.unread_images: Dict[str, int] = {}

    def classify(self, address: int, value: int, of_mdl: bool, physical: Optional[int] = None) -> Holder:
        """The holder at ``address`` of ``value`` (an MDL when ``of_mdl``, else a pool block)."""
        for classifier in CLASSIFIERS:
            holder = classifier(self, address, value, of_mdl)
            if holder is not None:
                holder.physical = physical
                return holder
        return Holder(UNKNOWN_HOLDER, address, value, physical, summary="unknown",
                      description="in kernel memory that is not a loaded image, a kernel stack of the process, a "
                                  "device extension or a pool block leakhunt can place",
                      nobody="an unknown place names nobody")

    def stacks(self) -> List[KernelStack]:
        if self._stacks is None:
            self._stacks = []
            if self.process is not None:
                self._stacks, problems = kernel_stacks(self.context.target, self.context.layouts, self.process)
                for problem in problems:
                    self.context.report.warn(problem)
        return self._stacks

    def settle_tags(self, holders: Iterable[Holder], follow: bool) -> None:
        """Decide what each pool holder's tag names, after one search of the loaded images for all the
        tags not searched yet: one image outside nt and hal names that driver; the kernel's, a free
        block or an unreadable tag name nobody; no image or several names nobody here and, when
        ``follow``, marks the block to be followed one level up."""
        pool_holders = [h for h in holders if h.kind == POOL_HOLDER and h.block is not None and not h.nobody]
        new_tags = {h.block.tag for h in pool_holders} - set(self.tags)
        if new_tags:
            found = find_tags_in_images(self.context.target, self.context.modules.modules, new_tags)
            for tag in new_tags:
                self.tags[tag] = found.holders(tag)
            self.unread_images.update(found.unread)
            if found.truncated:
                self.context.report.warn("the search of the loaded images for pool tags stopped at its cap: some "
                                         "tags may be in images that were not searched")
        for holder in pool_holders:
            _settle_tag(self, holder, follow)


def _image_holder(places: Places, address: int, value: int, of_mdl: bool) -> Optional[Holder]:
    context = places.context
    module = context.modules.find(address)
    if module is None:
        return None
    symbol = context.modules.symbolize(address)
    section = image_section(context.target, context.layouts, module, address)
    holder = Holder(IMAGE_HOLDER, address, value, module=module.name, section=section.name if section else None,
                    image=module.image, image_base=module.base)
    if ModuleMap.is_kernel_or_hal(module):
        holder.summary = f"{symbol} (kernel)"
        holder.description = f"at {symbol}, inside {module.image}"
        holder.nobody = "a place inside the kernel or HAL names no driver"
        holder.image = None
        return holder
    if section is None:
        holder.summary = f"{symbol} (no headers)"
        holder.description = f"at {symbol}, inside {module.image}"
        holder.nobody = "the image's section headers are not in memory: a global cannot be told from code"
        holder.image = None
        return holder
    if not section.writable:
        what = "code" if section.code else "read-only"
        holder.summary = f"{symbol} ({what})"
        holder.description = f"at {symbol}, in {module.image}'s {what} section {section.name}"
        holder.nobody = f"a {what} section holds no variables: a copy there is a coincidence of bytes"
        holder.image = None
        return holder
    holder.summary = symbol
    holder.evidence = DRIVER_GLOBAL
    holder.description = f"at {symbol}, in {module.image}'s {section.name} section (a global of the driver)"
    return holder


def _stack_holder(places: Places, address: int, value: int, of_mdl: bool) -> Optional[Holder]:
    for stack in places.stacks():
        if stack.contains(address):
            return Holder(STACK_HOLDER, address, value, summary=f"stack of thread {hex(stack.thread)}",
                          description=f"on the kernel stack of thread {hex(stack.thread)}",
                          thread=stack.thread,
                          nobody="a kernel stack holds local variables of whatever code runs: it names no driver")
    return None


def _device_holder(places: Places, address: int, value: int, of_mdl: bool) -> Optional[Holder]:
    context = places.context
    position = bisect.bisect_right(places.extensions, (address, 1 << 64)) - 1
    known = None
    if position >= 0 and places.extensions[position][0] <= address < places.extensions[position][1]:
        known = places.extensions[position][2], places.extensions[position][0]
    block = None if known else places.pool.block_of(address)
    found = known or context.io.device_with_extension_at(address, block.address if block else None)
    if found is None:
        return None
    device, extension = found
    if known is None:
        bisect.insort(places.extensions, (extension, context.io.extension_end(device), device))
    driver = device.driver
    image = driver.image.image if driver.image else None
    offset = address - extension
    owner = driver.image.name if driver.image else driver.name.rsplit("\\", 1)[-1]
    return Holder(DEVICE_HOLDER, address, value, summary=f"{owner} devext+{offset:#x}",
                  description=f"at +{offset:#x} in the device extension of {driver.name}'s device "
                              f"{hex(device.address)}",
                  driver=driver.name, image=image, driver_object=driver.address,
                  image_base=driver.image.base if driver.image else None, evidence=DEVICE_EXTENSION,
                  device=device.address, offset=offset)


def _pool_holder(places: Places, address: int, value: int, of_mdl: bool) -> Optional[Holder]:
    block = places.pool.block_of(address)
    if block is None:
        return None
    if not of_mdl and block.contains(value):
        return Holder(POOL_HOLDER, address, value, summary=f"pool '{block.tag}' (itself)", block=block,
                      description=f"inside the pool block {hex(block.address)} itself",
                      nobody="a block holding its own address names nobody")
    offset = address - block.address
    found_by = "the big pool table" if block.finder == FOUND_BY_BIG_POOL_TABLE else f"its {block.finder}"
    holder = Holder(POOL_HOLDER, address, value, block=block, summary=f"pool '{block.tag}'", offset=offset,
                    description=f"at +{offset:#x} in pool block {hex(block.address)} ({block.size:#x} bytes, tag "
                                f"'{block.tag}', found by {found_by})")
    if not block.allocated:
        holder.summary = f"free pool '{block.tag}'"
        holder.nobody = "a free pool block holds nothing"
    elif block.tag in KERNEL_POOL_TAGS:
        holder.nobody = f"'{block.tag}' is a tag of the kernel's own allocations"
    return holder


def _settle_tag(places: Places, holder: Holder, follow: bool) -> None:
    images = places.tags.get(holder.block.tag, [])
    holder.tag_images = [m.image for m in images]
    tag = holder.block.tag
    kernel = [m for m in images if ModuleMap.is_kernel_or_hal(m)]
    drivers = [m for m in images if not ModuleMap.is_kernel_or_hal(m)]
    if kernel:
        holder.nobody = f"the tag '{tag}' is a constant in {kernel[0].image}: the kernel's own allocations"
    elif len(drivers) == 1:
        module = drivers[0]
        holder.image, holder.image_base, holder.module = module.image, module.base, module.name
        holder.evidence = POOL_TAG
        holder.summary = f"pool '{tag}' ({module.image})"
        unread = len([name for name in places.unread_images if name != module.image])
        holder.tag_note = (f"the tag '{tag}' is a 32-bit constant in {module.image} only among the loaded images"
                           + (f" ({unread} other image(s) could be read only in part)" if unread else ""))
    else:
        where = "in no loaded image" if not drivers else f"in {', '.join(m.image for m in drivers)}"
        holder.nobody = f"the tag '{tag}' is {where}: it names no single driver"
        holder.follow = follow


# In order: the first that recognises a place classifies it (an IRP's MdlAddress and an MDL's Next are
# recognised first, by find_holders, which follows the chains they belong to).
CLASSIFIERS: Sequence[Callable[[Places, int, int, bool], Optional[Holder]]] = (
    _image_holder, _stack_holder, _device_holder, _pool_holder)


# ---- the search for holders ---------------------------------------------------------------------

def find_holders(context: Context, mdl_addresses: Iterable[int], holders: Optional[Holders] = None,
                 places: Optional[Places] = None, classify: Iterable[int] = ()) -> Holders:
    """Search for every MDL address in one pass per chain level and explain each hit.

    A hit at address ``h`` is an IRP's MdlAddress when ``h - offsetof(IRP, MdlAddress)`` is a valid
    IRP whose MDL chain reaches the MDL, or the Next field of another MDL (a chained MDL), in which
    case that MDL is searched for at the next level. The other copies of the MDLs of ``classify`` that
    no IRP holds, and of the MDLs chained before them, are classified (``Places.classify``, with
    ``places``) as their holders; the other copies of the rest are rejected candidates. ``holders``
    (when given) is filled level by level, so an interrupted hunt keeps the IRPs it found.
    """
    holders = Holders() if holders is None else holders
    irp_mdl_offset = context.layouts.get("_IRP").offset("MdlAddress")
    next_offset = context.layouts.get("_MDL").offset("Next")
    wanted = sorted(set(mdl_addresses))
    private_wanted = set(classify) if places is not None else set()
    # MDL -> the IRPs whose MdlAddress is that MDL itself (the chains are credited after each level), and
    # the copies of it left to classify.
    direct: Dict[int, List[int]] = {}
    unexplained: Dict[int, List[SearchHit]] = {}
    chained_to_private: Set[int] = set(private_wanted)  # whose other copies may hold a private MDL
    frontier = wanted
    searched: Set[int] = set()
    depth = 0
    try:
        while frontier:
            if depth >= MAX_MDL_CHAIN:
                context.report.warn(f"MDL chains deeper than {MAX_MDL_CHAIN} links were not followed further")
                break
            searched.update(frontier)
            hits = context.search(frontier)
            next_frontier: Set[int] = set()
            for mdl_address in frontier:
                for hit in hits.get(mdl_address, []):
                    if hit.virtual is None:
                        context.report.rejected.append(Rejected(hit.physical or 0,
                                                                f"reference to MDL {mdl_address:#x}",
                                                                ["the hit has no virtual address"]))
                        continue
                    irp, not_irp = _irp_at(context, hit.virtual - irp_mdl_offset, mdl_address)
                    if irp is not None:
                        holders.irps.setdefault(irp.address, irp)
                        if irp.address not in direct.setdefault(mdl_address, []):
                            direct[mdl_address].append(irp.address)
                        continue
                    parent = _chain_parent_at(context, hit.virtual - next_offset, mdl_address)
                    if parent is not None:
                        holders.chain_parent.setdefault(mdl_address, parent)
                        if mdl_address in chained_to_private:
                            chained_to_private.add(parent)
                        if parent not in searched:
                            next_frontier.add(parent)
                        continue
                    if mdl_address in chained_to_private:
                        _reject_irp_like(context, hit.virtual - irp_mdl_offset, not_irp)
                        unexplained.setdefault(mdl_address, []).append(hit)
                        continue
                    context.report.rejected.append(Rejected(hit.virtual, f"holder of MDL {mdl_address:#x}",
                                                            [f"not an IRP's MdlAddress "
                                                             f"({'; '.join(not_irp or ['an invalid IRP'])})",
                                                             "not an MDL's Next"]))
            frontier = sorted(next_frontier)
            depth += 1
    finally:
        # Also when interrupted: the IRPs found so far are credited to the MDLs they hold.
        _credit_chains(holders, wanted, direct)
    unheld = [mdl for mdl in wanted if mdl in private_wanted and not holders.held_by.get(mdl)]
    if unheld:
        _classify_copies(context, holders, places, unheld, unexplained)
    return holders


def _credit_chains(holders: Holders, wanted: List[int], direct: Dict[int, List[int]]) -> None:
    """Each hunted MDL is held by the IRPs that hold it or any MDL whose Next chain leads to it, whatever
    order the search met the links in."""
    for hunted in wanted:
        for link in _chain_back(holders, hunted):
            for irp_address in direct.get(link, []):
                held = holders.held_by.setdefault(hunted, [])
                if irp_address not in held:
                    held.append(irp_address)


def _chain_back(holders: Holders, mdl: int) -> List[int]:
    """``mdl`` and the MDLs whose Next chain leads to it, nearest first (bounded and cycle-safe:
    chain_parent is corrupt memory's too)."""
    links: List[int] = []
    current: Optional[int] = mdl
    while current is not None and current not in links and len(links) < MAX_MDL_CHAIN:
        links.append(current)
        current = holders.chain_parent.get(current)
    return links


def _classify_copies(context: Context, holders: Holders, places: Places, unheld: List[int],
                     copies: Dict[int, List[SearchHit]]) -> None:
    """Classify the unexplained copies of each MDL of ``unheld`` and of the MDLs chained before it (each
    copy once, at most MAX_HOLDERS_PER_VALUE per MDL), then settle the pool tags among them."""
    classified: Dict[int, List[Holder]] = {}
    links = {link for mdl in unheld for link in _chain_back(holders, mdl)}
    places.pool.decode_pages_of(hit.virtual for link in links for hit in copies.get(link, [])[:MAX_HOLDERS_PER_VALUE])
    for mdl in unheld:
        for link in _chain_back(holders, mdl):
            if link not in classified:
                hits = copies.get(link, [])
                if len(hits) > MAX_HOLDERS_PER_VALUE:
                    context.report.warn(f"MDL {context.address(link)} is copied {len(hits)} times in memory; only "
                                        f"the first {MAX_HOLDERS_PER_VALUE} copies were classified")
                    hits = hits[:MAX_HOLDERS_PER_VALUE]
                classified[link] = [places.classify(hit.virtual, link, True, hit.physical) for hit in hits]
            private = holders.private.setdefault(mdl, [])
            private.extend(holder for holder in classified[link] if holder not in private)
        if not holders.private[mdl]:
            del holders.private[mdl]
    places.settle_tags([holder for found in classified.values() for holder in found], follow=True)


def _reject_irp_like(context: Context, address: int, problems: List[str]) -> None:
    """Record an IRP candidate whose Type is IO_TYPE_IRP but whose header is not an IRP's, with why
    (``problems``: what plausible_irp says of its header)."""
    if problems and problems != ["unreadable"] and not problems[0].startswith("Type "):
        context.report.rejected.append(Rejected(address, "IRP", problems))


def _irp_at(context: Context, address: int, mdl_address: int) -> Tuple[Optional[Irp], List[str]]:
    """(the IRP at ``address`` whose MDL chain reaches ``mdl_address``, or None; what is wrong with the
    header at ``address``, [] when it is an IRP's): an IRP rejected for what its header does not show
    is recorded as a rejected candidate."""
    irp, problems = context.io.plausible_irp(address)
    if irp is None:
        return None, problems
    if irp.problems:
        context.report.rejected.append(Rejected(address, "IRP", irp.problems))
        return None, []
    if not _chain_reaches(context, irp.mdl_address, mdl_address):
        context.report.rejected.append(Rejected(address, "IRP", [f"its MDL chain does not reach {mdl_address:#x}"]))
        return None, []
    return irp, []


def _chain_parent_at(context: Context, address: int, mdl_address: int) -> Optional[int]:
    layout = context.layouts.get("_MDL")
    try:
        size = context.target.read_u16(address + layout.offset("Size"))
        if size < layout.size or (size - layout.size) % context.target.pointer_size:
            return None  # not an MDL's header: most copies are not, and this spares read_mdl's checks
        parent = read_mdl(context.target, context.layouts, address)
    except MemoryReadError:
        return None
    if parent.problems or parent.next != mdl_address:
        return None
    return address


def _chain_reaches(context: Context, first: int, wanted: int) -> bool:
    """Follow MDL.Next from ``first`` (bounded, cycle-safe) looking for ``wanted``."""
    if first == wanted:  # the usual case: the IRP's own MdlAddress
        return True
    return wanted in _chain_from(context, first, {wanted}, {})


def _chain_from(context: Context, first: int, wanted: Set[int], known: Dict[int, Mdl]) -> List[int]:
    """The MDLs of ``wanted`` that MDL.Next leads to from ``first`` (itself included), in chain order;
    ``known`` MDLs are not read again. Bounded and cycle-safe."""
    next_offset = context.layouts.get("_MDL").offset("Next")
    reached: List[int] = []
    seen: Set[int] = set()
    current = first
    while current and current not in seen and len(seen) < MAX_MDL_CHAIN:
        seen.add(current)
        if current in wanted:
            reached.append(current)
        if current in known:
            current = known[current].next
            continue
        if not context.target.is_kernel_object_address(current):
            break
        try:
            current = context.target.read_pointer(current + next_offset)
        except MemoryReadError:
            break
    return reached


# ---- the one-pass join of IRPs and MDLs ------------------------------------------------------------

def search_with_irps(context: Context, values: List[int]) -> Tuple[Dict[int, List[SearchHit]], Optional[List[HeaderHit]]]:
    """One pass for ``values`` that also collects every IRP header when the source can (else None)."""
    if not context.target.finds_object_headers:
        return context.search(values), None
    return context.search_with_headers(values, irp_headers(context.layouts))


def join_irps(context: Context, mdls: Dict[int, Mdl], headers: List[HeaderHit], holders: Holders) -> None:
    """Credit each IRP collected by the first pass whose MDL chain (followed forward through Next from
    its MdlAddress) reaches MDLs of ``mdls``, as find_holders would have found it, without a search."""
    wanted = set(mdls)
    for header in headers:
        first = header.next_word
        if header.virtual is None or not first:
            continue
        reached = _chain_from(context, first, wanted, mdls)
        if not reached:
            continue
        irp, problems = context.io.plausible_irp(header.virtual)
        if irp is None:
            _reject_irp_like(context, header.virtual, problems)
            continue
        if irp.problems:
            context.report.rejected.append(Rejected(irp.address, "IRP", irp.problems))
            continue
        holders.irps.setdefault(irp.address, irp)
        previous = first
        for mdl in reached:
            held = holders.held_by.setdefault(mdl, [])
            if irp.address not in held:
                held.append(irp.address)
            if mdl != first:
                parent = _chain_parent_before(context, previous, mdl, mdls)
                if parent is not None:
                    holders.chain_parent.setdefault(mdl, parent)
            previous = mdl


def _chain_parent_before(context: Context, start: int, mdl: int, known: Dict[int, Mdl]) -> Optional[int]:
    """The valid MDL whose Next is ``mdl``, on the chain from ``start`` (bounded)."""
    seen: Set[int] = set()
    current = start
    while current and current not in seen and len(seen) < MAX_MDL_CHAIN:
        seen.add(current)
        try:
            link = known[current] if current in known else read_mdl(context.target, context.layouts, current)
        except MemoryReadError:
            return None
        if link.next == mdl:
            return current if not link.problems else None
        current = link.next
    return None


# ---- one level up: what holds the pool blocks whose tag names nobody ------------------------------

def follow_blocks(context: Context, holders: Holders, places: Places) -> None:
    """Search for the address of every pool block marked to follow (one pass for all, bounded) and
    classify its copies: what holds the block names who keeps the MDLs in it."""
    blocks: Dict[int, List[Holder]] = {}
    for mdl_holders in holders.private.values():
        for holder in mdl_holders:
            if holder.follow and holder.block is not None:
                blocks.setdefault(holder.block.address, []).append(holder)
    if not blocks:
        return
    addresses = sorted(blocks)
    if len(addresses) > MAX_BLOCKS_FOLLOWED:
        context.report.warn(f"{len(addresses)} pool blocks holding leaked MDLs have tags that name no single driver; "
                            f"only {MAX_BLOCKS_FOLLOWED} were followed to what holds them")
        addresses = addresses[:MAX_BLOCKS_FOLLOWED]
    hits = context.search(addresses)
    found: List[Holder] = []
    for address in addresses:
        copies = [hit for hit in hits.get(address, []) if hit.virtual is not None]
        if len(copies) > MAX_HOLDERS_PER_VALUE:
            context.report.warn(f"pool block {context.address(address)} is pointed at from {len(copies)} places; "
                                f"only the first {MAX_HOLDERS_PER_VALUE} were classified")
            copies = copies[:MAX_HOLDERS_PER_VALUE]
        above = [places.classify(hit.virtual, address, False, hit.physical) for hit in copies]
        found.extend(above)
        for holder in blocks[address]:
            holder.held_by = above
    places.settle_tags(found, follow=False)
    for followed in blocks.values():
        for holder in followed:
            namer = next((above for above in holder.held_by if above.names_driver), None)
            if namer is not None:
                holder.summary += f" <- {namer.summary}"


# ---- blame ------------------------------------------------------------------------------------------

def blame_irp(context: Context, irp: Irp, why: str, confidence: str, mdls: Iterable[int]) -> None:
    """Put the driver that owns the IRP's current stack location on the suspect board.

    ``why`` says what the IRP holds (``mdls``, the leaked MDLs its chain reaches). Only the current
    location is evidence of holding the leak: the drivers above it passed the IRP down and the ones
    below it have not seen it yet; the IRP's stack in the report shows them all.
    """
    location = irp.current
    if location is None:
        context.report.warn(f"IRP {context.address(irp.address)} is not at any driver's stack location "
                            f"(CurrentLocation {irp.current_location} of {irp.stack_count}); no driver is blamed "
                            f"through it")
        return
    driver = location.driver
    if driver is None or driver.problems or not driver.name:
        reasons = (location.device.problems if location.device else ["no device object"]) + \
            (driver.problems if driver else [])
        context.report.warn(f"IRP {context.address(irp.address)} current stack location {location.number} "
                            f"names no valid driver ({'; '.join(reasons) or 'unnamed driver'})")
        return
    image = driver.image.image if driver.image else None
    step = (f"{why}: held by IRP {context.address(irp.address)}, whose current stack location "
            f"{location.number} ({major_function_name(location.major)}) is at {driver.name}'s device "
            f"{context.address(location.device.address)}")
    context.suspects.add(driver.name, image, confidence, None, step, driver.address,
                         driver.image.base if driver.image else None, mdls=mdls, kind=IRP_CURRENT_LOCATION)


def blame_private(context: Context, holders: Holders, mdls: Iterable[int],
                  describe: Callable[[List[int]], str], highest: str) -> None:
    """Put the drivers that the other holders of ``mdls`` name on the suspect board: one piece of
    evidence per driver, kind and place (a device extension, an image section, a tag, a block's holder),
    whatever the number of MDLs it holds. ``describe`` says what a list of MDLs is; ``highest`` caps the
    confidence (the hunt's: a lock never made, an MDL named by a parameter...)."""
    groups: Dict[Tuple, List[Tuple[int, Holder, Optional[Holder]]]] = {}
    for mdl in mdls:
        for holder in holders.private.get(mdl, []):
            if holder.names_driver:
                groups.setdefault(_group_key(holder, None), []).append((mdl, holder, None))
            for above in holder.held_by:
                if above.names_driver:
                    groups.setdefault(_group_key(above, holder), []).append((mdl, above, holder))
    for key, members in groups.items():
        kind = key[0]
        namer = members[0][1]
        held = sorted({mdl for mdl, _, _ in members})
        confidence = capped(kind.confidence, highest)
        chained = any((block or namer).value != mdl for mdl, namer, block in members)
        text = f"{describe(held)}: held {_where(members)}" + (", reached through the MDL.Next chain" if chained else "")
        context.suspects.add(namer.driver, namer.image, confidence, None, text, namer.driver_object, namer.image_base,
                             mdls=held, kind=kind)


def _group_key(namer: Holder, block: Optional[Holder]) -> Tuple:
    kind = HOLDING_BLOCK if block is not None else namer.evidence
    place = (namer.kind, namer.device, namer.image, namer.section,
             namer.block.tag if namer.block is not None and namer.kind == POOL_HOLDER else None)
    return (kind, namer.driver, namer.image, place, block.block.tag if block is not None else None)


def _where(members: List[Tuple[int, Holder, Optional[Holder]]]) -> str:
    """Where the holders of one group keep the MDLs, in words: one place as its holder says it; several in
    one device extension, image section or tag's blocks as a list (three named, then how many more)."""
    places: List[Tuple[Holder, Optional[Holder]]] = []
    seen: Set[Tuple[int, int]] = set()
    for _, namer, block in members:
        if (id(namer), id(block)) not in seen:
            seen.add((id(namer), id(block)))
            places.append((namer, block))
    first, block = places[0]
    note = f"; {first.tag_note}" if first.tag_note else ""
    if len(places) == 1:
        text = first.description if block is None else f"{block.description}, whose address is held {first.description}"
        return text + note
    if block is None and first.kind == DEVICE_HOLDER:
        return (f"in the device extension of {first.driver}'s device {hex(first.device)} (at "
                f"{_named([f'+{h.offset:#x}' for h, _ in places])})")
    if block is None and first.kind == IMAGE_HOLDER:
        return (f"in {first.image}'s {first.section or 'image'} section, globals of the driver (at "
                f"{_named([h.summary for h, _ in places])})")
    if block is None and first.kind == POOL_HOLDER:
        return (f"in {len(places)} pool blocks tagged '{first.block.tag}' (at "
                f"{_named([f'+{h.offset:#x} of {hex(h.block.address)}' for h, _ in places])}){note}")
    texts = [f"{above.description}, whose address is held {namer.description}" for namer, above in places]
    return "; ".join(texts[:MDLS_NAMED]) + (f"; and {len(texts) - MDLS_NAMED} more place(s) like these"
                                            if len(texts) > MDLS_NAMED else "")


def _named(items: List[str]) -> str:
    """The first MDLS_NAMED items of a list in a sentence, then how many more."""
    shown = ", ".join(items[:MDLS_NAMED])
    return shown + (f" and {len(items) - MDLS_NAMED} more" if len(items) > MDLS_NAMED else "")


def list_mdls(context: Context, mdls: Sequence[int]) -> str:
    """MDL addresses in a sentence: the first MDLS_NAMED, then how many more."""
    return _named([context.address(m) for m in mdls])


def holder_records(holders: Holders, mdl: int) -> List[HolderRecord]:
    """The report's holders of ``mdl``: its IRPs, the MDL whose Next it is, every other place."""
    records = [HolderRecord(address=irp, kind=IRP_HOLDER, summary=f"IRP {hex(irp)}",
                            description=f"IRP {hex(irp)}, whose MDL chain reaches it", irp=irp)
               for irp in holders.held_by.get(mdl, [])]
    parent = holders.chain_parent.get(mdl)
    if parent is not None:
        records.append(HolderRecord(address=parent, kind=CHAIN_HOLDER, summary=f"MDL {hex(parent)}",
                                    description=f"the Next of MDL {hex(parent)}", parent_mdl=parent))
    for holder in holders.private.get(mdl, []):
        record = holder.record()
        if holder.value != mdl:  # a copy of an MDL chained before this one
            record.description += f"; it holds MDL {hex(holder.value)}, whose Next chain reaches this one"
        records.append(record)
    return records


def hunt_mdls(context: Context, wanted: List[Tuple[int, str]], why: str, confidence: str) -> Holders:
    """Decode each (MDL address, role) into report.mdls, find what holds them in one batched search
    (another for the pool blocks followed one level up) and blame the drivers the holders name.
    Raises SearchUnavailable when the source cannot search."""
    report = context.report
    known = {record.address: record for record in report.mdls}
    addresses = []
    for address, role in wanted:
        if address in known or address in addresses:
            continue
        addresses.append(address)
        try:
            mdl = read_mdl(context.target, context.layouts, address)
        except MemoryReadError:
            report.warn(f"the MDL {context.address(address)} ({role}) is not in memory; what holds it is still "
                        f"searched for")
            continue
        known[address] = record = mdl_record(mdl, role)
        report.mdls.append(record)
    places = Places(context, report.process)
    holders = Holders()
    try:
        find_holders(context, addresses, holders, places, classify=addresses)
        follow_blocks(context, holders, places)
    finally:
        listed = {record.address for record in report.irps}
        for address in addresses:
            irps = holders.held_by.get(address, [])
            record = known.get(address)
            if record is not None:
                record.irps = list(irps)
                record.chained_from = holders.chain_parent.get(address)
                record.holders = holder_records(holders, address)
            for irp_address in irps:
                if irp_address not in listed:
                    listed.add(irp_address)
                    irp_report = irp_record(context, holders.irps[irp_address])
                    irp_report.holds = sorted(m for m, held in holders.held_by.items() if irp_address in held)
                    report.irps.append(irp_report)
                blame_irp(context, holders.irps[irp_address], f"MDL {context.address(address)} ({why})", confidence,
                          [address])
        blame_private(context, holders, addresses,
                      lambda mdls: f"MDL{'s' if len(mdls) > 1 else ''} {list_mdls(context, mdls)} ({why})", confidence)
    return holders
