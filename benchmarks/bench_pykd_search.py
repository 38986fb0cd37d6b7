"""Search strategies inside WinDbg, measured side by side through the stand-in pykd (mocks/pykd).

    python benchmarks/bench_pykd_search.py            # full table (about two minutes)
    python benchmarks/bench_pykd_search.py --quick    # fewer configurations, one run each

Runs the whole 0x76 hunt through PykdTarget with each search method on the same synthesized case:

* native: the debugger's ``!search value 0 [pfns]``, one command per value;
* scan:   physical memory read with ``loadQWords(pa, n, True)`` in 1 MiB chunks (a chunk that fails is
          re-read page by page), all values found in one pass, then one single-page ``!search`` per
          page with a hit to learn its virtual address.

The stand-in simulates what the real debugger charges: ``call cost`` per pykd call (a dbgeng round
trip) and ``page cost`` per 4 KiB page the engine touches (reading a dump or a live target; paid by
``!search`` and by physical loads alike). ``!search``'s comparison itself runs at numpy speed, like
native code. Two physical memory models: ``kernel dump`` holds only the frames the kernel's pages map
(a MEMORY.DMP kernel dump), ``complete`` holds every frame up to MmHighestPhysicalPage (a complete
dump or a live machine; here frames up to 80 MiB, the lowest 16 MiB absent like a machine's holes).
Times are the best of ``--repeat`` runs; both methods must reach the same findings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "mocks"))

from tabulate import tabulate  # noqa: E402

import pykd  # noqa: E402,F401  (the stand-in)
from pykd import _control  # noqa: E402

from mocks.scenarios import case_0x76  # noqa: E402
from pykd_ext.analyses import analyze  # noqa: E402
from pykd_ext.targets.pykd_target import SEARCH_NATIVE, SEARCH_SCAN, PykdTarget  # noqa: E402

MODELS = {"kernel dump": "sparse", "complete": "full"}


def run_once(scenario, method: str, physical: str, call_cost: float, page_cost: float):
    _control.load(scenario, physical=physical, call_cost=call_cost, page_cost=page_cost)
    start = time.perf_counter()
    report = analyze(PykdTarget(method))
    elapsed = time.perf_counter() - start
    calls = _control.calls()
    _control.unload()
    return elapsed, calls, report


def findings(report) -> dict:
    result = report.as_dict()
    del result["source"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer configurations, one run each")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else max(1, args.repeat)
    leaked_counts = (1, 32) if args.quick else (1, 8, 64)
    costs = [(0.0, 0.0), (50e-6, 2e-6)] if args.quick else [(0.0, 0.0), (50e-6, 2e-6), (200e-6, 2e-6)]
    rows = []
    native_wins = 0
    for model, physical in MODELS.items():
        for leaked in leaked_counts:
            scenario = case_0x76("x64", "irp", leaked=leaked)
            for call_cost, page_cost in costs:
                best = {}
                for _ in range(repeat):  # interleaved, so that drift affects both methods alike
                    for method in (SEARCH_NATIVE, SEARCH_SCAN):
                        elapsed, calls, report = run_once(scenario, method, physical, call_cost, page_cost)
                        if method not in best or elapsed < best[method][0]:
                            best[method] = (elapsed, calls, report)
                native, scan = best[SEARCH_NATIVE], best[SEARCH_SCAN]
                if findings(native[2]) != findings(scan[2]):
                    print(f"the two methods disagree on {model}, {leaked} MDL(s)", file=sys.stderr)
                    return 1
                values = native[1]["dbgCommand"]  # one !search per value searched
                native_wins += native[0] <= scan[0]
                rows.append([model, leaked, values, native[2].searches, f"{call_cost * 1e6:.0f} µs",
                             f"{page_cost * 1e6:.0f} µs", f"{native[0]:.3f}", f"{scan[0]:.3f}",
                             f"{scan[0] / native[0]:.1f}x" if native[0] else "-", sum(native[1].values()),
                             sum(scan[1].values())])
    print(tabulate(rows, headers=["memory", "leaked MDLs", "values", "passes", "call cost", "page cost",
                                  "native s", "scan s", "scan/native", "native calls", "scan calls"],
                   tablefmt="github", disable_numparse=True))
    print(f"\nnative was at least as fast in {native_wins} of {len(rows)} configurations "
          f"(best of {repeat} run(s) each; x64 case 0x76 'irp', stand-in pykd)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
