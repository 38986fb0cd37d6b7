"""What every analysis shares: the context it runs in, the suspect board, the report's records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .. import __version__
from ..bugchecks import decode
from ..evidence import OTHER_EVIDENCE, EvidenceKind, capped
from ..kernel.io import IoReader, Irp, completion_conditions, irp_flag_names, major_function_name
from ..kernel.mdl import Mdl, flag_names
from ..kernel.modules import ModuleMap, plausible_image_name
from ..layouts import CHECKED_ON, LayoutError, IMAGE_FILE_NAME_LENGTH
from ..report import (CONFIDENCE_RANK, LOW, MEDIUM, BugCheckSection, Fact, FrameRecord, IrpRecord, MdlRecord,
                      Parameter, Report, StackRecord, Suspect)
from ..session import as_session
from ..targets.base import (HeaderHit, MemoryReadError, ObjectHeaders, PfnRange, ProgressCallback, SearchHit,
                            SearchUnavailable, Target, TargetError, hex_address)

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


class PfnRangeOutsideSource(Exception):
    """--pfn-range reaches past the last page frame of the source: a usage error, not a data error."""


def check_pfn_range(target: Target, pfn_range: Optional[PfnRange]) -> None:
    """Raise PfnRangeOutsideSource when ``pfn_range`` goes past the source's last page frame."""
    if pfn_range is not None and target.max_pfn is not None and pfn_range.last > target.max_pfn:
        raise PfnRangeOutsideSource(
            f"--pfn-range {pfn_range.first:x}-{pfn_range.last:x} goes past the last page frame of this source: "
            f"its memory is PFNs 0-{target.max_pfn:x}")


def is_interrupt(error: BaseException) -> bool:
    """Ctrl+C offline; inside WinDbg, pykd turns Ctrl+Break into SystemExit("CTRL+BREAK")."""
    if isinstance(error, KeyboardInterrupt):
        return True
    return isinstance(error, SystemExit) and "CTRL+BREAK" in str(error.code)


def mark_interrupted(context: "Context", error: BaseException) -> None:
    """Raise ``error`` again unless it is an interrupt; else mark the report partial."""
    if not is_interrupt(error):
        raise error
    context.report.partial = True
    context.report.warn("the hunt was interrupted: this report holds only what was found before the interrupt")


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
            crash_time=target.crash_time,
        )
        self.decoded = decoded
        modules: List = []
        try:
            modules = session.modules()
        except TargetError as error:
            self.report.warn(f"the loaded module list is unavailable ({error}); drivers are named without images")
        self.modules = ModuleMap(modules, session.describe_address)
        if not modules:
            self.report.warn("no loaded modules are known: driver images cannot be mapped")
        self.io = IoReader(target, self.layouts, self.modules)
        self.suspects = SuspectBoard()
        # Passes over memory begun and finished: where an interrupted hunt stopped.
        self.passes_begun = 0
        self.passes_finished = 0
        # Why the memory search was not possible, once a search was asked for and refused.
        self.search_refused = ""
        # The evidence the analysis could not read (a structure no layout describes), when that is why it
        # names nobody: the verdict then says so instead of clearing the drivers it could not examine.
        self.evidence_unread = ""
        # Lock trackers, the strongest evidence, that exist but no layout describes: whoever weaker evidence
        # names could be contradicted by them, so no suspect keeps more than medium confidence.
        self.strongest_evidence_unread = ""

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
        """An address inside a sentence of the report: ``0x...`` (the text renderer shows WinDbg's form)."""
        return hex_address(value)

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
        return self._pass(lambda: self.target.search_pointers(values, self.options.pfn_range, self.options.progress))

    def search_with_headers(self, values: Iterable[int], headers: ObjectHeaders
                            ) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        """search() that also collects the object headers ``headers`` describes, in the same pass (only where
        the target's ``finds_object_headers``). Raises SearchUnavailable."""
        return self._pass(lambda: self.target.search_pointers_and_headers(
            sorted(set(values)), headers, self.options.pfn_range, self.options.progress))

    def _pass(self, search):
        """Run one pass over memory (``search()``), counting it as begun and finished, and keeping why the
        source refused it."""
        check_pfn_range(self.target, self.options.pfn_range)
        self.report.searches += 1
        self.passes_begun += 1
        try:
            found = search()
        except SearchUnavailable as error:
            self.search_refused = self.search_refused or str(error)
            raise
        self.passes_finished += 1
        return found

    def interrupted_where(self) -> str:
        """How far an interrupted hunt got, in words: before, during or after which pass over memory."""
        if not self.passes_begun:
            return "before its first pass over memory"
        if self.passes_begun > self.passes_finished:
            done = f", after {self.passes_finished} had finished" if self.passes_finished else ""
            return f"during its pass {self.passes_begun} over memory{done}"
        return (f"after its pass {self.passes_finished} over memory had finished, while it read the objects that "
                f"pass found")

    # ---- conclusion --------------------------------------------------------------------------

    def conclude(self, no_suspect_verdict: str, hunted: bool = True) -> Report:
        """Rank the suspects and write the verdict and the report's closing sections. ``hunted``: a hunt
        ran (or should have), so a source that could not give it the memory it needs gets a verdict
        saying the hunt did not run, not the verdict of evidence that names nobody; False for a bug
        check without a hunt (what the source lacks for a hunt is then not said: nothing was hunted)."""
        report = self.report
        session = self.session
        report.suspects = self.suspects.ranked()
        pages = {record.address: record.pages for record in report.mdls}
        for suspect in report.suspects:
            if suspect.mdls and all(mdl in pages for mdl in suspect.mdls):
                suspect.pages = sum(pages[mdl] for mdl in suspect.mdls)
        guessed = self.layouts.guessed()
        if guessed:
            report.warn(guessed_layouts_warning(self.target.build, guessed))
        for warning in borrowed_layouts_warnings(self.target.architecture, self.layouts):
            report.warn(warning)
        blaming = sorted(BLAMING_STRUCTURES.intersection(guessed))
        if blaming:
            cap_confidence(report.suspects, MEDIUM, f"capped at {MEDIUM} confidence: {', '.join(blaming)} "
                                                    f"decoded with another build's layout (see the warnings)")
        if self.strongest_evidence_unread:
            cap_confidence(report.suspects, MEDIUM, f"capped at {MEDIUM} confidence: "
                                                    f"{self.strongest_evidence_unread}, the saved stacks of the code "
                                                    f"that locked the pages, could not be decoded (see the warnings) "
                                                    f"and could name another driver")
        if not report.partial:
            from .summary import summarize  # it builds on this module

            try:
                summarize(self)
            except BaseException as error:  # noqa: B902 - interrupts are turned into a partial report
                mark_interrupted(self, error)
        not_run = self.target.hunt_unavailable or self.search_refused
        if report.partial:
            self._interrupted_verdict()
        elif report.suspects:
            top = report.suspects[0]
            report.verdict = f"Most likely culprit: {top.label} ({top.confidence} confidence)."
        elif hunted and not_run:
            report.verdict = hunt_not_run_verdict(not_run)
        elif self.evidence_unread:
            report.verdict = (f"No driver is named: {self.evidence_unread}, so the evidence was not examined; "
                              f"leakhunt does not guess (the warnings say what is missing).")
        else:
            report.verdict = no_suspect_verdict
        settle_report(self)
        report.layouts = self.layouts.sources()
        report.symbols = {name: (address, session.symbol_sources[name])
                          for name, address in session.resolved_symbols().items()}
        for problem in self.layouts.problems.values():
            report.warn(problem)
        session.note_missing_module_symbols()
        for note in session.notes:  # what finding and reading the symbol files said
            report.warn(note)
        report.names = dict(session.described)
        report.module_symbols = session.module_notes()
        # What the source cannot do travels with it (a replay of a recording says the same).
        for limitation in self.target.limitations():
            report.warn(limitation)
        if self.target.hunt_unavailable and hunted:
            report.complete_hunt = False
            if not any(self.target.hunt_unavailable in warning for warning in report.warnings):
                report.warn(self.target.hunt_unavailable)
        return report

    def _interrupted_verdict(self) -> None:
        """The verdict and next step of an interrupted hunt: how far it got, and that the rest of memory
        was not looked at (so "nobody named" is not a finding, and no reboot procedure applies)."""
        report = self.report
        where = self.interrupted_where()
        found = (f"so far the evidence names {report.suspects[0].label} ({report.suspects[0].confidence} "
                 f"confidence)" if report.suspects else "no driver was named before it stopped")
        report.verdict = (f"The hunt was interrupted {where}: {found}, and what it had not reached was not looked "
                          f"at, so this report is not a finding. Run leakhunt again and let the hunt finish.")
        report.next_steps = [f"Run leakhunt again on the same source and let the hunt finish: it was interrupted "
                             f"{where}, so MDLs, IRPs and drivers beyond that point were not looked for."]


def cap_confidence(suspects: List[Suspect], highest: str, why: str) -> None:
    """Lower every suspect above ``highest`` to it, saying why in its evidence."""
    for suspect in suspects:
        if CONFIDENCE_RANK[suspect.confidence] > CONFIDENCE_RANK[highest]:
            suspect.confidence = highest
            suspect.evidence.append(why)


def hunt_not_run_verdict(reason: str) -> str:
    """The verdict when the source could not give the hunt the memory it needs: that the hunt did not run
    and why (the first clause of ``reason``; the rest, what to do, is among the warnings)."""
    return f"The hunt did not run, so no driver is named or cleared: {reason.split('; ', 1)[0].rstrip('.')}."


# What is lost without the layouts of the structures that only an architecture's own symbols describe.
_UNKNOWN_LAYOUT_EFFECTS = {
    "_EPROCESS": "process names and ids",
    "_KTHREAD": "the process of a thread",
    "_ETHREAD": "thread ids and start addresses",
    "_KLOCK_ENTRY": "lock entries",
    "_KLOCK_ENTRIES": "lock entries",
    "_LOCK_HEADER": "the locked-page trackers",
    "_LOCK_TRACKER": "the locked-page trackers",
}


def borrowed_layouts_warnings(arch, layouts) -> List[str]:
    """For an architecture whose stable structures have another's built-in tables (ARM64: the x64 ones),
    decoded without its symbols: which tables were used and which of them are UNVERIFIED on it, and which
    structures stay unknown, with what that costs the report and why no table is applied to them."""
    if arch.layout_column == arch.name:
        return []
    warnings = []
    borrowed = layouts.borrowed()
    if borrowed:
        unchecked = [name for name in borrowed if name not in CHECKED_ON.get(arch.name, {})]
        text = (f"no symbols describe this {arch.label} kernel, so the built-in {arch.layout_column} tables were "
                f"used for {', '.join(borrowed)} (the same structures on {arch.label}")
        text += f"; UNVERIFIED there: {', '.join(unchecked)})" if unchecked else ")"
        warnings.append(text + "; -v says what each was checked against")
    unknown = layouts.unknown()
    if unknown:
        lost = sorted({_UNKNOWN_LAYOUT_EFFECTS[name] for name in unknown if name in _UNKNOWN_LAYOUT_EFFECTS})
        warnings.append(f"the layouts of {', '.join(unknown)} are unknown for this {arch.label} kernel without its "
                        f"symbols: they move between builds and differ between architectures ({arch.label}'s _KPROCESS "
                        f"and _KTHREAD are laid out unlike x64's), and leakhunt has no built-in {arch.label} tables for "
                        f"them and never applies another architecture's"
                        + (f", so {', '.join(lost)} were not decoded" if lost else "")
                        + "; give the kernel's symbols with --symbol-path or --symbols")
    return warnings


def guessed_layouts_warning(build: Optional[int], guessed) -> str:
    """One warning for the structures decoded with another build's built-in table."""
    parts = [f"{name} from the build {layout.guessed_from} table ({', '.join(sorted(layout.offsets))})"
             for name, layout in guessed.items()]
    return (f"leakhunt has no built-in layouts for build {build or 'unknown'} and found no symbols for it: "
            f"{'; '.join(parts)}. These fields may be at other offsets on this build, so what is read through "
            f"them may be wrong: give the kernel's symbols with --symbol-path (or set _NT_SYMBOL_PATH)")


@dataclass
class _Claim:
    """One piece of evidence against one suspect, and the MDLs it is about."""

    text: str
    confidence: str
    weight: int
    mdls: Tuple[int, ...]
    kind: EvidenceKind


@dataclass
class _Entry:
    """One suspect on the board: who it is and every claim against it, as added."""

    driver: Optional[str]
    image: Optional[str]
    driver_object: Optional[int]
    image_base: Optional[int]
    claims: List[_Claim] = field(default_factory=list)
    claim_texts: Set[str] = field(default_factory=set)  # the texts of ``claims``: each is claimed once

    @property
    def label(self) -> str:
        return Suspect(self.driver, self.image, LOW).label


class SuspectBoard:
    """Collects evidence against drivers and ranks them; one entry per driver image (or name).

    When the evidence about one MDL names different drivers, the strongest kind wins (the strengths of
    ``pykd_ext.evidence``): a driver named only by weaker evidence about that MDL drops to low
    confidence, two drivers named by kinds of the same strength drop to medium, and every piece of
    evidence involved says that the evidence disagrees. So no two drivers share the top confidence for
    one MDL.
    """

    def __init__(self):
        self._entries: Dict[str, _Entry] = {}

    def add(self, driver: Optional[str], image: Optional[str], confidence: Optional[str], weight: Optional[int],
            evidence: str, driver_object: Optional[int] = None, image_base: Optional[int] = None,
            mdls: Iterable[int] = (), kind: EvidenceKind = OTHER_EVIDENCE) -> None:
        """One piece of ``evidence`` of ``kind`` against a driver; ``confidence`` and ``weight`` default to
        the kind's (``mdls``: the MDLs it is about, for settling disagreements)."""
        key = self._key(driver, image)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(driver, image, driver_object, image_base)
        entry.driver = entry.driver or driver
        entry.image = entry.image or image
        entry.driver_object = entry.driver_object or driver_object
        entry.image_base = entry.image_base or image_base
        if evidence not in entry.claim_texts:
            entry.claim_texts.add(evidence)
            entry.claims.append(_Claim(evidence, confidence or kind.confidence, kind.weight if weight is None else weight,
                                       tuple(sorted(set(mdls))), kind))

    def _key(self, driver: Optional[str], image: Optional[str]) -> str:
        if image:
            stem = image.lower().rsplit(".", 1)[0]
            for key, entry in self._entries.items():
                if entry.image and entry.image.lower() == image.lower():
                    return key
                if not entry.image and entry.driver and entry.driver.lower().rsplit("\\", 1)[-1] == stem:
                    return key
            return "image:" + image.lower()
        name = (driver or "").lower()
        for key, entry in self._entries.items():
            if entry.driver and entry.driver.lower() == name:
                return key
        return "driver:" + name

    def ranked(self) -> List[Suspect]:
        """The suspects, most likely first, with the disagreements between them settled."""
        # MDL -> suspect key -> the strongest kind of evidence naming that suspect for it
        claimants: Dict[int, Dict[str, EvidenceKind]] = {}
        for key, entry in self._entries.items():
            for claim in entry.claims:
                for mdl in claim.mdls:
                    strongest = claimants.setdefault(mdl, {})
                    if key not in strongest or claim.kind.strength > strongest[key].strength:
                        strongest[key] = claim.kind
        suspects = [self._settled(key, entry, claimants) for key, entry in self._entries.items()]
        return sorted(suspects, key=lambda s: (-CONFIDENCE_RANK[s.confidence], -s.score,
                                               (s.driver or s.image or "").lower()))

    def _settled(self, key: str, entry: _Entry, claimants: Dict[int, Dict[str, EvidenceKind]]) -> Suspect:
        suspect = Suspect(entry.driver, entry.image, LOW, driver_object=entry.driver_object,
                          image_base=entry.image_base)
        suspect.mdls = sorted({mdl for claim in entry.claims for mdl in claim.mdls})
        best = 0
        for claim in entry.claims:
            confidence, weight, notes = claim.confidence, claim.weight, []
            outranked_everywhere = bool(claim.mdls)
            for mdl in claim.mdls:
                others = {other: kind for other, kind in claimants[mdl].items() if other != key}
                if not others:
                    outranked_everywhere = False
                    continue
                top = max(kind.strength for kind in others.values())
                rivals = ", ".join(sorted(self._entries[o].label for o, kind in others.items() if kind.strength == top))
                labels = " or ".join(sorted({kind.label for kind in others.values() if kind.strength == top}))
                if top > claim.kind.strength:
                    notes.append(f"the evidence disagrees on MDL {hex_address(mdl)}: {labels} names {rivals}, which "
                                 f"is stronger evidence")
                    continue
                outranked_everywhere = False
                if top == claim.kind.strength:
                    notes.append(f"the evidence disagrees on MDL {hex_address(mdl)}: {labels} also names {rivals}")
                    confidence = capped(confidence, MEDIUM)
                else:
                    notes.append(f"the evidence disagrees on MDL {hex_address(mdl)}: {labels} names {rivals}, which "
                                 f"is weaker evidence")
            if outranked_everywhere:
                confidence, weight = LOW, min(weight, 1)
            suspect.evidence.append(claim.text + "".join(f" ({note})" for note in notes))
            suspect.score += weight
            best = max(best, CONFIDENCE_RANK[confidence])
        suspect.confidence = {rank: name for name, rank in CONFIDENCE_RANK.items()}[best or CONFIDENCE_RANK[LOW]]
        return suspect


# ---- what every report states ----------------------------------------------------------------

def settle_report(context: Context) -> None:
    """What every report states whatever ran: the --pfn-range in effect (a hunt it limited says so
    instead of sending the user to TrackLockedPages) and the culprit's IRPs listed before the others."""
    report = context.report
    pfn_range = context.options.pfn_range
    if pfn_range is not None:
        report.pfn_range = (pfn_range.first, pfn_range.last)
        report.source_max_pfn = context.target.max_pfn
        if not report.suspects and report.searches:
            report.verdict += (f" The search covered only page frames {pfn_range.first:x}-{pfn_range.last:x} "
                               f"(--pfn-range): memory outside them was not searched.")
    order_irps(report)


def ki_bugcheck_driver_was_read(report: Report) -> bool:
    return any(f.label == "nt!KiBugCheckDriver" and f.value != "unknown" for f in report.facts)


# Documented next steps (bugchecks.py) that a hunt may already have done, by how they start, and when
# the report has done them: the step is then left out rather than telling the user to redo it.
DONE_BY_THE_REPORT = (
    ("Run dx KiBugCheckDriver", ki_bugcheck_driver_was_read),
    ("Run !search for the MDL address (P3)", lambda report: report.searches > 0),
    ("Run !irp on that IRP", lambda report: bool(report.irps) or report.searches > 0),
    ("Run !lockedpages", lambda report: report.tracked_pages is not None),
    ("Run .exr on P3 and .cxr on P4", lambda report: report.exception is not None and report.call_stack is not None),
    ("Run .cxr with P3", lambda report: bool(report.context_record) and report.call_stack is not None),
)


def steps_left_to_do(report: Report, steps: Iterable[str]) -> List[str]:
    """``steps`` without those the report has already done (DONE_BY_THE_REPORT)."""
    return [step for step in steps
            if not any(step.startswith(start) and done(report) for start, done in DONE_BY_THE_REPORT)]


def order_irps(report: Report) -> None:
    """The IRPs of the most likely suspect first, then the other suspects', then the rest (in order)."""
    rank = {}
    for position, suspect in enumerate(report.suspects):
        for name in (suspect.driver, suspect.image):
            if name:
                rank.setdefault(name.lower(), position)

    def position_of(irp: IrpRecord) -> int:
        current = [s for s in irp.stack if s.current]
        names = [n.lower() for s in current for n in (s.driver, s.image) if n]
        return min((rank[n] for n in names if n in rank), default=len(report.suspects))

    report.irps.sort(key=position_of)


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
    record = IrpRecord(address=irp.address, mdl_address=irp.mdl_address, stack_count=irp.stack_count,
                       current_location=irp.current_location, flags=irp.flags, thread=irp.thread or None,
                       file_object=irp.original_file_object or None,
                       file_name=file_object.name if file_object and not file_object.problems else None,
                       stack=stack, flag_names=irp_flag_names(irp.flags), cancel=bool(irp.cancel),
                       cancel_routine=irp.cancel_routine or None,
                       cancel_symbol=context.modules.symbolize(irp.cancel_routine) if irp.cancel_routine else None,
                       current_stack_address=irp.current.address if irp.current else None)
    if irp.thread_cid is not None:
        record.thread_process_id, record.thread_id = irp.thread_cid
    return record


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
        if layout.has("UniqueProcessId"):
            context.report.process_id = context.target.read_pointer(process + layout.offset("UniqueProcessId"))
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
