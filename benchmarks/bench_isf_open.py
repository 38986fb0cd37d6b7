"""Benchmark: opening a real kernel ISF file against the floor of decompressing and parsing it.

For each ISF file in tests/data/symbols (or the folder given), measured side by side in one run,
repeated ``--repeat`` times (median):

* ``lzma.decompress`` of the file alone, and ``json.loads`` of its text: what any reader must pay;
* ``IsfFile.open`` with its parsed-JSON cache emptied (a first open) and with the cache warm (the
  kernel session opening the same file again, e.g. after checking candidates);
* the layouts leakhunt asks for (every structure of pykd_ext/layouts.py with its known fields).

Not a test: ``python3 benchmarks/bench_isf_open.py``.
"""
from __future__ import annotations

import argparse
import glob
import json
import lzma
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pykd_ext import layouts  # noqa: E402
from pykd_ext.symbols import isf  # noqa: E402

DEFAULT_FOLDER = os.path.join(ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb")


def _seconds(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cold_open(path: str) -> isf.IsfFile:
    isf._documents.clear()
    return isf.IsfFile.open(path)


def _all_layouts(symbols: isf.IsfFile) -> None:
    names = set(layouts.STABLE_LAYOUTS) | set(layouts.OTHER_STABLE_LAYOUTS) | set(layouts.BUILD_LAYOUTS_X64)
    for name in names:
        symbols.type_info(name, layouts.known_field_names(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
          f"median of {args.repeat}")
    print(f"{'file':10} {'xz MB':>6} {'JSON MB':>8} {'unxz':>7} {'parse':>7} {'open':>7} {'reopen':>7} "
          f"{'layouts':>8} {'open/(unxz+parse)':>18}")
    for path in sorted(glob.glob(os.path.join(args.folder, "*.json.xz"))):
        raw = open(path, "rb").read()
        text = lzma.decompress(raw)
        unxz = _seconds(lambda: lzma.decompress(raw), args.repeat)
        parse = _seconds(lambda: json.loads(text), args.repeat)
        cold = _seconds(lambda: _cold_open(path), args.repeat)
        warm = _seconds(lambda: isf.IsfFile.open(path), args.repeat)
        symbols = isf.IsfFile.open(path)
        types = _seconds(lambda: _all_layouts(symbols), args.repeat)
        print(f"{os.path.basename(path)[:8]:10} {len(raw) / 1e6:6.2f} {len(text) / 1e6:8.2f} {unxz * 1e3:5.0f}ms "
              f"{parse * 1e3:5.0f}ms {cold * 1e3:5.0f}ms {warm * 1e3:5.0f}ms {types * 1e3:6.1f}ms "
              f"{cold / (unxz + parse):18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
