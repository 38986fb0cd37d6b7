"""Text and DML rendering of a Report.

The same renderer writes plain text (terminal, files) and DML (WinDbg): every address or name that
WinDbg can act on is a ``Link``, printed as plain text or as ``<link cmd="...">`` markup.

Layout: every line and table goes through ``line()`` and ``table()``, which wrap at ``width`` columns
(the terminal's, or DEFAULT_WIDTH when the output is not a terminal): a line continues under its own
text (after its indentation and its "- " or "1. " marker); a table wraps its free-text column and
keeps the others aligned. Wrapping is decided on the plain text, so DML links never disturb it and
are never split. Addresses inside the report's sentences are ``0x...`` (as in JSON) and are shown in
WinDbg's form here (``ffffa58a`1c2d3040``), like every other address of the text report.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..collector import collector_paused
from ..console import DEFAULT_WIDTH, printable
from ..report import (CHAIN_HOLDER, DEVICE_HOLDER, IMAGE_HOLDER, IRP_HOLDER, POOL_HOLDER, STACK_HOLDER, FrameRecord,
                      HolderRecord, IrpRecord, MdlRecord, NextStep, Report, TrackerRecord, bugcheck_code_text,
                      step_text)
from ..targets.base import windbg_address

# Without -v, the pieces of evidence shown per suspect, the IRPs shown in full and the MDLs whose holders
# are listed: a report of a thousand leaked MDLs stays readable (-v and JSON show everything).
EVIDENCE_SHOWN = 5
IRPS_SHOWN = 10
HOLDERS_SHOWN = 20
# Below this a terminal's width is not honoured: every line would be a word or two.
MIN_WIDTH = 40
# A wrapped table column never gets narrower than this (the line overflows instead).
MIN_WRAPPED_COLUMN = 14
COLUMN_GAP = "  "
# No Windows image was linked before Windows NT 3.1 (July 1993): an earlier "link time" is a build hash.
FIRST_PE_LINK_TIME = "1993-07-27T00:00:00Z"
# Where a wrapped fact continues when its label is too long to continue under its value.
FACT_HANG = 6
# Where a continuation line starts: under the text after the indentation and a list marker.
_HANGING_MARKER = re.compile(r"^( *)(?:- |\d+\. |[a-z]\. )?")
# An address in a sentence, as the analyses write it: 0x and at least 9 digits on x64 (values below
# 4 GiB are sizes, flags and counts), exactly 8 on x86.
_SENTENCE_ADDRESS = {8: re.compile(r"\b0x([0-9a-f]{9,16})\b"), 4: re.compile(r"\b0x([0-9a-f]{8})\b")}


@dataclass(frozen=True)
class Link:
    text: str
    command: str


Cell = Union[str, int, Link, None]


def escape_dml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def windbg_cid(process_id: int, thread_id: Optional[int] = None) -> str:
    """A client ID as WinDbg prints it: ``03a8`` for a process, ``03a8.061c`` for a thread."""
    return f"{process_id:04x}" + ("" if thread_id is None else f".{thread_id:04x}")


class Renderer:
    def __init__(self, report: Report, dml: bool = False, verbose: bool = False, width: Optional[int] = None):
        self.report = report
        self.dml = dml
        self.verbose = verbose
        self.width = max(width or DEFAULT_WIDTH, MIN_WIDTH)
        self.lines: List[str] = []
        self._sentence_address = _SENTENCE_ADDRESS.get(report.pointer_size, _SENTENCE_ADDRESS[8])

    # ---- primitives -------------------------------------------------------------------------

    def address(self, value: Optional[int]) -> str:
        if value is None:
            return "-"
        return windbg_address(value, self.report.pointer_size)

    def prose(self, text: str) -> str:
        """Report text ready to show: printable, its addresses in WinDbg's form."""
        return self._sentence_address.sub(lambda m: self.address(int(m.group(1), 16)), printable(text))

    def plain(self, cell: Cell) -> str:
        """What a cell or inline fragment shows, without markup."""
        if isinstance(cell, Link):
            return printable(cell.text)
        return "" if cell is None else self.prose(str(cell))

    def inline(self, cell: Cell) -> str:
        """A cell or inline fragment as final output text (escaped and linked in DML mode)."""
        if isinstance(cell, Link):
            if self.dml:
                return f'<link cmd="{escape_dml(printable(cell.command))}">{escape_dml(printable(cell.text))}</link>'
            return printable(cell.text)
        text = self.plain(cell)
        return escape_dml(text) if self.dml else text

    def line(self, *parts: Cell, hang: Optional[int] = None) -> None:
        """One line of output, wrapped at the width (links and words are never split); continuation lines
        start ``hang`` columns in (default: under the text after the indentation and a list marker)."""
        # (plain text, rendered pieces): a word (text from adjacent parts joins into one), or a gap
        # (plain "", the run of spaces)
        words: List[Tuple[str, List[str]]] = []
        for part in parts:
            if isinstance(part, Link):
                pieces = [(self.plain(part), self.inline(part))]
            else:
                pieces = [(piece, escape_dml(piece) if self.dml else piece)
                          for piece in re.split(r"( +)", self.plain(part)) if piece]
            for plain, rendered in pieces:
                if plain.startswith(" "):
                    words.append(("", [plain]))
                elif words and words[-1][0]:
                    words[-1] = (words[-1][0] + plain, words[-1][1] + [rendered])
                else:
                    words.append((plain, [rendered]))
        full = "".join(plain or pieces[0] for plain, pieces in words)
        if len(full) <= self.width:
            self.lines.append("".join("".join(pieces) for _, pieces in words))
            return
        hang = " " * (_HANGING_MARKER.match(full).end() if hang is None else hang)
        out, length, has_word, gap = [], 0, False, ""
        for plain, pieces in words:
            if not plain:  # a run of spaces: kept at the start of the line, else only between words
                if has_word:
                    gap = pieces[0]
                else:
                    out.append(pieces[0])
                    length += len(pieces[0])
                continue
            if has_word and length + len(gap) + len(plain) > self.width:
                self.lines.append("".join(out))
                out, length, gap = [hang], len(hang), ""
            out.append(gap)
            out.extend(pieces)
            length += len(gap) + len(plain)
            has_word, gap = True, ""
        self.lines.append("".join(out))

    def heading(self, title: str) -> None:
        self.lines.append("")
        self.line(title)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Cell]], indent: str = "  ",
              wrap_column: Union[int, Sequence[int]] = -1, right: Sequence[int] = (), beyond_width: int = 0) -> None:
        """An aligned table: a header line, a rule of dashes under each column, one line per row
        (columns in ``right`` right-aligned). When it is wider than the width, the text of
        ``wrap_column`` (the last by default; several: each in turn while the table is too wide) wraps
        onto continuation rows. The last ``beyond_width`` columns are left out of that reckoning (DML's
        link-only columns: the text lays out the same)."""
        plain_rows = [[self.plain(c) if c is not None else "-" for c in row] for row in rows]
        columns = [c % len(headers) for c in ([wrap_column] if isinstance(wrap_column, int) else wrap_column)]
        widths = self._widths(headers, plain_rows)
        rooms: Dict[int, int] = {}
        for column in columns:
            budgeted = widths[:len(widths) - beyond_width]
            if sum(budgeted) + len(COLUMN_GAP) * (len(budgeted) - 1) + len(indent) <= self.width:
                break
            room = self.width - len(indent) - sum(w for i, w in enumerate(budgeted) if i != column) \
                - len(COLUMN_GAP) * (len(budgeted) - 1)
            rooms[column] = max(room, MIN_WRAPPED_COLUMN, len(headers[column]))
            widths[column] = min(widths[column], rooms[column])
        linked_rows: List[Sequence[Cell]] = list(rows)
        if rooms:
            plain_rows, linked_rows = self._wrapped_rows(plain_rows, rows, rooms)
            widths = self._widths(headers, plain_rows)

        def laid_out(cells: Sequence[str]) -> str:
            return indent + COLUMN_GAP.join(cell.rjust(width) if i in right else cell.ljust(width)
                                            for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

        for plain in (laid_out(headers), laid_out(["-" * width for width in widths])):
            self.lines.append(escape_dml(plain) if self.dml else plain)
        for plain, linked in zip(plain_rows, linked_rows):
            line = laid_out(plain)
            self.lines.append(self._link_line(line, linked) if self.dml else line)

    @staticmethod
    def _widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[int]:
        return [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]

    @staticmethod
    def _wrapped_rows(plain_rows, rows, rooms: Dict[int, int]):
        """Rows whose columns in ``rooms`` are wrapped to that many characters, continuing on rows of their
        own (a link is never wrapped)."""
        out_plain, out_linked = [], []
        for plain, linked in zip(plain_rows, rows):
            pieces = {column: [plain[column]] if isinstance(linked[column], Link) else
                      textwrap.wrap(plain[column], room, break_long_words=False, break_on_hyphens=False) or [""]
                      for column, room in rooms.items()}
            out_plain.append([pieces[i][0] if i in pieces else cell for i, cell in enumerate(plain)])
            out_linked.append(linked)
            for line in range(1, max(len(p) for p in pieces.values())):
                out_plain.append([pieces[i][line] if i in pieces and line < len(pieces[i]) else ""
                                  for i in range(len(plain))])
                out_linked.append([])
        return out_plain, out_linked

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
        return Link("!pool", f"!pool {address:#x} 2")

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

    @staticmethod
    def _holder_command(holder: HolderRecord) -> Optional[str]:
        """The debugger command that shows a holder: !pool on a pool block, !devobj on a device, lmvm on an
        image, !thread on a kernel stack; None for the rest (IRPs have their own sections and links)."""
        if holder.kind == POOL_HOLDER and holder.address is not None:
            return f"!pool {holder.address:#x} 2"
        if holder.kind == DEVICE_HOLDER and holder.device:
            return f"!devobj {holder.device:#x}"
        if holder.kind == IMAGE_HOLDER and holder.module:
            return f"lmvm {holder.module}"
        if holder.kind == STACK_HOLDER and holder.thread:
            return f"!thread {holder.thread:#x}"
        return None

    # ---- the report ---------------------------------------------------------------------------

    def render(self) -> str:
        report = self.report
        title = f"leakhunt {report.tool_version}: {report.analysis or 'analysis'}"
        if report.partial:
            title += " (PARTIAL: interrupted)"
        self.line(title)
        self.line(f"Source: {self._source()}")
        if report.crash_time:
            self.line(f"Crash time: {report.crash_time.replace('T', ' ').rstrip('Z')} UTC")
        if report.uptime_seconds is not None:
            self.line(f"System uptime: {_duration(report.uptime_seconds)}")
        if report.build_lab:
            self.line(f"Built by: {printable(report.build_lab)}")
        if report.pfn_range is not None:
            first, last = report.pfn_range
            of_source = f" of the source's 0-{report.source_max_pfn:x}" if report.source_max_pfn is not None else ""
            self.line(f"Search limited to page frames {first:x}-{last:x}{of_source} (--pfn-range)")
        self._bugcheck()
        self._parameter_places()
        self._verdict()
        if report.process is not None:
            self.heading("PROCESS")
            cid = f"  Cid {windbg_cid(report.process_id)}" if report.process_id is not None else ""
            self.line("  ", self.process_link(report.process), cid, f"  {report.process_name or '(name unknown)'}")
        self._thread_and_lock()
        self._crash_context()
        self._exception()
        self._context_record()
        self._call_stack()
        self._stack_scan()
        self._trackers()
        self._mdls()
        self._holders()
        self._irps()
        if report.locked_pages_expected is not None:
            self.heading("LOCKED PAGES")
            accounted = report.locked_pages_accounted
            counted_by = "P4" if report.bugcheck.code == 0xCB else "P3"  # 0xCB: P3 is the MDL, P4 its pages
            found = accounted if accounted is not None else \
                "not counted (the hunt was interrupted)" if report.partial else "-"
            self.line(f"  expected ({counted_by}): {report.locked_pages_expected}   accounted for by locked MDLs found: "
                      f"{found}")
        if report.facts:
            self.heading("FACTS")
            for fact in report.facts:
                label = f"  {fact.label}: "
                # Continuation lines under the value, as a label column reads; a long label hangs less.
                self.line(label + fact.value + (f"  ({fact.note})" if fact.note else ""),
                          hang=len(label) if len(label) <= self.width // 3 else FACT_HANG)
        self._summary()
        self._modules()
        if report.warnings:
            self.heading("WARNINGS")
            for warning in report.warnings:
                self.line(f"  - {warning}")
        self._next_steps()
        self._rejected()
        self._layouts()
        return "\n".join(self.lines) + "\n"

    def _source(self) -> str:
        """The source, then the architecture and build unless its description already says them."""
        report = self.report
        said = report.source.lower()
        facts = [fact for fact, shown in ((report.arch, re.search(rf"\b{re.escape(report.arch.lower())}\b", said)),
                                          (f"build {report.build}" if report.build else "",
                                           f"build {report.build}" in said)) if fact and not shown]
        return report.source + (f" ({', '.join(facts)})" if facts else "")

    def _next_steps(self) -> None:
        steps = self.report.next_steps
        if not steps:
            return
        self.heading("NEXT STEPS")
        for number, step in enumerate(steps, 1):
            if not isinstance(step, NextStep):
                self.line(f"  {number}. {step_text(step)}")
                continue
            self.line(f"  {number}. {step.text}")
            margin = " " * (len(f"  {number}. "))
            for letter, substep in zip("abcdefghijklmnopqrstuvwxyz", step.substeps):
                self.line(f"{margin}{letter}. {substep}")

    def _bugcheck(self) -> None:
        bugcheck = self.report.bugcheck
        self.heading(f"BUG CHECK {bugcheck_code_text(bugcheck.code)} {bugcheck.name}")
        if bugcheck.summary:
            self.line(f"  {bugcheck.summary}")
        if bugcheck.variant:
            self.line(f"  Form: {bugcheck.variant}")
        self.table(["param", "value", "meaning"],
                   [[f"P{p.index}", self.address(p.value), p.meaning] for p in bugcheck.parameters])

    def _verdict(self) -> None:
        report = self.report
        self.heading("VERDICT")
        self.line(f"  {report.verdict}")
        for rank, suspect in enumerate(report.suspects, 1):
            names = [cell for cell in (self.driver_link(suspect.driver, suspect.driver_object),
                                       self.image_link(suspect.image)) if cell]
            parts = [part for cell in names for part in (cell, "  ")]
            held = ""
            if suspect.mdls:
                held = f"  {len(suspect.mdls)} MDL(s)" + (f", {suspect.pages} page(s)" if suspect.pages is not None else "")
            self.line(f"  {rank}. ", *parts, f"[{suspect.confidence} confidence]{held}")
            shown = suspect.evidence if self.verbose else suspect.evidence[:EVIDENCE_SHOWN]
            for evidence in shown:
                self.line(f"       - {evidence}")
            if len(shown) < len(suspect.evidence):
                self.line(f"       - ... and {len(suspect.evidence) - len(shown)} more piece(s) of evidence like these "
                          f"(-v shows them; JSON lists them all)")

    def _mdls(self) -> None:
        mdls = self.report.mdls
        if not mdls:
            return
        self.heading("MDLs")
        headers = ["MDL", "state", "pages", "bytes", "StartVa", "flags", "held by"]
        rows = []
        for mdl in mdls:
            rows.append([self.mdl_link(mdl.address), mdl.classification, mdl.pages, f"{mdl.byte_count:#x}",
                         self.address(mdl.start_va), f"{mdl.flags:04x} {' '.join(mdl.flag_names)}".strip(),
                         self._held_by(mdl)])
            if self.dml:
                rows[-1].append(self.pool_link(mdl.address))
        # DML adds a "pool" column of !pool links: a link only a debugger can follow, a bare word offline.
        self.table(headers + (["pool"] if self.dml else []), rows, wrap_column=(5, 6), beyond_width=int(self.dml))
        for mdl in mdls:
            if mdl.role or (mdl.problems and mdl.classification != "not an MDL"):
                self.line("  ", self.mdl_link(mdl.address), f": {mdl.role}" if mdl.role else "")
                for problem in mdl.problems:
                    self.line(f"    - {problem}")

    def _held_by(self, mdl: MdlRecord) -> Cell:
        """The IRPs holding the MDL, as before; else its other holder (the one naming a driver first)."""
        if mdl.irps:
            return self.irp_link(mdl.irps[0]) if len(mdl.irps) == 1 else f"{len(mdl.irps)} IRPs"
        others = [h for h in mdl.holders if h.kind != CHAIN_HOLDER]
        if not others:
            return "none found"
        first = next((h for h in others if h.evidence or any(u.evidence for u in h.held_by)), others[0])
        return first.summary + (f" +{len(others) - 1}" if len(others) > 1 else "")

    def _holders(self) -> None:
        """Where memory holds each MDL's address besides IRPs and MDL chains, and what each place names."""
        mdls = [m for m in self.report.mdls if any(h.kind not in (IRP_HOLDER, CHAIN_HOLDER) for h in m.holders)]
        if not mdls:
            return
        self.heading("HOLDERS (where memory holds each MDL's address, besides IRPs)")
        shown = mdls if self.verbose else mdls[:HOLDERS_SHOWN]
        for mdl in shown:
            self.line("  MDL ", self.mdl_link(mdl.address), f" ({mdl.classification}, {mdl.pages} page(s))")
            for holder in mdl.holders:
                if holder.kind in (IRP_HOLDER, CHAIN_HOLDER):
                    continue
                self._holder_line(holder, "    - ")
                for above in holder.held_by:
                    self._holder_line(above, "        the block's address is at ")
                if holder.followed and not holder.held_by:
                    self.line("        nothing was found holding the block's address")
        if len(shown) < len(mdls):
            self.line(f"  ... and the holders of {len(mdls) - len(shown)} more MDL(s) (-v shows them; JSON lists "
                      f"them all)")

    def _holder_line(self, holder: HolderRecord, lead: str) -> None:
        if holder.evidence:
            names = f"names {holder.driver or holder.image}" + (f" ({holder.image})" if holder.driver and holder.image
                                                                else "")
        else:
            names = f"names nobody: {holder.nobody}"
        where: Cell = self.address(holder.address) if holder.address is not None else \
            f"physical {self.address(holder.physical)}"
        command = self._holder_command(holder) if holder.address is not None else None
        self.line(lead, Link(str(where), command) if command else where,
                  f" [{holder.kind.replace('_', ' ')}] {holder.description}; {names}")

    def _irps(self) -> None:
        irps = self.report.irps if self.verbose else self.report.irps[:IRPS_SHOWN]
        for irp in irps:
            self._irp(irp)
        if len(irps) < len(self.report.irps):
            self.lines.append("")
            self.line(f"... and {len(self.report.irps) - len(irps)} more IRP(s) (-v shows them; JSON lists them all)")

    def _irp(self, irp: IrpRecord) -> None:
        """The IRP the way !irp lays it out: its header, then location 1 first, ">" on the current one."""
        current = f" (= {self.address(irp.current_stack_address)})" if irp.current_stack_address else ""
        self.lines.append("")
        self.line("IRP ", self.irp_link(irp.address),
                  f"  {irp.stack_count} stack location(s), {irp.current_location} is current{current}")
        flags = f"{irp.flags:08x}" + (f" ({' '.join(irp.flag_names)})" if irp.flag_names else "")
        self.line("  Mdl ", self.mdl_link(irp.mdl_address) if irp.mdl_address else "-", f"  Flags {flags}")
        self.line(f"  Cancel {int(irp.cancel)}  CancelRoutine ",
                  self.code_link(irp.cancel_routine, irp.cancel_symbol) if irp.cancel_routine else "-")
        cid = f" (Cid {windbg_cid(irp.thread_process_id, irp.thread_id)})" \
            if irp.thread_process_id is not None and irp.thread_id is not None else ""
        self.line("  Thread ", self.thread_link(irp.thread) or "-", cid, "  File object ",
                  self.address(irp.file_object) if irp.file_object else "-",
                  f"  {irp.file_name}" if irp.file_name else "")
        rows = []
        for location in irp.stack:
            completion = " ".join(([location.completion_symbol] if location.completion_symbol else [])
                                  + location.conditions) or "-"
            rows.append([f"{'>' if location.current else ''}{location.number}",
                         f"{location.major_name}({location.major:x}), {location.minor:x}",
                         f"{location.control:02x}", self.device_link(location.device),
                         self.driver_link(location.driver, location.driver_object),
                         self.image_link(location.image), completion])
        # "#" right-aligned: the numbers line up and ">" stands before the current one, as in !irp.
        self.table(["#", "major, minor", "cl", "device", "driver", "image", "completion"], rows, right=(0,))
        below = [str(location.number) for location in irp.stack if location.unused and location.device]
        if below:
            self.line(f"  location(s) {', '.join(below)}, below the current one, have not been called with this "
                      f"IRP yet: their device is what memory holds there, not a driver that has seen it")

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
            ids = f"  Cid {windbg_cid(thread.process_id, thread.thread_id)}" \
                if thread.process_id is not None and thread.thread_id is not None else ""
            self.line("  ", self.thread_link(thread.address),
                      *(["  process ", self.process_link(thread.process)]
                        + ([f" {thread.process_name}"] if thread.process_name else [])
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
            link = self.pool_block_link(lock.address) if lock.location != "image" else \
                self.code_link(lock.address, self.address(lock.address))
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
            if parameter.status:
                self.line(f"  P{parameter.index} is {parameter.status}")
            if parameter.symbol:
                where = f"{parameter.module}, unloaded before the crash" if parameter.unloaded else parameter.module
                self.line(f"  P{parameter.index} is ", self.code_link(parameter.value, parameter.symbol), f" ({where})")

    def _exception(self) -> None:
        """The exception record, laid out as .exr prints it."""
        exception = self.report.exception
        if exception is None:
            return
        self.heading("EXCEPTION RECORD")
        self.line("  ", Link(self.address(exception.address), f".exr {exception.address:#x}"), "  (.exr)")
        self.line(f"  ExceptionAddress: {self.address(exception.exception_address)}",
                  *([" (", self.code_link(exception.exception_address, exception.exception_symbol), ")"]
                    if exception.exception_symbol else []))
        self.line(f"  ExceptionCode: {exception.code_text}")
        self.line(f"  ExceptionFlags: {exception.flags:08x}")
        self.line(f"  NumberParameters: {len(exception.parameters)}")
        for index, value in enumerate(exception.parameters):
            self.line(f"  Parameter[{index}]: {self.address(value)}")
        if exception.access is not None:
            verb = {"read": "read from", "write": "write to", "execute": "execute"}[exception.access]
            self.line(f"  Attempt to {verb} address {self.address(exception.accessed_address)}")
        if exception.io_status:
            self.line(f"  The I/O that failed: {exception.io_status}")
        for problem in exception.problems:
            self.line(f"  - {problem}")

    # Registers shown on one line of the context record.
    REGISTERS_PER_LINE = 3

    def _crash_context(self) -> None:
        """The context record's registers (under THREAD when there is one), three a line in columns as
        .cxr lays them out, then each register whose value lies in an image, named."""
        report = self.report
        if not report.registers:
            return
        if report.thread is None:
            self.heading("CONTEXT (the crashing processor's registers)")
        self._registers(report.registers, "  registers:")

    def _registers(self, registers, label: str) -> None:
        name_width = max(len(register.name) for register in registers)
        for start in range(0, len(registers), self.REGISTERS_PER_LINE):
            row = registers[start:start + self.REGISTERS_PER_LINE]
            cells = " ".join(f" {register.name:<{name_width}} {self.address(register.value)}" for register in row)
            self.line((label if start == 0 else " " * len(label)) + cells)
        for register in registers:
            if register.symbol:
                self.line(" " * len(label), f" {register.name} is ", self.code_link(register.value, register.symbol))

    def _summary(self) -> None:
        """The fields of !analyze -v's summary, and where the followup came from."""
        summary = self.report.summary
        if summary is None:
            return
        self.heading("ANALYZE (the fields of !analyze -v)")
        for label, value in (("SYMBOL_NAME", summary.symbol_name), ("MODULE_NAME", summary.module_name),
                             ("IMAGE_NAME", summary.image_name), ("IMAGE_VERSION", summary.image_version),
                             ("FAILURE_BUCKET_ID", summary.failure_bucket)):
            if value:
                self.line(f"  {label}: {printable(value)}")
        self.line(f"  (followed up: {summary.followup})")

    def _context_record(self) -> None:
        """The registers of the CONTEXT record a bug check parameter points at, as .cxr shows them."""
        report = self.report
        if not report.context_record:
            return
        address = report.context_record_address
        self.heading("CONTEXT RECORD")
        self.line("  ", Link(self.address(address), f".cxr {address:#x}"), "  (.cxr: the registers when the exception "
                  "happened)")
        self._registers(report.context_record, "  registers:")

    def _call_stack(self) -> None:
        """The unwound stack as k shows it, where it stopped and why, then the scan of what lies above."""
        stack = self.report.call_stack
        if stack is None:
            return
        self.heading(f"STACK (k, unwound from {stack.start})")
        self.table(["#", "Child-SP", "RetAddr", "Call Site"],
                   [[f"{frame.number:02x}", self.address(frame.child_sp),
                     self.address(frame.return_address) if frame.return_address is not None else "-",
                     self._call_site(frame)] for frame in stack.frames], beyond_width=1)
        self._trap_frame()
        if stack.complete:
            return
        last = stack.frames[-1].number if stack.frames else 0
        self.line(f"  The unwind stopped at frame {last:02x}: {stack.stop}.")
        if stack.scan:
            self.line("  Above it, values on the stack that lie in images (a scan, not unwound frames: they may be "
                      "stale):")
            self.table(["slot", "value"], [[self.address(c.slot), self.code_link(c.value, c.symbol)]
                                           for c in stack.scan])

    def _call_site(self, frame) -> Link:
        """The frame's function as k shows it; a trap handler's with its trap frame, linked to .trap."""
        if frame.trap_frame is None:
            return self.code_link(frame.ip, frame.symbol)
        return Link(f"{frame.symbol or self.address(frame.ip)} (TrapFrame @ {self.address(frame.trap_frame)})",
                    f".trap {frame.trap_frame:#x}")

    def _trap_frame(self) -> None:
        """The registers of the first trap frame on the stack, as .trap shows them."""
        report = self.report
        if report.trap_frame_address is None:
            return
        self.line("  ", Link(f"TrapFrame @ {self.address(report.trap_frame_address)}",
                             f".trap {report.trap_frame_address:#x}"),
                  "  (.trap: the registers the trap handler saved; a trap frame does not hold every register)")
        self._registers(report.trap_frame, "  registers:")

    def _stack_scan(self) -> None:
        scan = self.report.stack
        if scan is None or (self.report.call_stack is not None and not self.verbose):
            return
        self.heading("STACK CANDIDATES (a scan of the crashing thread's stack for values inside loaded images, "
                     "innermost first; not an unwound stack)")
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
            # The name last, as lm t has it: a long one runs past the width instead of wrapping a column.
            self.table(["start", "end", "timestamp", "module"],
                       [[self.address(m.base), self.address(m.base + m.size), _timestamp(m.timestamp, report.crash_time),
                         self.image_link(m.image)] for m in report.modules], beyond_width=1)
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

    def _layouts(self) -> None:
        """-v: where each structure layout and kernel symbol came from and how many passes the search made."""
        if not self.verbose:
            return
        self.heading("LAYOUTS")
        for name, source in self.report.layouts.items():
            self.line(f"  {name}: {source}")
        if not self.report.layouts:
            self.line("  (no structure was decoded)")
        self.line(f"  search passes over memory: {self.report.searches}")
        if self.report.symbols:
            self.heading("SYMBOLS")
            for name, (address, source) in sorted(self.report.symbols.items()):
                self.line(f"  {name}: {self.address(address)} ({source})")
        if self.report.module_symbols:
            self.heading("MODULE SYMBOLS (what named each module's addresses)")
            for note in self.report.module_symbols:
                self.line(f"  - {note}")


def _timestamp(value: Optional[int], crash_time: Optional[str]) -> str:
    """A PE TimeDateStamp as lm t shows it: the date it encodes, or ``(hash)`` where it cannot be a date.

    Images linked reproducibly (Windows 10 and later) hold a hash of the build there, not a time: a
    "date" before the first Windows NT (1993) or after the crash is one, and is shown as the hex value
    alone, labelled, as WinDbg does. (A hash that falls between the two still reads as a date: only
    the image's debug directory could tell.)
    """
    if value is None:
        return "-"
    moment = datetime.fromtimestamp(value, timezone.utc)
    when = f"{moment:%Y-%m-%dT%H:%M:%SZ}"
    if when < FIRST_PE_LINK_TIME or (crash_time and when > crash_time):
        return f"{value:08x} (hash)"
    return f"{value:08x} {moment:%Y-%m-%d %H:%M:%S}"


def _duration(seconds: float) -> str:
    """An uptime as vertarget writes it: ``2 days 3:04:05.678``."""
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(int(minutes), 60)
    days, hour = divmod(hours, 24)
    return f"{days} days {hour}:{minute:02d}:{second:06.3f}"


def render_text(report: Report, verbose: bool = False, width: Optional[int] = None) -> str:
    with collector_paused():
        return Renderer(report, dml=False, verbose=verbose, width=width).render()


def render_dml(report: Report, verbose: bool = False, width: Optional[int] = None) -> str:
    with collector_paused():
        return Renderer(report, dml=True, verbose=verbose, width=width).render()
