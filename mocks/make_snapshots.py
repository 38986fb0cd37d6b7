"""Regenerate the bundled 0x76 snapshots in mocks/snapshots/ (deterministic: same content every run).

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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mocks.scenarios import KINDS_0x76, case_0x76  # noqa: E402
from pykd_ext.targets.snapshot import save_snapshot  # noqa: E402

SNAPSHOT_DIR = os.path.join(HERE, "snapshots")


def bundled_cases():
    """(file name, scenario) for every bundled 0x76 snapshot."""
    for arch in ("x64", "x86"):
        for kind in KINDS_0x76:
            yield f"0x76-{kind}-{arch}.snap", case_0x76(arch, kind)


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
                if _members(fresh) != _members(path):
                    stale.append(name)
        else:
            save_snapshot(scenario.data, path, overwrite=True)
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for name in stale:
        print(f"{name} differs from a fresh build: run python mocks/make_snapshots.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
