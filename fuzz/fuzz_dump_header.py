"""Fuzz target: the crash dump reader (``pykd_ext.sources.open_dump``: the DUMP_HEADER64/32, the bitmap and
range headers, the page tables) and the ``leakhunt analyze`` that follows it.

    python fuzz/fuzz_dump_header.py --runs 2000             # the CI run
    python fuzz/fuzz_dump_header.py --runs 50000 --seed 7   # longer, on demand
    python fuzz/fuzz_dump_header.py --replay fuzz/crashes/header-field-seed1-42.dmp

The bases are kernel memory dumps written from the 0x76 scenarios of x64 and ARM64 (bitmap, live
bitmap, kernel and kernel+user range layouts), a small dump written from the 0xCB legacy scenario, and
the two real small dumps of the test samples when they are present. Each input damages one: header
fields set to hostile values (signature, dump type, machine, physical memory runs, bug check, the
top-level table), bitmap/range header fields, triage section fields (every offset, size and count of a
small dump's TRIAGE_DUMP), flipped bytes in the headers, the triage records (driver list, string pool,
unloaded drivers, data block table) or the pages (x64 entries and ARM64 descriptors that point to their
own table, to garbage or past memory, blocks, transition entries, loops), truncation anywhere, trailing
garbage. An input passes when:

- opening it gives a target or a DumpFileError with one clear line (a damaged triage section is a
  warning and the header-only report); a file cut short of what its header says it holds (the pages
  of a memory dump of every type, a small dump's SizeOfDump) is refused as truncated, never analyzed;
- the analysis returns a report that renders as text, DML and JSON, and every suspect of a 0x76 report
  is supported by a chain of valid objects (fuzz/oracles.py);
- ``leakhunt analyze`` exits with a documented code (never 5) and at most one line on stderr;
- the file is byte-identical afterwards; all within the time limit.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import struct
import sys
import tempfile
from typing import List, Tuple

from runner import ContractBroken, main, one_line

from fuzz.mutators import flip_bytes, truncate
from fuzz.oracles import unsupported_suspects
from mocks.dumpwriter import add_crashing_thread, write_dump, write_small_dump
from mocks.scenarios import case_0x76
from mocks.scenarios_family import case_0xcb
from pykd_ext.sources import open_dump
from pykd_ext import cli, console
from pykd_ext.analyses import Options, analyze
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.targets import dumpheader as dh
from pykd_ext.targets import triage
from pykd_ext.targets.dumpheader import DumpFileError

SAMPLES = "/work/shared/samples"
DAMAGE = ("header-field", "layout-field", "triage-field", "header-bytes", "triage-bytes", "page-bytes", "table-entries",
          "truncate", "trailing-garbage")

# (offset, width) of the DUMP_HEADER64 fields the reader uses.
HEADER64_FIELDS = [(0, 4), (4, 4), (dh.H64_MAJOR_VERSION, 4), (dh.H64_MINOR_VERSION, 4),
                   (dh.H64_DIRECTORY_TABLE_BASE, 8), (dh.H64_PFN_DATABASE, 8), (dh.H64_PS_LOADED_MODULE_LIST, 8),
                   (dh.H64_PS_ACTIVE_PROCESS_HEAD, 8), (dh.H64_MACHINE_IMAGE_TYPE, 4),
                   (dh.H64_NUMBER_PROCESSORS, 4), (dh.H64_BUGCHECK_CODE, 4)] + \
                  [(dh.H64_BUGCHECK_PARAMETERS + 8 * n, 8) for n in range(4)] + \
                  [(dh.H64_KD_DEBUGGER_DATA_BLOCK, 8), (dh.H64_PHYSICAL_MEMORY_BLOCK, 4),
                   (dh.H64_PHYSICAL_MEMORY_BLOCK + 8, 8)] + \
                  [(dh.H64_PHYSICAL_MEMORY_BLOCK + dh.RUNS_OFFSET[8] + 8 * n, 8) for n in range(8)] + \
                  [(dh.H64_DUMP_TYPE, 4), (dh.H64_REQUIRED_DUMP_SPACE, 8)]
# Fields of the bitmap (types 5, 6) or range (8, 9, 0xA) header that follows at 0x2000.
LAYOUT_FIELDS = [(dh.HEADER64_SIZE + offset, width) for offset, width in
                 [(0, 4), (4, 4), (dh.BMP_FIRST_PAGE, 8), (dh.BMP_TOTAL_PRESENT_PAGES, 8), (dh.BMP_PAGES, 8),
                  (dh.BMP_BITMAP, 8), (dh.RDMP_MARKER, 4), (dh.RDMP_METADATA_SIZE, 8),
                  (dh.RDMP_FIRST_PAGE_OFFSET, 8), (dh.RDMP_TOTAL_NUMBER_OF_PAGES, 8)]
                 + [(dh.RDMP_RANGES + 8 * n, 8) for n in range(8)]]
# The TRIAGE_DUMP fields of a 64-bit small dump at 0x2000 (offsets, sizes and counts).
TRIAGE_FIELDS = [(dh.HEADER64_SIZE + 4 * index, 4) for index in range(len(triage.TRIAGE_FIELDS))] + \
                [(dh.HEADER64_SIZE + triage.TRIAGE64_TOP_OF_STACK, 8)] + \
                [(dh.HEADER64_SIZE + triage.TRIAGE64_TAIL + 4 * index, 4) for index in range(4)]
VALUES = [0, 1, 2, 4, 5, 6, 8, 9, 0xA, 0xB, 0x14C, 0x8664, 0xAA64, 0x1000, 0x2000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
          0x100000000, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFF80312003000, 0x50414745]


def needed_bytes(raw: bytes) -> int:
    """How long a base must be to be whole, read independently of leakhunt's reader: a small dump's
    triage section says it (TRIAGE_DUMP.SizeOfDump, the second dword at 0x2000: the documented layout
    of the public dump parsers); a memory dump written by the test writer ends with its last page."""
    if struct.unpack_from("<I", raw, 0xF98)[0] == 4:  # DUMP_HEADER64.DumpType: a small (triage) dump
        return struct.unpack_from("<I", raw, 0x2004)[0]
    return len(raw)


def _bases() -> List[Tuple[str, bytes]]:
    bases = []
    with tempfile.TemporaryDirectory() as directory:
        for arch, kind in (("x64", "irp"), ("x64", "unlock"), ("arm64", "irp"), ("arm64", "unlock")):
            scenario = case_0x76(arch, kind, noise_pages=1)
            # Every memory dump type but those that store every frame of the machine (tens of MiB each).
            for dump_type in sorted(set(dh.MEMORY_DUMP_TYPES) - {dh.DUMP_FULL, dh.DUMP_COMPLETE}):
                path = os.path.join(directory, "base.dmp")
                image = write_dump(scenario.data, path, dump_type)
                with open(path, "rb") as handle:
                    bases.append((f"{scenario.name}-type{dump_type}", handle.read(), _table_bytes(path, image)))
        scenario = case_0xcb("x64", "legacy", noise_pages=1)
        data = scenario.data
        path = os.path.join(directory, "small.dmp")
        thread = add_crashing_thread(data, scenario.expected["process"], data.modules[0].base + 0x3000)
        write_small_dump(data, path, thread, scenario.expected["process"],
                         blocks=[(data.bugcheck.parameters[2], 0x40)],
                         stack_values=list(data.bugcheck.parameters[:2]), broken_driver="leakyflt.sys",
                         unloaded=[("olddrv.sys", 0xFFFFF80700000000, 0xFFFFF80700010000)])
        with open(path, "rb") as handle:
            bases.append(("0xcb-legacy-small", handle.read(), None))
    for name in ("triage_x64.dmp", "triage_arm64.dmp"):
        path = os.path.join(SAMPLES, name)
        if os.path.exists(path):
            with open(path, "rb") as handle:
                bases.append((name, handle.read(), None))
    return bases


def _table_bytes(path: str, image) -> List[Tuple[int, int]]:
    """(file offset, page frame) of each of the dump's page tables (the writer's table frames)."""
    target = open_dump(path)
    try:
        placed = ((target.layout.file_offset_of(frame), frame) for frame in sorted(image.tables))
        return [(offset, frame) for offset, frame in placed if offset is not None]
    finally:
        target.close()


BASES = _bases()


def _set(raw: bytearray, field: Tuple[int, int], value: int) -> None:
    offset, width = field
    if offset + width <= len(raw):
        raw[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def make_input(rng: random.Random) -> Tuple[str, bytes]:
    _, base, tables = rng.choice(BASES)
    kind = rng.choice(DAMAGE)
    raw = bytearray(base)
    if kind in ("header-field", "layout-field", "triage-field"):
        fields = {"header-field": HEADER64_FIELDS, "layout-field": LAYOUT_FIELDS, "triage-field": TRIAGE_FIELDS}[kind]
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(VALUES) if rng.random() < 0.7 else rng.getrandbits(64)
            _set(raw, rng.choice(fields), value)
        return kind, bytes(raw)
    if kind == "header-bytes":
        limit = min(len(raw), 0x3000)
        return kind, flip_bytes(bytes(raw), [(rng.randrange(limit), rng.randrange(1, 256))
                                             for _ in range(rng.randint(1, 16))])
    if kind == "triage-bytes":  # the triage records: driver list, string pool, unloaded drivers, block table
        limit = min(len(raw), 0x40000)
        return kind, flip_bytes(bytes(raw), [(rng.randrange(0x2000, max(0x2001, limit)), rng.randrange(1, 256))
                                             for _ in range(rng.randint(1, 32))])
    if kind == "table-entries" and tables:  # the kernel page tables themselves: any level, any entry
        for _ in range(rng.randint(1, 8)):
            start, _ = rng.choice(tables)
            loop = rng.choice(tables)[1] << 12  # another table (or this one): a loop, or a level skipped
            frame = rng.randrange(0x100, 0x5000) << 12
            _set(raw, (start + 8 * rng.randrange(512), 8), rng.choice([
                0, rng.getrandbits(64), frame | 0x0060000000000703, frame | 0x701, frame | 0x800, frame | 0xC00,
                frame | 0x63, frame | 0xE3, 0xFFFFFFFFF000 | 0x703, 0xFFFFFFFFF000 | 0x63, loop | 0x0060000000000703,
                loop | 0x63]))
        return kind, bytes(raw)
    if kind in ("page-bytes", "table-entries"):  # page tables and kernel objects: words that point anywhere
        for _ in range(rng.randint(1, 24)):
            offset = rng.randrange(0x2000, max(0x2001, len(raw) - 8)) & ~7
            frame = rng.randrange(0x100, 0x5000) << 12
            word = rng.choice([rng.getrandbits(64), offset, (offset & ~0xFFF) | 0x63, 0x63, 0x80000000000000E3,
                               frame | 0x63,
                               # ARM64: a table descriptor to its own page or anywhere, a block, a page of a
                               # level-0 or level-3 slot, a transition entry, a table past the end of memory
                               (offset & ~0xFFF) | 0x0060000000000703, frame | 0x0060000000000703,
                               frame | 0x701, frame | 0x0060000000000703 | 0xFFFFF000000, frame | 0x800,
                               0x0060000000000703])
            _set(raw, (offset, 8), word)
        return kind, bytes(raw)
    if kind == "truncate":
        cut = rng.randrange(0x4000) if rng.random() < 0.5 else rng.randrange(len(raw))
        short = cut < needed_bytes(base)
        return kind, truncate(bytes(raw), cut), REFUSED_AS_TRUNCATED if short else None
    return kind, bytes(raw) + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 0x3000)))


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


REFUSED_AS_TRUNCATED = "refused as truncated"


def check(path: str, expected: str = "") -> str:
    before = _digest(path)
    try:
        target = open_dump(path)
    except DumpFileError as error:
        one_line(str(error))
        if expected == REFUSED_AS_TRUNCATED and not any(word in str(error) for word in ("truncated", "empty")):
            raise ContractBroken(f"a file cut short was refused for another reason: {error}")
        outcome, opened = "refused: one line, exit 3", False
    else:
        if expected == REFUSED_AS_TRUNCATED:
            target.close()
            raise ContractBroken("a file cut short of what its header says it holds was opened as if it were whole")
        try:
            report = analyze(target, Options())
            render_text(report, verbose=True)
            render_dml(report, verbose=True)
            json.loads(render_json(report))
            if target.bugcheck().code == 0x76:
                unsupported = unsupported_suspects(target, report)
                if unsupported:
                    raise ContractBroken(f"suspects no valid chain supports: {unsupported}")
        finally:
            target.close()
        possible = report.complete_hunt and not target.hunt_unavailable
        outcome, opened = ("report naming a suspect" if report.suspects else
                           "report, nobody named" if possible else "report, hunt not possible"), True
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["analyze", path])
    allowed = {console.EXIT_SUSPECT, console.EXIT_NO_SUSPECT, console.EXIT_NO_HUNT} if opened else {console.EXIT_INPUT}
    err = err.getvalue()
    if code not in allowed or err.count("\n") > 1 or "Traceback" in err:
        raise ContractBroken(f"leakhunt analyze exited {code} (allowed {sorted(allowed)}) with {err!r}")
    if _digest(path) != before:
        raise ContractBroken("the dump file changed")
    return outcome


if __name__ == "__main__":
    sys.exit(main("fuzz_dump_header", __doc__.splitlines()[0], make_input, check, ".dmp"))
