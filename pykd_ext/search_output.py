"""Parse the output of the debugger's ``!search`` command (Kdexts.dll).

``!search Data [Delta [StartPFN [EndPFN]]]`` prints (DOCS-SEARCH, windows-kernel.md §2.1)::

    Searching PFNs in range 00002370 - 0000237F for [0F100F0F - 0F100F0F]

    Pfn      Offset   Hit      Va       Pte
    - - - - - - - - - - - - - - - - - - -
    0000237B 00000368 0F000F0F 01003368 C0004014
    0000237C 00000100 0F100F0F 01004100 C0004014
    Search done.

With Delta 0 the rows include values one bit away from Data, so callers must compare ``hit`` with
the value they searched for. The Va column is empty when the debugger could not map the physical
page back to a virtual address. Only x86 samples are documented: the x64 column widths are not, so a
row is read as whitespace-separated hexadecimal columns (an x64 ``ffffa58a`1c2d3040`` backtick is
accepted) and a missing Va is told apart from a missing Pte by where the fourth column starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

PAGE_SHIFT = 12

_HEADER = re.compile(r"Searching PFNs in range\s+([0-9A-Fa-f`]+)\s*-\s*([0-9A-Fa-f`]+)\s+for\s*"
                     r"\[\s*([0-9A-Fa-f`]+)\s*-\s*([0-9A-Fa-f`]+)\s*\]")
_TOKEN = re.compile(r"\S+")
_HEX = re.compile(r"^(?:0x)?[0-9A-Fa-f]+(?:`[0-9A-Fa-f]+)?$")
_DONE = "Search done."


class SearchOutputError(ValueError):
    """The text is not ``!search`` output (no header line)."""


@dataclass(frozen=True)
class SearchRow:
    """One hit line: the value ``hit`` at ``offset`` in physical page ``pfn``."""

    pfn: int
    offset: int
    hit: int
    va: Optional[int]  # None when the debugger printed no virtual address (or zero)
    pte: Optional[int]

    @property
    def physical(self) -> int:
        return (self.pfn << PAGE_SHIFT) + self.offset


@dataclass
class SearchOutput:
    pfn_range: Tuple[int, int]  # the range the debugger says it searched
    data_range: Tuple[int, int]  # [Data - Delta, Data + Delta] as the header prints it
    rows: List[SearchRow] = field(default_factory=list)
    done: bool = False  # the "Search done." line was printed: the search ran to its end
    other_lines: List[str] = field(default_factory=list)  # anything else (errors, warnings)


def _number(token: str) -> int:
    return int(token.replace("`", ""), 16)  # int() also accepts a 0x prefix with base 16


def parse_search_output(text: str) -> SearchOutput:
    """Read ``!search`` output; raise SearchOutputError if the header line is missing."""
    output: Optional[SearchOutput] = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        header = _HEADER.search(line)
        if header and output is None:
            first, last, low, high = (_number(g) for g in header.groups())
            output = SearchOutput((first, last), (low, high))
            continue
        if output is None:
            continue
        if stripped == _DONE:
            output.done = True
            continue
        row = _row(line)
        if row is not None:
            output.rows.append(row)
        elif not _is_decoration(stripped):
            output.other_lines.append(stripped)
    if output is None:
        raise SearchOutputError("no 'Searching PFNs in range ...' header")
    return output


def _is_decoration(line: str) -> bool:
    """The column header line and the ``- - -`` separator."""
    return line.replace("-", "").strip() == "" or line.split()[:3] == ["Pfn", "Offset", "Hit"]


def _row(line: str) -> Optional[SearchRow]:
    matches = list(_TOKEN.finditer(line))
    if not 3 <= len(matches) <= 5 or not all(_HEX.match(m.group()) for m in matches):
        return None
    values = [_number(m.group()) for m in matches]
    pfn, offset, hit = values[:3]
    va: Optional[int] = None
    pte: Optional[int] = None
    if len(values) == 5:
        va, pte = values[3], values[4]
    elif len(values) == 4:
        # Either Va or Pte is blank. Columns are fixed width: the Va column would start one gap after
        # Hit; the Pte column one Hit-width further.
        offset_match, hit_match, fourth = matches[1], matches[2], matches[3]
        gap = hit_match.start() - offset_match.end()
        va_start = hit_match.end() + gap
        pte_start = va_start + len(hit_match.group()) + gap
        if abs(fourth.start() - va_start) <= abs(fourth.start() - pte_start):
            va = values[3]
        else:
            pte = values[3]
    return SearchRow(pfn, offset, hit, va or None, pte or None)
