"""Benchmark: leakhunt's dump search and 0x76 hunt against a plain read of the same file.

Generates bitmap kernel dumps of ``--size`` bytes (pointer-rich noise pages plus a 0x76 case with N
leaked MDLs, each held by an IRP; and, for ``--private``, a 0x76 case with N MDLs a driver keeps in its
device extensions, globals and tagged pool blocks) in a temporary directory, one at a time, and
measures side by side:

* one streaming read of the file (8 MiB ``readinto``): the floor for anything that looks at every page;
* leakhunt's pointer search for 1 value (the hunt's first level; also collecting every IRP header, as the
  hunt's first pass does) and for 1000 values (its MDL level),
  with the compiled engine (when built; searching a mapping of the file, and reading it) and with the
  numpy engine, and on one thread and on all of them (``SEARCH_THREADS``);
* the whole 0x76 hunt (open the dump, analyze, render JSON) for each N, as installed (the compiled
  engine searching a mapping of the file, where it can) and, warm, with the search reading the file;
  the IRP-held MDLs must take one pass (the IRPs are collected in the pass that finds the MDLs); the
  private ones, kept in device extensions and in tagged pool blocks (segment-heap VS blocks), two (the
  MDLs, then what holds them), the search of the loaded images for the pool tag included; their kernel
  is the real 19041 one, whose symbol table is opened once, before the timing;
* the obvious alternative a user would write: kdmp-parser's Python API page by page, ``bytes.find`` for
  each value with an alignment check. It is slow, so it runs on ``--alternative-pages`` pages and its
  time is extrapolated to the whole dump (the output says so);
* peak resident memory of the hunt (mapping the file, whose cached pages then count in it, and reading
  it), and of kdmp-parser's ``Parse`` alone, each in a fresh process;
* with ``--arches x64,arm64`` (the default), the IRP case's hunt on an ARM64 dump of the same memory (the
  same scenario and noise, ARM64 translation tables and context), the warm hunts of the two dumps
  interleaved: the ARM64/x64 ratio;
* with ``--compare CHECKOUT``, the warm hunt of every case by that checkout's code beside this one's,
  each in a process of its own, interleaved: before/after ratios of one run.

"cold": the file is evicted from the page cache first (``posix_fadvise(DONTNEED)``, Linux; on a VM the
host may still cache it). "warm": the file is in the page cache. Each measurement is repeated
``--repeat`` times, interleaved with the reads it is compared to; the tables give the median ratio.
The dumps are removed afterwards. Not a test: ``python3 benchmarks/bench_dump_search.py --size 4G``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from mocks.dumpwriter import DumpImage  # noqa: E402
from mocks.memory import SymbolFit  # noqa: E402
from mocks.scenarios import case_0x76  # noqa: E402
from mocks.scenarios_private import case_0x76_private  # noqa: E402
import pykd_ext.search as search_module  # noqa: E402
import pykd_ext.targets.dumpfile as dumpfile_module  # noqa: E402
from pykd_ext.analyses import analyze  # noqa: E402
from pykd_ext.kernel.io import irp_headers  # noqa: E402
from pykd_ext.layouts import Layouts  # noqa: E402
from pykd_ext.render.jsonout import render_json  # noqa: E402
from pykd_ext.session import open_session  # noqa: E402
from pykd_ext.symbols.isf import IsfFile  # noqa: E402
from pykd_ext.sources import open_dump  # noqa: E402
from pykd_ext.targets.dumpheader import DUMP_BITMAP  # noqa: E402

PAGE = 4096
READ_CHUNK = 8 << 20
GIB = 1 << 30
# The real kernel symbol table the private cases' kernel is made to fit (its big pool table and type).
ISF_19041 = os.path.join(ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb",
                         "5278AFF86C341677D7D7835C85B7B844-1.json.xz")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def evict(path: str) -> bool:
    """Drop the file's pages from the page cache; False where the OS offers no way to."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def stream_read(path: str) -> None:
    buffer = bytearray(READ_CHUNK)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def hunt(path: str, mapped: bool = True, symbols=None):
    """The whole hunt as ``leakhunt analyze`` runs it (with ``symbols``, an opened symbol file, as
    ``--symbols`` gives it); ``mapped=False`` has the search read the file."""
    saved = dumpfile_module.MAPPED_SEARCH
    dumpfile_module.MAPPED_SEARCH = mapped
    target = open_dump(path)
    try:
        report = analyze(open_session(target, symbol_files=[symbols]) if symbols is not None else target)
        render_json(report)
        return report
    finally:
        target.close()
        dumpfile_module.MAPPED_SEARCH = saved


def search(path: str, values, engine: str, threads: int, mapped: bool, irps: bool = False) -> None:
    """One search pass; ``irps``: collecting every IRP header in it too, as the hunt's first pass does."""
    saved = search_module.preferred_engine, dumpfile_module.SEARCH_THREADS, dumpfile_module.MAPPED_SEARCH
    search_module.preferred_engine, dumpfile_module.SEARCH_THREADS, dumpfile_module.MAPPED_SEARCH = (
        engine, threads, mapped)
    target = open_dump(path)
    try:
        if irps:
            target.search_pointers_and_headers(values, irp_headers(Layouts(target)))
        else:
            target.search_pointers(values)
    finally:
        target.close()
        search_module.preferred_engine, dumpfile_module.SEARCH_THREADS, dumpfile_module.MAPPED_SEARCH = saved


def compare(path: str, operation, repeat: int, cold: bool):
    """Median of operation/read over ``repeat`` interleaved runs, and the median times."""
    ratios, times, reads = [], [], []
    for _ in range(repeat):
        if cold:
            evict(path)
        reads.append(seconds(stream_read, path))
        if cold:
            evict(path)
        times.append(seconds(operation))
        ratios.append(times[-1] / reads[-1])
    return statistics.median(ratios), statistics.median(times), statistics.median(reads)


def alternative_seconds(path: str, values, pages: int, total_pages: int) -> float:
    """kdmp-parser page by page with bytes.find, timed on ``pages`` pages and extrapolated to all of them."""
    import kdmp_parser
    patterns = [int(v).to_bytes(8, "little") for v in values]
    start = time.perf_counter()
    parser = kdmp_parser.KernelDumpParser(path)
    parse = time.perf_counter() - start
    start = time.perf_counter()
    for index, address in enumerate(parser.pages.keys()):
        if index == pages:
            break
        content = bytes(parser.pages[address])
        for pattern in patterns:
            position = content.find(pattern)
            while position != -1:
                position = content.find(pattern, position + 1)  # a hit when position % 8 == 0
    return parse + (time.perf_counter() - start) * total_pages / pages


PEAK_SCRIPT = """
import os, resource, sys
sys.path.insert(0, {root!r})
{body}
if os.path.exists("/proc/self/status"):  # the high-water mark of this process's own memory
    print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
else:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(body: str) -> float:
    """Peak resident memory of ``body`` run in a fresh interpreter.

    On Linux it is VmHWM: ``ru_maxrss`` would also count the parent's memory copied into the child
    between fork and exec.
    """
    script = PEAK_SCRIPT.format(root=ROOT, body=body)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    peak = int(out.split()[-1])
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


COMPARE_WORKER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pykd_ext.analyses import analyze
from pykd_ext.render.jsonout import render_json
try:
    from pykd_ext.sources import open_dump
except ImportError:  # a checkout from before open_dump
    from pykd_ext.targets.dumpfile import DumpFileTarget
    open_dump = DumpFileTarget.open
symbol_files = {}
for line in sys.stdin:
    path, _, symbol_path = line.rstrip("\\n").partition("\\t")
    if symbol_path and symbol_path not in symbol_files:  # opened once, as the benchmark's own hunt has it
        from pykd_ext.session import open_session
        from pykd_ext.symbols.isf import IsfFile
        symbol_files[symbol_path] = IsfFile.open(symbol_path)
    start, start_cpu = time.perf_counter(), time.thread_time()
    target = open_dump(path)
    try:
        render_json(analyze(open_session(target, symbol_files=[symbol_files[symbol_path]]) if symbol_path
                            else target))
    finally:
        target.close()
    print(time.perf_counter() - start, time.thread_time() - start_cpu, flush=True)
"""


class CheckoutHunt:
    """The same hunt as ``hunt()`` run by one checkout's code in a process of its own (started once, so
    that only the hunt is timed), for before/after ratios measured in one run (--compare)."""

    def __init__(self, root: str):
        self.name = os.path.basename(os.path.abspath(root))
        self._process = subprocess.Popen([sys.executable, "-c", COMPARE_WORKER, os.path.abspath(root)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def hunt_seconds(self, path: str, symbol_path: str = "") -> Tuple[float, float]:
        """Seconds of the hunt (with the ISF file ``symbol_path`` given, as the private cases have it), and
        of its main thread's CPU (the Python work beyond the search threads)."""
        self._process.stdin.write(f"{path}\t{symbol_path}\n")
        self._process.stdin.flush()
        answer = self._process.stdout.readline().split()
        if len(answer) != 2:
            raise RuntimeError(f"the hunt of the {self.name} checkout failed on {path}")
        return float(answer[0]), float(answer[1])

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()


def hunts_compared(path: str, checkouts, repeat: int, symbol_path: str = ""):
    """Median warm hunt/read, hunt seconds and main-thread CPU seconds of each checkout (each in its own
    process), every hunt right after a read of its own, the checkouts in turn ``repeat`` times."""
    for checkout in checkouts:
        checkout.hunt_seconds(path, symbol_path)
    runs = [[] for _ in checkouts]
    for _ in range(repeat):
        for checkout, times in zip(checkouts, runs):
            read = seconds(stream_read, path)
            hunt_time, main_thread_cpu = checkout.hunt_seconds(path, symbol_path)
            times.append((hunt_time / read, hunt_time, main_thread_cpu))
    return [tuple(statistics.median(column) for column in zip(*times)) for times in runs]


def hunts_of_dumps_interleaved(dumps, repeat: int):
    """[(arch, (median warm hunt/read, median hunt seconds))] of the dumps, each hunt right after a read
    of its own file, the dumps in turn ``repeat`` times (after one warm-up hunt each)."""
    for _, path in dumps:
        hunt(path)
    runs = {arch: [] for arch, _ in dumps}
    for _ in range(repeat):
        for arch, path in dumps:
            read = seconds(stream_read, path)
            hunt_time = seconds(hunt, path)
            runs[arch].append((hunt_time / read, hunt_time))
    return [(arch, tuple(statistics.median(column) for column in zip(*runs[arch]))) for arch, _ in dumps]


def generate(path: str, size: int, leaked: int, symbols=None, arch: str = "x64"):
    """A dump of the IRP case, or with ``symbols`` the private case whose kernel they describe."""
    scenario = case_0x76(arch, "irp", leaked=leaked, noise_pages=16) if symbols is None else \
        case_0x76_private("x64", leaked=leaked, noise_pages=16, fit=SymbolFit.of(symbols),
                          placements=("device extension", "tagged block"))
    noise = max(0, size // PAGE - len(scenario.data.pages))
    DumpImage(scenario.data, noise_pages=noise, seed=leaked).write(path, DUMP_BITMAP)
    # On disk before anything is measured: no write-back competes with the runs, and the first cold
    # run evicts it, so the warm runs see the file as it is cached when read, not as it was written.
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="dump size, e.g. 512M, 1G, 4G (default 1G)")
    parser.add_argument("--leaked", default="1,10,100,1000",
                        help="counts of leaked MDLs held by IRPs (default 1,10,100,1000; none: -)")
    parser.add_argument("--private", default="1,100,1000",
                        help="counts of leaked MDLs a driver keeps itself (default 1,100,1000; none: -)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--alternative-pages", type=int, default=2048,
                        help="pages the kdmp-parser alternative searches before extrapolating (default 2048)")
    parser.add_argument("--dir", default=None, help="where to write the temporary dumps (default: the temp dir)")
    parser.add_argument("--compare", default=None, metavar="CHECKOUT",
                        help="also time the warm hunt with another checkout's code, interleaved (before/after)")
    parser.add_argument("--hunts-only", action="store_true", help="leave out the searches and the alternative")
    parser.add_argument("--arches", default="x64,arm64",
                        help="architectures of the IRP case's dumps (default x64,arm64: an ARM64 dump of the same "
                             "memory beside each x64 one, their warm hunts interleaved)")
    args = parser.parse_args()
    size = parse_size(args.size)
    symbols = IsfFile.open(ISF_19041)
    counts = [(int(n), None) for n in args.leaked.split(",") if n != "-"] + \
        [(int(n), symbols) for n in args.private.split(",") if n != "-"]
    # (engine, threads, mapped): the compiled engine both maps the file and reads it, where it can map.
    accesses = [True, False] if search_module.compiled_searches_mappings else [False]
    variants = [(engine, threads, mapped) for engine in search_module.ENGINES
                if engine == "numpy" or search_module._wordscan is not None
                for mapped in (accesses if engine == "compiled" else [False])
                for threads in sorted({1, dumpfile_module.SEARCH_THREADS})]
    workdir = tempfile.mkdtemp(prefix="leakhunt-bench-", dir=args.dir)
    lines = [f"machine: {machine()}", f"dump: bitmap kernel dump with {size / GIB:.2f} GiB of pages; median of "
             f"{args.repeat} interleaved runs; the hunt uses the {search_module.preferred_engine} engine on "
             f"{dumpfile_module.SEARCH_THREADS} thread(s)"
             f"{', mapping the file' if dumpfile_module.MAPPED_SEARCH and search_module.compiled_searches_mappings else ''}"]
    print("\n".join(lines), flush=True)
    search_rows, hunt_rows, other_rows, compare_rows, arch_rows = [], [], [], [], []
    other_arches = [arch for arch in args.arches.split(",") if arch != "x64"]
    compared = [CheckoutHunt(ROOT), CheckoutHunt(args.compare)] if args.compare else []
    try:
        for position, (leaked, case_symbols) in enumerate(counts):
            case = "private" if case_symbols is not None else "irp"
            path = os.path.join(workdir, f"MEMORY-{case}-{leaked}.DMP")
            start = time.perf_counter()
            scenario = generate(path, size, leaked, case_symbols)
            file_size = os.path.getsize(path)
            print(f"{case} N={leaked}: wrote {file_size / GIB:.2f} GiB in {time.perf_counter() - start:.0f} s",
                  flush=True)
            process = scenario.expected["process"]
            if position == 0 and not args.hunts_only and case == "irp":
                many = sorted(set(scenario.expected["locked_mdls"] + scenario.expected["decoy_mdls"]))
                many += [process + 0x10 * i for i in range(1, 1001 - len(many))]
                for label, values, irps in (("1 value", [process], False), ("1 value and the IRP headers", [process], True),
                                            (f"{len(many)} values", many, False)):
                    for engine, threads, mapped in variants:
                        run = (lambda values=values, engine=engine, threads=threads, mapped=mapped, irps=irps:
                               search(path, values, engine, threads, mapped, irps))
                        cold = compare(path, run, args.repeat, cold=True)
                        warm = compare(path, run, args.repeat, cold=False)
                        access = "mapped" if mapped else "read"
                        search_rows.append((f"{label}, {engine}, {access}, {threads} thread(s)", cold, warm,
                                            file_size))
                        print(f"  search {label}, {engine} engine, {access}, {threads} thread(s): cold read/search "
                              f"{1 / cold[0]:.2f}, warm {1 / warm[0]:.2f}", flush=True)
                    if irps:  # the alternative has no IRP headers to collect
                        continue
                    alternative = alternative_seconds(path, values, args.alternative_pages if len(values) == 1
                                                      else max(1, args.alternative_pages // 8), file_size // PAGE)
                    fastest = min(row[2][1] for row in search_rows if row[0].startswith(label + ","))
                    other_rows.append((f"kdmp-parser page by page + bytes.find, {label} (extrapolated)",
                                       f"{alternative:.0f} s = {alternative / fastest:.0f}x leakhunt's warm search"))
                body = f"import kdmp_parser; kdmp_parser.KernelDumpParser({path!r})"
                other_rows.append(("peak RSS of kdmp-parser's Parse alone", f"{peak_rss_mib(body):.0f} MiB"))
            report = hunt(path, symbols=case_symbols)
            assert report.suspects and report.suspects[0].driver == scenario.expected["culprit"], "wrong culprit"
            assert report.locked_pages_accounted == scenario.expected["locked_pages"]
            assert report.searches == (1 if case == "irp" else 2), f"{report.searches} passes"
            cold = compare(path, lambda: hunt(path, symbols=case_symbols), args.repeat, cold=True)
            warm = compare(path, lambda: hunt(path, symbols=case_symbols), args.repeat, cold=False)
            warm_read = compare(path, lambda: hunt(path, mapped=False, symbols=case_symbols), args.repeat, cold=False)
            peaks = []
            for mapped in (True, False):  # mapped: the dump's page-cache pages count in the resident set
                body = ("import pykd_ext.targets.dumpfile as dumpfile\nfrom pykd_ext.analyses import analyze\n"
                        "from pykd_ext.sources import open_dump\n"
                        f"dumpfile.MAPPED_SEARCH = {mapped}\nanalyze(open_dump({path!r}))")
                peaks.append(peak_rss_mib(body))
            hunt_rows.append((f"{leaked} {case}", report, cold, warm, warm_read, peaks))
            print(f"  hunt: cold {cold[0]:.2f} reads, warm {warm[0]:.2f} reads (reading the file: {warm_read[0]:.2f}), "
                  f"peak RSS {peaks[0]:.0f} MiB (reading the file: {peaks[1]:.0f} MiB)", flush=True)
            if compared:
                compare_rows.append((f"{leaked} {case}", hunts_compared(path, compared, args.repeat,
                                                                       ISF_19041 if case_symbols else "")))
                print("  warm hunt, interleaved: " + ", ".join(
                    f"{checkout.name} {ratio:.2f} reads" for checkout, (ratio, _, _) in zip(compared, compare_rows[-1][1])),
                    flush=True)
            if other_arches and case == "irp":
                dumps = [("x64", path)]
                for arch in other_arches:
                    dumps.append((arch, os.path.join(workdir, f"MEMORY-{arch}-{leaked}.DMP")))
                    generate(dumps[-1][1], size, leaked, arch=arch)
                arch_rows.append((leaked, hunts_of_dumps_interleaved(dumps, args.repeat)))
                print("  warm hunt, the dumps in turn: " + ", ".join(
                    f"{arch} {ratio:.2f} reads ({hunt_s:.3f} s)" for arch, (ratio, hunt_s) in arch_rows[-1][1]),
                    flush=True)
                for _, other in dumps[1:]:
                    os.unlink(other)
            os.unlink(path)
    finally:
        for checkout in compared:
            checkout.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if search_rows:
        print()
        print("| search | cold: s (GiB/s) | cold read/search (goal >= 0.5) | warm: s (GiB/s) | warm read/search |")
        print("|---|---|---|---|---|")
        for label, cold, warm, file_size in search_rows:
            print(f"| {label} | {cold[1]:.2f} ({file_size / cold[1] / GIB:.1f}) | {1 / cold[0]:.2f} | "
                  f"{warm[1]:.3f} ({file_size / warm[1] / GIB:.1f}) | {1 / warm[0]:.2f} |")
        read_cold = statistics.median(r[1][2] for r in search_rows)
        read_warm = statistics.median(r[2][2] for r in search_rows)
        print(f"| (streaming read) | {read_cold:.2f} ({size / read_cold / GIB:.1f}) | | "
              f"{read_warm:.3f} ({size / read_warm / GIB:.1f}) | |")
    print()
    mapping = search_module.compiled_searches_mappings and dumpfile_module.MAPPED_SEARCH
    print("| leaked MDLs | passes | MDLs, IRPs reported | cold hunt: s, in reads (goal <= 2.5) | warm hunt: s, in reads "
          "| warm hunt reading the file | peak RSS" + (" (the mapped dump's pages included); reading the file |"
                                                     if mapping else " |"))
    print("|---|---|---|---|---|---|---|")
    for leaked, report, cold, warm, warm_read, peaks in hunt_rows:
        print(f"| {leaked} | {report.searches} | {len(report.mdls)}, {len(report.irps)} | {cold[1]:.2f} s, "
              f"{cold[0]:.2f} | {warm[1]:.2f} s, {warm[0]:.2f} | {warm_read[1]:.2f} s, {warm_read[0]:.2f} | "
              f"{peaks[0]:.0f} MiB{f'; {peaks[1]:.0f} MiB' if mapping else ''} |")
    if compared:
        this, other = compared
        print()
        print(f"| leaked MDLs | warm hunt, {this.name}: reads (s; main thread's CPU) | warm hunt, {other.name}: "
              f"reads (s; main thread's CPU) | {this.name} / {other.name}: time, main thread's CPU |")
        print("|---|---|---|---|")
        for leaked, ((ours, ours_s, ours_cpu), (theirs, theirs_s, theirs_cpu)) in compare_rows:
            print(f"| {leaked} | {ours:.2f} ({ours_s:.3f} s; {ours_cpu:.3f} s) | {theirs:.2f} ({theirs_s:.3f} s; "
                  f"{theirs_cpu:.3f} s) | {ours_s / theirs_s:.2f}, {ours_cpu / theirs_cpu:.2f} |")
    if arch_rows:
        first = arch_rows[0][1][0][0]
        print()
        print("| leaked MDLs | " + " | ".join(f"warm hunt, {arch} dump: reads (s)" for arch, _ in arch_rows[0][1])
              + " | " + " | ".join(f"{arch} / {first}: time" for arch, _ in arch_rows[0][1][1:]) + " |")
        print("|---" * (2 * len(arch_rows[0][1])) + "|")
        for leaked, measured in arch_rows:
            base = measured[0][1][1]
            print(f"| {leaked} | " + " | ".join(f"{ratio:.2f} ({hunt_s:.3f} s)" for _, (ratio, hunt_s) in measured)
                  + " | " + " | ".join(f"{hunt_s / base:.2f}" for _, (_, hunt_s) in measured[1:]) + " |")
    print()
    for label, value in other_rows:
        print(f"- {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
