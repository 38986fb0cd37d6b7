"""Regenerate every bundled snapshot in mocks/snapshots/ (deterministic: same content every run).

    python mocks/make_snapshots.py            # rewrite them
    python mocks/make_snapshots.py --check    # exit 1 if a bundled file's content differs from a fresh build

The check compares the archive members, not the archive bytes: zlib versions compress differently.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from typing import Callable, Iterator, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mocks.scenarios import KINDS_0x76, Scenario, case_0x76  # noqa: E402
from mocks.scenarios_private import case_0x76_private  # noqa: E402
from mocks.scenarios_family import (case_0x4e, case_0x76_tracked, case_0x153, case_0x162, case_0x192,  # noqa: E402
                                    case_0xcb, case_0xd9)
from pykd_ext.targets.snapshot import save_snapshot  # noqa: E402

SNAPSHOT_DIR = os.path.join(HERE, "snapshots")
# Small noise keeps the relatives' files small; the tests run the larger default scenarios.
NOISE = 4


def _case_0x76(arch: str, kind: str) -> Tuple[str, Callable[[], Scenario]]:
    return f"0x76-{kind}-{arch}.snap", lambda: case_0x76(arch, kind)


# file name -> how to build it
BUNDLED_0x76: Tuple[Tuple[str, Callable[[], Scenario]], ...] = tuple(
    _case_0x76(arch, kind) for arch in ("x64", "x86") for kind in KINDS_0x76) + (
    ("0x76-private-x64.snap", lambda: case_0x76_private("x64")),
    ("0x76-private-x86.snap", lambda: case_0x76_private("x86")))

BUNDLED_FAMILY: Tuple[Tuple[str, Callable[[], Scenario]], ...] = (
    ("0xcb-current-x64.snap", lambda: case_0xcb("x64", "current", noise_pages=NOISE)),
    ("0xcb-legacy-x64.snap", lambda: case_0xcb("x64", "legacy", noise_pages=NOISE)),
    ("0xcb-iomgr-x64.snap", lambda: case_0xcb("x64", "iomgr", noise_pages=NOISE)),
    ("0xcb-nothing-x64.snap", lambda: case_0xcb("x64", "nothing", noise_pages=NOISE)),
    ("0xcb-symbols-x64.snap", lambda: case_0xcb("x64", "symbols", noise_pages=NOISE)),
    ("0xcb-current-x86.snap", lambda: case_0xcb("x86", "current", noise_pages=NOISE)),
    ("0xcb-legacy-x86.snap", lambda: case_0xcb("x86", "legacy", noise_pages=NOISE)),
    ("tracked-0x76-x64.snap", lambda: case_0x76_tracked("x64", "P4", noise_pages=NOISE)),
    ("0xd9-1-x64.snap", lambda: case_0xd9("x64", 1, noise_pages=NOISE)),
    ("0xd9-3-x64.snap", lambda: case_0xd9("x64", 3, noise_pages=NOISE)),
    ("0xd9-nothing-x64.snap", lambda: case_0xd9("x64", "nothing", noise_pages=NOISE)),
    ("0x4e-07-x64.snap", lambda: case_0x4e("x64", 0x07, noise_pages=NOISE)),
    ("0x4e-9a-x64.snap", lambda: case_0x4e("x64", 0x9A, noise_pages=NOISE)),
    ("0x4e-nothing-x64.snap", lambda: case_0x4e("x64", "nothing", noise_pages=NOISE)),
    ("0x4e-07-x86.snap", lambda: case_0x4e("x86", 0x07, noise_pages=NOISE)),
    ("0x153-image-lock-x64.snap", lambda: case_0x153("x64", "image-lock", noise_pages=NOISE)),
    ("0x153-image-lock-26100-x64.snap", lambda: case_0x153("x64", "image-lock", 26100, noise_pages=NOISE)),
    ("0x153-nothing-x64.snap", lambda: case_0x153("x64", "nothing", noise_pages=NOISE)),
    ("0x162-image-lock-x64.snap", lambda: case_0x162("x64", "image-lock", noise_pages=NOISE)),
    ("0x162-image-lock-x86.snap", lambda: case_0x162("x86", "image-lock", noise_pages=NOISE)),
    ("0x192-pool-lock-x64.snap", lambda: case_0x192("x64", "pool-lock", noise_pages=NOISE)),
)

BUNDLED = BUNDLED_0x76 + BUNDLED_FAMILY


def bundled_cases() -> Iterator[Tuple[str, Scenario]]:
    for name, build in BUNDLED:
        yield name, build()


def _members(path: str) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    os.makedirs(SNAPSHOT_DIR, exist_ok=True)
    stale = []
    for name, scenario in bundled_cases():
        path = os.path.join(SNAPSHOT_DIR, name)
        if args.check:
            with tempfile.TemporaryDirectory() as scratch:
                fresh = os.path.join(scratch, name)
                save_snapshot(scenario.data, fresh)
                if not os.path.exists(path) or _members(fresh) != _members(path):
                    stale.append(name)
        else:
            save_snapshot(scenario.data, path, overwrite=True)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for name in stale:
        print(f"{name} differs from a fresh build: run python mocks/make_snapshots.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
