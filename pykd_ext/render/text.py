"""Text and DML rendering of a Report.

The same renderer writes plain text (terminal, files) and DML (WinDbg): every address or name that
WinDbg can act on is a ``Link``, printed as plain text or as ``<link cmd="...">`` markup. Tables are
laid out by tabulate on the plain text, so DML links never disturb the column widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Optional, Sequence, Union

from tabulate import tabulate

from ..report import FrameRecord, IrpRecord, MdlRecord, Report, TrackerRecord
from ..targets.base import windbg_address


@dataclass(frozen=True)
class Link:
    text: str
    command: str


Cell = Union[str, int, Link, None]


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on (control and format characters, line
    breaks, lone surrogates) written as an escape such as ``\\x1b``: names read from a crashed machine's
    memory or a hostile snapshot must not move the cursor, recolour the terminal or break a table."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def escape_dml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class Renderer:
    def __init__(self, report: Report, dml: bool = False, verbose: bool = False):
        self.report = report
        self.dml = dml
        self.verbose = verbose
        self.lines: List[str] = []

    # ---- primitives -------------------------------------------------------------------------

    def address(self, value: Optional[int]) -> str:
        if value is None:
            return "-"
        return windbg_address(value, self.report.pointer_size)

    def inline(self, cell: Cell) -> str:
        """A cell or inline fragment as final output text (escaped and linked in DML mode)."""
        if isinstance(cell, Link):
            if self.dml:
                return f'<link cmd="{escape_dml(printable(cell.command))}">{escape_dml(printable(cell.text))}</link>'
            return printable(cell.text)
        text = "" if cell is None else printable(str(cell))
        return escape_dml(text) if self.dml else text

    def line(self, *parts: Cell) -> None:
        self.lines.append("".join(self.inline(p) for p in parts))

    def heading(self, title: str) -> None:
        self.lines.append("")
        self.line(title)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Cell]], indent: str = "  ") -> None:
        plain_rows = [[printable(c.text) if isinstance(c, Link) else ("-" if c is None else printable(str(c)))
                       for c in row] for row in rows]
        text = tabulate(plain_rows, headers=list(headers), tablefmt="simple", disable_numparse=True)
        lines = text.splitlines()
        header_lines = 2
        for index, plain in enumerate(lines):
            row_index = index - header_lines
            if row_index < 0 or not self.dml:
                self.lines.append(indent + (escape_dml(plain) if self.dml else plain))
                continue
            self.lines.append(indent + self._link_line(plain, rows[row_index]))

    def _link_line(self, plain: str, row: Sequence[Cell]) -> str:
        """Escape one table line and turn its Link cells (in column order) into DML links."""
        out, position = [], 0
        for cell in row:
            if not isinstance(cell, Link):
                continue
            shown = printable(cell.text)
            found = plain.find(shown, position)
            if found < 0:
                continue
            out.append(escape_dml(plain[position:found]))
            out.append(self.inline(cell))
            position = found + len(shown)
        out.append(escape_dml(plain[position:]))
        return "".join(out)

    # ---- links to debugger commands -----------------------------------------------------------

    def mdl_link(self, address: int) -> Link:
        return Link(self.address(address), f"dt nt!_MDL {address:#x}")

    def irp_link(self, address: int) -> Link:
        return Link(self.address(address), f"!irp {address:#x} 1")

    def pool_link(self, address: int) -> Link:
        return Link("pool", f"!pool {address:#x} 2")

    def thread_link(self, address: Optional[int]) -> Cell:
        return None if not address else Link(self.address(address), f"!thread {address:#x}")

    def process_link(self, address: int) -> Link:
        return Link(self.address(address), f"!process {address:#x} 1")

    def device_link(self, address: Optional[int]) -> Cell:
        return None if not address else Link(self.address(address), f"!devobj {address:#x}")

    def driver_link(self, name: Optional[str], address: Optional[int]) -> Cell:
        if not name:
            return None
        return Link(name, f"!drvobj {address:#x} 2") if address else name

    def image_link(self, image: Optional[str]) -> Cell:
        if not image:
            return None
        return Link(image, f"lmvm {image.rsplit('.', 1)[0]}")

    def frame_link(self, frame: FrameRecord) -> Link:
        return Link(frame.symbol, f"ln {frame.address:#x}")

    def code_link(self, address: int, symbol: Optional[str]) -> Link:
        return Link(symbol or self.address(address), f"ln {address:#x}")

    def pool_block_link(self, address: int) -> Link:
        return Link(self.address(address), f"!pool {address:#x} 2")

    # ---- the report ---------------------------------------------------------------------------

    def render(self) -> str:
        report = self.report
        title = f"leakhunt {report.tool_version}: {report.analysis or 'analysis'}"
        if report.partial:
            title += " (PARTIAL: interrupted)"
        self.line(title)
        build = f", build {report.build}" if report.build else ""
        self.line(f"Source: {report.source} ({report.arch}{build})")
        self._bugcheck()
        self._parameter_places()
        self._verdict()
        if report.process is not None:
            self.heading("PROCESS")
            self.line("  ", self.process_link(report.process), f"  {report.process_name or '(name unknown)'}")
        self._thread_and_lock()
        self._crash_context()
        self._stack_scan()
        self._trackers()
        self._mdls()
        self._irps()
        if report.locked_pages_expected is not None:
            self.heading("LOCKED PAGES")
            accounted = report.locked_pages_accounted
            counted_by = "P4" if report.bugcheck.code == 0xCB else "P3"  # 0xCB: P3 is the MDL, P4 its pages
            self.line(f"  expected ({counted_by}): {report.locked_pages_expected}   accounted for by locked MDLs found: "
                      f"{'-' if accounted is None else accounted}")
        if report.facts:
            self.heading("FACTS")
            for fact in report.facts:
                self.line(f"  {fact.label}: {fact.value}" + (f"  ({fact.note})" if fact.note else ""))
        self._modules()
        if report.warnings:
            self.heading("WARNINGS")
            for warning in report.warnings:
                self.line(f"  - {warning}")
        if report.next_steps:
            self.heading("NEXT STEPS")
            for number, step in enumerate(report.next_steps, 1):
                self.line(f"  {number}. {step}")
        self._rejected()
        return "\n".join(self.lines) + "\n"

    def _bugcheck(self) -> None:
        bugcheck = self.report.bugcheck
        self.heading(f"BUG CHECK {bugcheck.code:#x} {bugcheck.name}")
        if bugcheck.summary:
            self.line(f"  {bugcheck.summary}")
        if bugcheck.variant:
            self.line(f"  Form: {bugcheck.variant}")
        self.table(["", "value", "meaning"],
                   [[f"P{p.index}", self.address(p.value), p.meaning] for p in bugcheck.parameters])

    def _verdict(self) -> None:
        report = self.report
        self.heading("VERDICT")
        self.line(f"  {report.verdict}")
        for rank, suspect in enumerate(report.suspects, 1):
            names = [cell for cell in (self.driver_link(suspect.driver, suspect.driver_object),
                                       self.image_link(suspect.image)) if cell]
            parts = [part for cell in names for part in (cell, "  ")]
            self.line(f"  {rank}. ", *parts, f"[{suspect.confidence} confidence]")
            for evidence in suspect.evidence:
                self.line(f"       - {evidence}")

    def _mdls(self) -> None:
        mdls = self.report.mdls
        if not mdls:
            return
        self.heading("MDLs")
        rows = []
        for mdl in mdls:
            rows.append([self.mdl_link(mdl.address), mdl.classification, mdl.pages, f"{mdl.byte_count:#x}",
                         self.address(mdl.start_va), f"{mdl.flags:04x} {' '.join(mdl.flag_names)}".strip(),
                         self._held_by(mdl), self.pool_link(mdl.address)])
        self.table(["MDL", "state", "pages", "bytes", "StartVa", "flags", "held by", ""], rows)
        for mdl in mdls:
            if mdl.role or (mdl.problems and mdl.classification != "not an MDL"):
                self.line("  ", self.mdl_link(mdl.address), f": {mdl.role}" if mdl.role else "")
                for problem in mdl.problems:
                    self.line(f"    - {problem}")

    def _held_by(self, mdl: MdlRecord) -> Cell:
        if not mdl.irps:
            return "no IRP found"
        if len(mdl.irps) == 1:
            return Link(f"IRP {self.address(mdl.irps[0])}", f"!irp {mdl.irps[0]:#x} 1")
        return f"{len(mdl.irps)} IRPs"

    def _irps(self) -> None:
        for irp in self.report.irps:
            self._irp(irp)

    def _irp(self, irp: IrpRecord) -> None:
        self.heading("IRP ")
        self.lines[-1] = self.lines[-1] + self.inline(self.irp_link(irp.address)) + self.inline(
            f"  MdlAddress {self.address(irp.mdl_address)}, {irp.stack_count} stack location(s), "
            f"current {irp.current_location}")
        self.line("  thread ", self.thread_link(irp.thread) or "-", "  file object ",
                  self.address(irp.file_object) if irp.file_object else "-",
                  f"  {irp.file_name}" if irp.file_name else "")
        rows = []
        for location in reversed(irp.stack):
            marker = ">" if location.current else ""
            rows.append([marker, location.number, f"{location.major_name}({location.major:x})",
                         f"{location.minor:x}", f"{location.control:02x}",
                         self.device_link(location.device) if not location.unused else "(unused)",
                         self.driver_link(location.driver, location.driver_object),
                         self.image_link(location.image),
                         location.completion_symbol or "-", " ".join(location.conditions)])
        self.table(["", "#", "major", "minor", "cl", "device", "driver", "image", "completion", "invoke on"], rows)

    # ---- lock trackers (0xCB, 0xD9, 0x76 with tracking) ---------------------------------------

    def _trackers(self) -> None:
        report = self.report
        if report.trackers:
            self.heading("LOCK TRACKERS")
            self._tracker_table(report.trackers)
        tracked = report.tracked_pages
        if tracked is None:
            return
        self.heading("TRACKED LOCKED PAGES (what !lockedpages lists)")
        pages = sum(t.pages for t in tracked.trackers)
        self.line("  header ", self.pool_block_link(tracked.header), f" ({tracked.source})",
                  *(["  process ", self.process_link(tracked.process)] if tracked.process else []),
                  f": {len(tracked.trackers)} MDL(s), {pages} page(s); _LOCK_HEADER.Count {tracked.count}"
                  + ("; the walk stopped at its cap" if tracked.truncated else ""))
        if tracked.groups:
            self.table(["locked by", "MDLs", "pages"],
                       [[self.image_link(g.image) or g.module or "(nt/hal only, or no loaded image)", len(g.mdls),
                         g.pages] for g in tracked.groups])
        if tracked.trackers:
            self._tracker_table(tracked.trackers)
        for problem in tracked.problems:
            self.line(f"  - {problem}")

    def _tracker_table(self, trackers: Sequence[TrackerRecord]) -> None:
        rows = [[self.pool_block_link(t.address), self.mdl_link(t.mdl), t.pages, f"{t.first_pfn:x}", t.who,
                 self.image_link(t.locker_image) or "-", t.pool_tag or "-", t.role] for t in trackers]
        self.table(["tracker", "MDL", "pages", "first PFN", "Who", "locked by", "tag", "role"], rows)
        for tracker in trackers:
            if tracker.stack:
                parts: List[Cell] = ["  ", self.pool_block_link(tracker.address), " stack: "]
                for index, frame in enumerate(tracker.stack):
                    parts += ([" < "] if index else []) + [self.frame_link(frame)]
                self.line(*parts)
            for problem in tracker.problems:
                self.line(f"    - {problem}")

    # ---- thread, lock and lock entries (0x153, 0x162, 0x192) ---------------------------------

    def _thread_and_lock(self) -> None:
        report = self.report
        thread = report.thread
        if thread is not None:
            self.heading("THREAD")
            ids = f"  Cid {thread.process_id:x}.{thread.thread_id:x}"                 if thread.process_id is not None and thread.thread_id is not None else ""
            self.line("  ", self.thread_link(thread.address),
                      *(["  process ", self.process_link(thread.process), f" {thread.process_name or ''}"]
                        if thread.process else ["  process unknown"]), ids)
            if thread.start_address:
                self.line("  start address ", self.code_link(thread.start_address, thread.start_symbol))
            if thread.win32_start_address and thread.win32_start_address != thread.start_address:
                self.line("  Win32 start address ",
                          self.code_link(thread.win32_start_address, thread.win32_start_symbol))
            for problem in thread.problems:
                self.line(f"  - {problem}")
        lock = report.lock
        if lock is not None:
            self.heading("LOCK")
            link = self.pool_block_link(lock.address) if lock.location != "image" else                 self.code_link(lock.address, self.address(lock.address))
            if lock.image:
                self.line("  ", link, "  a global of ", self.image_link(lock.image),
                          f", section {lock.section}" if lock.section else "")
            elif lock.pool_block is not None:
                self.line("  ", link, "  in pool block ", self.pool_block_link(lock.pool_block),
                          f" (tag {lock.pool_tag})")
            else:
                self.line("  ", link, f"  in {lock.location}")
            for problem in lock.problems:
                self.line(f"  - {problem}")
        if report.lock_entries:
            self.heading("LOCK ENTRIES")
            rows = []
            for entry in report.lock_entries:
                state = [name for name, on in (("acquired", entry.acquired), ("waiting", entry.waiting),
                                               ("in tree", entry.in_tree), ("busy", entry.busy),
                                               ("cross-thread", entry.cross_thread_releasable)) if on]
                boosts = [name for name, on in ((f"CPU {entry.cpu_boosts:#x}", entry.cpu_boosts),
                                                ("I/O", entry.io_boost), ("I/O QoS", entry.io_qos_boost)) if on]
                rows.append([Link(self.address(entry.address), f"dt nt!_KLOCK_ENTRY {entry.address:#x}"),
                             entry.role, self.code_link(entry.lock, self.address(entry.lock)) if entry.lock else "-",
                             " ".join(state) or "-", " ".join(boosts) or "-"])
            self.table(["entry", "role", "lock", "state", "boosts"], rows)

    # ---- what the source says about the crash (module places, registers, stack, modules) ------

    # Stack candidates shown without -v.
    STACK_LINES = 12

    def _parameter_places(self) -> None:
        for parameter in self.report.bugcheck.parameters:
            if parameter.symbol:
                where = f"{parameter.module}, unloaded before the crash" if parameter.unloaded else parameter.module
                self.line(f"  P{parameter.index} is ", self.code_link(parameter.value, parameter.symbol), f" ({where})")

    def _crash_context(self) -> None:
        report = self.report
        if report.registers:
            parts: List[Cell] = ["  registers:"]
            for register in report.registers:
                parts += [f" {register.name} ", self.code_link(register.value, register.symbol)
                          if register.symbol else self.address(register.value)]
            self.line(*parts)

    def _stack_scan(self) -> None:
        scan = self.report.stack
        if scan is None:
            return
        self.heading(f"STACK CANDIDATES (a scan of the crashing thread's stack for values inside loaded images, "
                     f"innermost first; not an unwound stack)")
        shown = scan.candidates if self.verbose else scan.candidates[:self.STACK_LINES]
        self.table(["slot", "value"], [[self.address(c.slot), self.code_link(c.value, c.symbol)] for c in shown])
        hidden = len(scan.candidates) - len(shown)
        if hidden or scan.truncated:
            self.line(f"  ... {hidden} more" + (" (-v shows them)" if hidden else "")
                      + ("; the scan stopped at its cap" if scan.truncated else ""))
        if not scan.candidates:
            self.line("  no value on the stack copy lies inside a loaded image")

    def _modules(self) -> None:
        report = self.report
        if not report.modules and not report.unloaded_modules:
            return
        self.heading("MODULES")
        if self.verbose:
            self.table(["start", "end", "module", "timestamp"],
                       [[self.address(m.base), self.address(m.base + m.size), self.image_link(m.image),
                         _timestamp(m.timestamp)] for m in report.modules])
        else:
            self.line(f"  {len(report.modules)} loaded (-v lists them, like lm t)")
        if report.unloaded_modules:
            cut = " (a small dump keeps only 12 characters of a name)" if any(
                u.truncated for u in report.unloaded_modules) else ""
            self.line(f"  {len(report.unloaded_modules)} unloaded before the crash{cut}:")
            self.table(["start", "end", "module"],
                       [[self.address(u.start), self.address(u.end), u.image] for u in report.unloaded_modules])

    def _rejected(self) -> None:
        rejected = self.report.rejected
        if not rejected:
            return
        if not self.verbose:
            self.lines.append("")
            self.line(f"{len(rejected)} candidate(s) rejected; -v shows them and why.")
            return
        self.heading("REJECTED CANDIDATES")
        self.table(["address", "candidate", "why"],
                   [[self.address(r.address), r.what, "; ".join(r.reasons)] for r in rejected])
        if self.report.layouts:
            self.heading("LAYOUTS")
            for name, source in self.report.layouts.items():
                self.line(f"  {name}: {source}")
        self.line(f"  search passes over memory: {self.report.searches}")


def _timestamp(value: Optional[int]) -> str:
    """A PE TimeDateStamp as lm t shows it: the date it encodes (a build hash for reproducible images)."""
    if value is None:
        return "-"
    return f"{value:08x} {datetime.fromtimestamp(value, timezone.utc):%Y-%m-%d %H:%M:%S}"


def render_text(report: Report, verbose: bool = False) -> str:
    return Renderer(report, dml=False, verbose=verbose).render()


def render_dml(report: Report, verbose: bool = False) -> str:
    return Renderer(report, dml=True, verbose=verbose).render()
