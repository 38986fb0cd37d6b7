"""Benchmark: opening a kernel-sized PDB and resolving every layout leakhunt needs, against a plain
read of the same file.

Synthesizes (mocks/pdbwriter.py, no clang needed) a PDB of ``--size`` bytes or more: tens of thousands
of filler structures (forward references, pointers, arrays, bit fields, field lists of 8-40 members)
and filler public symbols, with the test kernel's structures (mocks/test_kernel.py: leakhunt's x64
build 19045 layouts, as LF_STRUCTURE2 records) and globals at the end of their streams, the worst
place for a reader that looks for names. Then measures side by side, interleaved, ``--repeat`` times:

* a plain streaming read of the file (1 MiB ``readinto``): the floor for anything that reads it;
* ``PdbFile.open`` alone (the streams read, their record offsets indexed);
* ``PdbFile.open`` + ``type_info`` of every structure in ``layouts.STABLE_LAYOUTS``,
  ``OTHER_STABLE_LAYOUTS`` and ``BUILD_LAYOUTS_X64`` with ``layouts.known_field_names`` + ``rva`` of
  the five globals leakhunt reads: what a kernel session asks of a PDB;

* ``PdbFile.open`` + the first ``locate`` (the publics sorted by RVA: what naming the first address
  of a module costs), and 10,000 ``locate`` calls after it (bisect over the sorted starts);

and, in a separate pass, the peak memory of the whole job (tracemalloc: Python allocations) beside the
file size, and the peak resident set of a fresh process doing it. Every resolved layout is checked against
the test kernel's description first. Not a test: ``python3 benchmarks/bench_pdb.py``.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mocks import pdbwriter as writer  # noqa: E402
from mocks import test_kernel  # noqa: E402
from pykd_ext import layouts  # noqa: E402
from pykd_ext.symbols import pdb as fmt  # noqa: E402
from pykd_ext.symbols.pdb import PdbFile  # noqa: E402

MIB = 1 << 20
PUBLICS_SECTION_SIZE = 0x200000  # room for the filler publics, 16 bytes apart in two sections
LOCATES = 10_000
SYMBOLS = [name for name, _ in test_kernel.GLOBALS]
NAMES = sorted(set(layouts.STABLE_LAYOUTS) | set(layouts.OTHER_STABLE_LAYOUTS) | set(layouts.BUILD_LAYOUTS_X64))


def synthesize(path: str, size: int, seed: int = 1) -> dict:
    """Write a PDB of at least ``size`` bytes; return what is in it."""
    rng = random.Random(seed)
    types = writer.TypeRecords()
    filler_forwards = []
    records_bytes = 0
    fillers = 0
    type_budget = size * 3 // 4  # the rest: symbol records
    while records_bytes < type_budget:
        name = f"_FILLER_{fillers:06d}"
        first_new = len(types.records)
        forward = types.structure(name, 0, 0, kind=fmt.LF_STRUCTURE, forward=True)
        filler_forwards.append(forward)
        leaves, offset = [], 0
        for number in range(rng.randint(8, 40)):
            roll = rng.random()
            if roll < 0.3:
                member_type, width = types.pointer(rng.choice(filler_forwards)), 8
            elif roll < 0.45:
                count = rng.randint(2, 64)
                member_type, width = types.array(0x20, count), count
            elif roll < 0.6:
                member_type, width = types.bitfield(0x22, rng.randint(1, 31), 0), 4
            else:
                member_type, width = rng.choice([(0x22, 4), (0x23, 8), (0x21, 2), (0x603, 8)])
            leaves.append(writer.member(f"Member{number:02d}", member_type, offset))
            offset += width
        types.structure(name, types.field_list(leaves), offset, count=len(leaves))
        fillers += 1
        records_bytes += sum(len(record) for record in types.records[first_new:])
    described = test_kernel.structures()
    writer.kernel_types(types, described)
    symbols = [writer.symbol_record(fmt.S_PUB32, f"FillerPublicSymbol{n:06d}", 1 + n % 2, 16 * n)
               for n in range(max(1, (size // 4) // 44))]
    symbols += [writer.symbol_record(fmt.S_GDATA32, name, 2, 0x100 + 16 * n, 0x1000) for n, name in enumerate(SYMBOLS)]
    image = writer.write_pdb(types, symbols, sections=[0x1000, 0x400000], section_size=PUBLICS_SECTION_SIZE)
    with open(path, "wb") as handle:
        handle.write(image)
    return {"bytes": len(image), "types": len(types.records), "tpi": len(types.stream()), "fillers": fillers,
            "symbols": len(symbols), "described": described}


def streaming_read(path: str) -> None:
    buffer = bytearray(MIB)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def open_only(path: str) -> None:
    PdbFile.open(path).close()


def session_work(path: str) -> dict:
    """What a kernel session asks of the kernel's PDB: every layout leakhunt knows and the globals."""
    pdb = PdbFile.open(path)
    found = {name: pdb.type_info(name, layouts.known_field_names(name)) for name in NAMES}
    found.update({name: pdb.rva(name) for name in SYMBOLS})
    pdb.close()
    return found


def first_locate(path: str) -> None:
    """Open the PDB and name one address: the publics are read and sorted by RVA."""
    pdb = PdbFile.open(path)
    if pdb.locate(0x1000 + 16 * 1000 + 5).name != "FillerPublicSymbol001000":
        raise SystemExit("the synthesized PDB names 0x4e85 wrongly")
    pdb.close()


def locates_after_the_first(pdb: PdbFile, rvas: list) -> float:
    """Seconds for ``locate`` of every RVA of ``rvas``, the index already built."""
    started = time.perf_counter()
    for rva in rvas:
        pdb.locate(rva)
    return time.perf_counter() - started


def check(path: str, described: dict) -> None:
    found = session_work(path)
    for name in NAMES:
        info = found[name]
        if name not in described:  # a structure of other builds only (_KLOCK_ENTRIES: 26100)
            if info is not None:
                raise SystemExit(f"{name}: found in the synthesized PDB, which does not have it")
            continue
        expected = test_kernel.expected_layout(name, described)
        wanted = {path: expected[path] for path in layouts.known_field_names(name) if path in expected}
        got = {path: (field.offset, field.size) for path, field in info.fields.items()}
        if info.size != described[name].size or got != wanted:
            raise SystemExit(f"{name}: the synthesized PDB reads back wrong")
    for n, name in enumerate(SYMBOLS):
        if found[name] != 0x400000 + 0x100 + 16 * n:
            raise SystemExit(f"{name}: wrong RVA {found[name]}")


def timed(function, path: str) -> float:
    started = time.perf_counter()
    function(path)
    return time.perf_counter() - started


def peak_python_memory(path: str) -> int:
    tracemalloc.start()
    session_work(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def fresh_process_peak_rss(path: str) -> tuple:
    """Peak resident set (VmHWM, KiB; Linux) of a fresh interpreter that imports the reader, without
    and with the job: what the job adds to a process. (ru_maxrss would carry this process's peak over
    the exec.)"""
    code = ("import sys; sys.path.insert(0, {root!r}); import benchmarks.bench_pdb as b; {job}"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    results = []
    for job in ("", f"b.session_work({path!r}); "):
        output = subprocess.run([sys.executable, "-c", code.format(root=ROOT, job=job)], capture_output=True,
                                text=True, check=True).stdout
        results.append(int(output.split()[-1]))
    return tuple(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=12, help="PDB size in MiB (default 12)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="leakhunt-bench-pdb-") as scratch:
        path = os.path.join(scratch, "ntkrnlmp.pdb")
        made = synthesize(path, int(args.size * MIB))
        check(path, made["described"])
        times = {"read": [], "open": [], "session": [], "locate": [], "locates": []}
        rng = random.Random(2)
        rvas = [rng.randrange(0x1000, 0x1000 + 16 * made["symbols"] // 2) for _ in range(LOCATES)]
        opened = PdbFile.open(path)
        opened.locate(0x1000)
        for _ in range(args.repeat):
            times["read"].append(timed(streaming_read, path))
            times["open"].append(timed(open_only, path))
            times["session"].append(timed(session_work, path))
            times["locate"].append(timed(first_locate, path))
            times["locates"].append(locates_after_the_first(opened, rvas))
        opened.close()
        median = {name: statistics.median(values) for name, values in times.items()}
        peak = peak_python_memory(path)
        rss_idle, rss_job = fresh_process_peak_rss(path) if os.path.exists("/proc/self/status") else (0, 0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"PDB: {made['bytes'] / MIB:.1f} MiB, type stream {made['tpi'] / MIB:.1f} MiB with {made['types']} "
          f"records ({made['fillers']} filler structures), {made['symbols']} symbol records; "
          f"{len(NAMES)} layouts and {len(SYMBOLS)} RVAs resolved (checked against the description)")
    print(f"median of {args.repeat}, file in the page cache:")
    print(f"  streaming read (1 MiB readinto)         {median['read'] * 1000:8.1f} ms   1.0x")
    for name, label in (("open", "PdbFile.open"), ("session", "open + every layout + RVAs"),
                        ("locate", "open + the first locate")):
        print(f"  {label:<40}{median[name] * 1000:8.1f} ms  {median[name] / median['read']:5.1f}x")
    print(f"  {f'{LOCATES} locates after the first':<40}{median['locates'] * 1000:8.1f} ms  "
          f"({median['locates'] / LOCATES * 1e6:.1f} us each)")
    print(f"peak Python memory of open + lookups: {peak / MIB:.1f} MiB ({peak / made['bytes']:.2f}x the file)")
    if rss_job:
        print(f"fresh process peak RSS: {rss_idle / 1024:.1f} MiB after the imports, {rss_job / 1024:.1f} MiB "
              f"with the job (+{(rss_job - rss_idle) / 1024:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
