"""What every analysis shares: the context it runs in, the suspect board, and the MDL -> IRP hunt."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .. import __version__
from ..bugchecks import decode
from ..kernel.io import IoReader, Irp, major_function_name, completion_conditions
from ..kernel.mdl import Mdl, flag_names, read_mdl
from ..kernel.modules import ModuleMap, plausible_image_name
from ..layouts import LayoutError, IMAGE_FILE_NAME_LENGTH
from ..report import (CONFIDENCE_RANK, MEDIUM, BugCheckSection, Fact, FrameRecord, IrpRecord, MdlRecord, Parameter,
                      Rejected, Report, StackRecord, Suspect)
from ..session import as_session
from ..targets.base import MemoryReadError, PfnRange, ProgressCallback, SearchHit, TargetError, windbg_address

# MDL chains (MDL.Next) longer than this are corrupt or cyclic.
MAX_MDL_CHAIN = 64
# Structures whose fields evidence against a driver is read from (trackers' saved stacks, a thread's
# lock entries and start address), beyond the stable I/O structures: decoded with another build's
# table (no table and no symbols for the dump's build), they cap every suspect's confidence.
BLAMING_STRUCTURES = frozenset({"_LOCK_TRACKER", "_LOCK_HEADER", "_KTHREAD", "_ETHREAD", "_KLOCK_ENTRY",
                                "_KLOCK_ENTRIES"})


@dataclass
class Options:
    verbose: bool = False
    pfn_range: Optional[PfnRange] = None
    progress: Optional[ProgressCallback] = None


class HuntInterrupted(Exception):
    """Raised inside an analysis when the user interrupted it (Ctrl+C, or Ctrl+Break in WinDbg)."""


class Context:
    """One analysis run: the kernel session (target, symbols, layouts, modules), the report being filled."""

    def __init__(self, source, options: Options):
        """``source`` is a KernelSession, or a bare Target (a session without symbol files is made)."""
        self.session = session = as_session(source)
        target = self.target = session.target
        self.options = options
        self.layouts = session.layouts
        self.bugcheck = target.bugcheck()
        decoded = decode(self.bugcheck.code, self.bugcheck.parameters)
        self.report = Report(
            tool_version=__version__,
            source=target.description,
            arch=target.arch,
            pointer_size=target.pointer_size,
            build=target.build,
            bugcheck=self.bugcheck_section(self.bugcheck.code, decoded),
        )
        self.decoded = decoded
        modules: List = []
        try:
            modules = session.modules()
        except TargetError as error:
            self.report.warn(f"the loaded module list is unavailable ({error}); drivers are named without images")
        self.modules = ModuleMap(modules)
        if not modules:
            self.report.warn("no loaded modules are known: driver images cannot be mapped")
        self.io = IoReader(target, self.layouts, self.modules)
        self.suspects = SuspectBoard()

    @staticmethod
    def bugcheck_section(code: int, decoded) -> BugCheckSection:
        """The report's bug check: the code as the target reported it (0x1000007e stays so), decoded."""
        return BugCheckSection(
            code=code,
            name=decoded.name,
            summary=decoded.summary,
            variant=decoded.variant.title if decoded.variant else "",
            parameters=[Parameter(p.index, p.value, p.meaning) for p in decoded.parameters],
            known=decoded.known,
        )

    def redecode(self, variant_key: str) -> None:
        """Re-decode the parameters with an explicitly chosen variant (e.g. the 0xCB format)."""
        self.decoded = decode(self.bugcheck.code, self.bugcheck.parameters, variant_key)
        self.report.bugcheck = self.bugcheck_section(self.bugcheck.code, self.decoded)

    def address(self, value: int) -> str:
        return windbg_address(value, self.target.pointer_size)

    # ---- symbols -----------------------------------------------------------------------------

    def symbol(self, name: str) -> Optional[int]:
        """Address of ``name`` from the session's symbol sources; None if unknown."""
        return self.session.symbol(name)

    # ---- search ------------------------------------------------------------------------------

    def search(self, values: Iterable[int]) -> Dict[int, List[SearchHit]]:
        """One batched pass over memory for all ``values``. Raises SearchUnavailable."""
        values = sorted(set(values))
        if not values:
            return {}
        self.report.searches += 1
        return self.target.search_pointers(values, self.options.pfn_range, self.options.progress)

    # ---- conclusion --------------------------------------------------------------------------

    def conclude(self, no_suspect_verdict: str) -> Report:
        report = self.report
        session = self.session
        report.suspects = self.suspects.ranked()
        guessed = self.layouts.guessed()
        if guessed:
            report.warn(guessed_layouts_warning(self.target.build, guessed))
        blaming = sorted(BLAMING_STRUCTURES.intersection(guessed))
        if blaming:
            cap_confidence(report.suspects, MEDIUM, f"capped at {MEDIUM} confidence: {', '.join(blaming)} "
                                                    f"decoded with another build's layout (see the warnings)")
        if report.suspects:
            top = report.suspects[0]
            report.verdict = f"Most likely culprit: {top.label} ({top.confidence} confidence)."
        else:
            report.verdict = no_suspect_verdict
        report.layouts = self.layouts.sources()
        report.symbols = {name: (address, session.symbol_sources[name])
                          for name, address in session.resolved_symbols().items()}
        for problem in self.layouts.problems.values():
            report.warn(problem)
        for note in session.notes:  # what finding and reading the kernel's symbol files said
            report.warn(note)
        # What the source cannot do travels with it (a replay of a recording says the same).
        for limitation in self.target.limitations():
            report.warn(limitation)
        if self.target.hunt_unavailable:
            report.complete_hunt = False
            if not any(self.target.hunt_unavailable in warning for warning in report.warnings):
                report.warn(self.target.hunt_unavailable)
        return report


def cap_confidence(suspects: List[Suspect], highest: str, why: str) -> None:
    """Lower every suspect above ``highest`` to it, saying why in its evidence."""
    for suspect in suspects:
        if CONFIDENCE_RANK[suspect.confidence] > CONFIDENCE_RANK[highest]:
            suspect.confidence = highest
            suspect.evidence.append(why)


def guessed_layouts_warning(build: Optional[int], guessed) -> str:
    """One warning for the structures decoded with another build's built-in table."""
    parts = [f"{name} from the build {layout.guessed_from} table ({', '.join(sorted(layout.offsets))})"
             for name, layout in guessed.items()]
    return (f"leakhunt has no built-in layouts for build {build or 'unknown'} and found no symbols for it: "
            f"{'; '.join(parts)}. These fields may be at other offsets on this build, so what is read through "
            f"them may be wrong: give the kernel's symbols with --symbol-path (or set _NT_SYMBOL_PATH)")


class SuspectBoard:
    """Collects evidence against drivers and ranks them; one entry per driver image (or name)."""

    def __init__(self):
        self._suspects: Dict[str, Suspect] = {}
        self._evidence: Dict[str, Set[str]] = {}  # suspect key -> its evidence, for the duplicate check

    def add(self, driver: Optional[str], image: Optional[str], confidence: str, weight: int, evidence: str,
            driver_object: Optional[int] = None, image_base: Optional[int] = None) -> None:
        key = self._key(driver, image)
        suspect = self._suspects.get(key)
        if suspect is None:
            suspect = self._suspects[key] = Suspect(driver, image, confidence)
        suspect.driver = suspect.driver or driver
        suspect.image = suspect.image or image
        suspect.driver_object = suspect.driver_object or driver_object
        suspect.image_base = suspect.image_base or image_base
        if CONFIDENCE_RANK[confidence] > CONFIDENCE_RANK[suspect.confidence]:
            suspect.confidence = confidence
        known = self._evidence.setdefault(key, set())
        if evidence not in known:
            known.add(evidence)
            suspect.evidence.append(evidence)
            suspect.score += weight

    def _key(self, driver: Optional[str], image: Optional[str]) -> str:
        if image:
            stem = image.lower().rsplit(".", 1)[0]
            for key, suspect in self._suspects.items():
                if suspect.image and suspect.image.lower() == image.lower():
                    return key
                if not suspect.image and suspect.driver and suspect.driver.lower().rsplit("\\", 1)[-1] == stem:
                    return key
            return "image:" + image.lower()
        name = (driver or "").lower()
        for key, suspect in self._suspects.items():
            if suspect.driver and suspect.driver.lower() == name:
                return key
        return "driver:" + name

    def ranked(self) -> List[Suspect]:
        return sorted(self._suspects.values(),
                      key=lambda s: (-CONFIDENCE_RANK[s.confidence], -s.score, (s.driver or s.image or "").lower()))


# ---- records for the report -------------------------------------------------------------------

def mdl_record(mdl: Mdl, role: str = "") -> MdlRecord:
    return MdlRecord(address=mdl.address, process=mdl.process, flags=mdl.flags, flag_names=flag_names(mdl.flags),
                     pages=mdl.pages, byte_count=mdl.byte_count, start_va=mdl.start_va, locked=mdl.locked,
                     classification=mdl.classification(), problems=list(mdl.problems), role=role)


def irp_record(context: Context, irp: Irp) -> IrpRecord:
    stack = []
    for location in irp.stack:
        driver = location.driver
        good_driver = driver is not None and not driver.problems
        stack.append(StackRecord(
            number=location.number, current=location.current, unused=location.unused, major=location.major,
            major_name=major_function_name(location.major), minor=location.minor, control=location.control,
            conditions=completion_conditions(location.control),
            device=location.device.address if location.device else None,
            driver_object=driver.address if driver else None,
            driver=driver.name if good_driver else None,
            image=driver.image.image if good_driver and driver.image else None,
            completion_routine=location.completion_routine or None,
            completion_symbol=context.modules.symbolize(location.completion_routine)
            if location.completion_routine else None,
            context=location.context or None,
            file_object=location.file_object or None,
        ))
    file_object = irp.file_object
    return IrpRecord(address=irp.address, mdl_address=irp.mdl_address, stack_count=irp.stack_count,
                     current_location=irp.current_location, flags=irp.flags, thread=irp.thread or None,
                     file_object=irp.original_file_object or None,
                     file_name=file_object.name if file_object and not file_object.problems else None,
                     stack=stack)


# ---- the MDL -> IRP hunt ----------------------------------------------------------------------

@dataclass
class Holders:
    """Who references each hunted MDL: IRPs (directly or through an MDL chain)."""

    irps: Dict[int, Irp] = field(default_factory=dict)  # IRP address -> IRP
    held_by: Dict[int, List[int]] = field(default_factory=dict)  # hunted MDL -> IRP addresses
    chain_parent: Dict[int, int] = field(default_factory=dict)  # MDL -> the MDL whose Next points to it


def find_holders(context: Context, mdl_addresses: Iterable[int], holders: Optional[Holders] = None) -> Holders:
    """Search for every MDL address in one pass per chain level and explain each hit.

    A hit at address ``h`` is an IRP's MdlAddress when ``h - offsetof(IRP, MdlAddress)`` is a valid
    IRP whose MDL chain reaches the MDL, or the Next field of another MDL (a chained MDL), in which
    case that MDL is searched for at the next level. Anything else is reported as unexplained.
    ``holders`` (when given) is filled level by level, so an interrupted hunt keeps what it found.
    """
    holders = Holders() if holders is None else holders
    irp_mdl_offset = context.layouts.get("_IRP").offset("MdlAddress")
    next_offset = context.layouts.get("_MDL").offset("Next")
    wanted = sorted(set(mdl_addresses))
    # MDL -> the IRPs whose MdlAddress is that MDL itself (the chains are credited after each level).
    direct: Dict[int, List[int]] = {}
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
                    irp = _irp_at(context, hit.virtual - irp_mdl_offset, mdl_address)
                    if irp is not None:
                        holders.irps.setdefault(irp.address, irp)
                        if irp.address not in direct.setdefault(mdl_address, []):
                            direct[mdl_address].append(irp.address)
                        continue
                    parent = _chain_parent_at(context, hit.virtual - next_offset, mdl_address)
                    if parent is not None:
                        holders.chain_parent.setdefault(mdl_address, parent)
                        if parent not in searched:
                            next_frontier.add(parent)
                        continue
                    not_irp = context.io.irp_header_problems(hit.virtual - irp_mdl_offset) or ["an invalid IRP"]
                    context.report.rejected.append(Rejected(hit.virtual, f"holder of MDL {mdl_address:#x}",
                                                            [f"not an IRP's MdlAddress ({'; '.join(not_irp)})",
                                                             "not an MDL's Next"]))
            frontier = sorted(next_frontier)
            depth += 1
    finally:
        # Also when interrupted: the holders found so far are credited to the MDLs they hold.
        _credit_chains(holders, wanted, direct)
    return holders


def _credit_chains(holders: Holders, wanted: List[int], direct: Dict[int, List[int]]) -> None:
    """Each hunted MDL is held by the IRPs that hold it or any MDL whose Next chain leads to it, whatever
    order the search met the links in (bounded and cycle-safe: chain_parent is corrupt memory's too)."""
    for hunted in wanted:
        current: Optional[int] = hunted
        seen: Set[int] = set()
        while current is not None and current not in seen and len(seen) < MAX_MDL_CHAIN:
            seen.add(current)
            for irp_address in direct.get(current, []):
                held = holders.held_by.setdefault(hunted, [])
                if irp_address not in held:
                    held.append(irp_address)
            current = holders.chain_parent.get(current)


def _irp_at(context: Context, address: int, mdl_address: int) -> Optional[Irp]:
    problems = context.io.irp_header_problems(address)
    if problems:
        return None
    try:
        irp = context.io.read_irp(address)
    except MemoryReadError:
        return None
    if irp.problems:
        context.report.rejected.append(Rejected(address, "IRP", irp.problems))
        return None
    if not _chain_reaches(context, irp.mdl_address, mdl_address):
        context.report.rejected.append(Rejected(address, "IRP", [f"its MDL chain does not reach {mdl_address:#x}"]))
        return None
    return irp


def _chain_parent_at(context: Context, address: int, mdl_address: int) -> Optional[int]:
    try:
        parent = read_mdl(context.target, context.layouts, address)
    except MemoryReadError:
        return None
    if parent.problems or parent.next != mdl_address:
        return None
    return address


def _chain_reaches(context: Context, first: int, wanted: int) -> bool:
    """Follow MDL.Next from ``first`` (bounded, cycle-safe) looking for ``wanted``."""
    next_offset = context.layouts.get("_MDL").offset("Next")
    seen: Set[int] = set()
    current = first
    while current and current not in seen and len(seen) < MAX_MDL_CHAIN:
        if current == wanted:
            return True
        seen.add(current)
        try:
            current = context.target.read_pointer(current + next_offset)
        except MemoryReadError:
            return False
    return False


def blame_irp(context: Context, irp: Irp, why: str, confidence: str) -> None:
    """Put the driver that owns the IRP's current stack location on the suspect board.

    ``why`` says what the IRP holds. Drivers higher in the stack (which passed the IRP down) are
    added with low confidence.
    """
    if irp.current is None:
        context.report.warn(f"IRP {context.address(irp.address)} is not at any driver's stack location "
                            f"(CurrentLocation {irp.current_location} of {irp.stack_count}); no driver is blamed "
                            f"through it")
    for location in irp.stack:
        if location.unused:
            continue
        driver = location.driver
        if driver is None or driver.problems or not driver.name:
            if location.current:
                reasons = (location.device.problems if location.device else ["no device object"]) + \
                    (driver.problems if driver else [])
                context.report.warn(f"IRP {context.address(irp.address)} current stack location {location.number} "
                                    f"names no valid driver ({'; '.join(reasons) or 'unnamed driver'})")
            continue
        image = driver.image.image if driver.image else None
        step = (f"{why}: held by IRP {context.address(irp.address)}, whose "
                f"{'current' if location.current else 'upper'} stack location {location.number} "
                f"({major_function_name(location.major)}) is at {driver.name}'s device "
                f"{context.address(location.device.address)}")
        context.suspects.add(driver.name, image, confidence if location.current else "low",
                             10 if location.current else 2, step, driver.address,
                             driver.image.base if driver.image else None)


# ---- facts shared by the locked-pages family --------------------------------------------------

def read_ki_bugcheck_driver(context: Context) -> None:
    """Report nt!KiBugCheckDriver, the PUNICODE_STRING the kernel sets to the culprit's image name."""
    address = context.symbol("nt!KiBugCheckDriver")
    label = "nt!KiBugCheckDriver"
    if address is None:
        context.report.facts.append(Fact(label, "unknown", "the symbol is not available: give its address with "
                                                          "--symbol nt!KiBugCheckDriver=0x... to check it"))
        return
    try:
        pointer = context.target.read_pointer(address)
    except MemoryReadError:
        context.report.facts.append(Fact(label, "unreadable", f"the variable at {context.address(address)} is not "
                                                              f"in memory"))
        return
    if pointer == 0:
        context.report.facts.append(Fact(label, "NULL", "the kernel did not record a culprit driver (normal for "
                                                        "this bug check on current Windows)"))
        return
    try:
        name = context.target.read_unicode_string(pointer)
    except (MemoryReadError, TargetError) as error:
        context.report.facts.append(Fact(label, context.address(pointer), f"its UNICODE_STRING is unreadable ({error})"))
        return
    if not name:
        context.report.facts.append(Fact(label, "empty string", "the kernel recorded an empty name"))
        return
    if not plausible_image_name(name):
        context.report.facts.append(Fact(label, f"{name[:40]!r}", "not a plausible image name: the variable or its "
                                                                  "string is corrupt, so nobody is named from it"))
        return
    context.report.facts.append(Fact(label, name, "the driver the kernel itself named when it crashed"))
    module = context.modules.by_image(name)
    context.suspects.add(None, name, "high", 8, f"nt!KiBugCheckDriver names {name}",
                         image_base=module.base if module else None)


def read_process(context: Context, process: int) -> None:
    """Name the EPROCESS (ImageFileName) and compare its NumberOfLockedPages when the layout is known."""
    context.report.process = process
    layout = context.layouts.find("_EPROCESS")
    if layout is None:
        context.report.warn(f"the _EPROCESS layout for build {context.target.build or 'unknown'} is not known and "
                            f"the target has no symbols for it: the process is shown by address only")
        return
    try:
        raw = context.target.read(process + layout.offset("ImageFileName"), IMAGE_FILE_NAME_LENGTH)
        context.report.process_name = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
    except (MemoryReadError, LayoutError) as error:
        context.report.warn(f"the process name is unreadable ({error})")
    if layout.has("NumberOfLockedPages"):
        try:
            count = context.target.read_u64(process + layout.offset("NumberOfLockedPages"))
            context.report.facts.append(Fact("EPROCESS.NumberOfLockedPages", str(count),
                                             "pages the process still had locked when it crashed"))
        except MemoryReadError:
            pass


# ---- helpers shared by the tracker, PFN and lock-entry analyses -------------------------------

def warn_unverified_layouts(context: Context) -> None:
    """Say so in the report when a built-in table of UNVERIFIED build mapping was used."""
    for name, why in context.layouts.unverified().items():
        context.report.warn(f"{name} was decoded with a built-in table whose build mapping is UNVERIFIED ({why}); "
                            f"symbols would override it: open the dump in WinDbg with symbols to confirm")


def frame_records(context: Context, frames: Iterable[int]) -> List[FrameRecord]:
    """Saved return addresses placed in their loaded images (``leakyflt+0x1a30``)."""
    records = []
    for frame in frames:
        module = context.modules.find(frame)
        records.append(FrameRecord(frame, context.modules.symbolize(frame), module.name if module else None))
    return records


def hunt_mdls(context: Context, wanted: List[Tuple[int, str]], why: str, confidence: str) -> Holders:
    """Decode each (MDL address, role) into report.mdls, find what holds them in one batched search and
    blame the drivers of the IRPs that do. Raises SearchUnavailable when the source cannot search."""
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
    holders = find_holders(context, addresses)
    listed = {record.address for record in report.irps}
    for address in addresses:
        irps = holders.held_by.get(address, [])
        record = known.get(address)
        if record is not None:
            record.irps = list(irps)
            record.chained_from = holders.chain_parent.get(address)
        for irp_address in irps:
            if irp_address not in listed:
                listed.add(irp_address)
                irp_report = irp_record(context, holders.irps[irp_address])
                irp_report.holds = sorted(m for m, held in holders.held_by.items() if irp_address in held)
                report.irps.append(irp_report)
            blame_irp(context, holders.irps[irp_address], f"MDL {context.address(address)} ({why})", confidence)
    return holders
