"""Build the test driver ``lockdrv.sys`` and its PDB ``lockdrv.pdb`` from lockdrv.c and lockwork.c.

    python3 tests/data/testdriver/build.py           # rebuild the committed lockdrv.sys and lockdrv.pdb
    python3 tests/data/testdriver/build.py --check   # rebuild in a scratch folder, compare with them

A driver-like x64 image (``/driver``, native subsystem, entry DriverEntry, no default libraries) with
functions in two source files, globals, file statics, a static function and a function-local static:
what the symbol tests name addresses in. clang ``--target=x86_64-pc-windows-msvc -gcodeview`` and
``lld-link /debug /Brepro``; the compilation folder written into the objects and the PDB is
``C:\\src\\lockdrv`` whatever the build folder (``-fdebug-compilation-dir``,
``-fcoverage-compilation-dir``, ``/pdbsourcepath``), so the same tools give the same bytes anywhere
(the GUID lld writes is a hash of the PDB). CI has no clang: the tests use the committed files and
run ``--check`` only where clang and lld-link are installed.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("lockdrv.c", "lockwork.c")
IMAGE = "lockdrv.sys"
PDB = "lockdrv.pdb"
SOURCE_FOLDER = "C:\\src\\lockdrv"


def build(output_dir: str) -> None:
    """Compile and link in a scratch folder, then copy the image and the PDB to ``output_dir``."""
    for tool in ("clang", "lld-link"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install clang and lld (apt-get install clang lld llvm)")
    with tempfile.TemporaryDirectory(prefix="leakhunt-testdriver-") as scratch:
        objects = []
        for source in SOURCES:
            shutil.copyfile(os.path.join(HERE, source), os.path.join(scratch, source))
            obj = source[:-2] + ".obj"
            subprocess.run(["clang", "--target=x86_64-pc-windows-msvc", "-g", "-gcodeview", "-O0",
                            f"-fdebug-compilation-dir={SOURCE_FOLDER}", f"-fcoverage-compilation-dir={SOURCE_FOLDER}",
                            "-c", source, "-o", obj], cwd=scratch, check=True)
            objects.append(obj)
        subprocess.run(["lld-link", "/debug", "/driver", "/subsystem:native", "/entry:DriverEntry", "/nodefaultlib",
                        "/Brepro", f"/pdb:{PDB}", f"/pdbaltpath:{PDB}", f"/pdbsourcepath:{SOURCE_FOLDER}",
                        f"/out:{IMAGE}", *objects], cwd=scratch, check=True)
        os.makedirs(output_dir, exist_ok=True)
        for name in (IMAGE, PDB):
            shutil.copyfile(os.path.join(scratch, name), os.path.join(output_dir, name))


def check() -> int:
    """Rebuild in a scratch folder; 0 when the image and the PDB equal the committed ones."""
    with tempfile.TemporaryDirectory(prefix="leakhunt-testdriver-out-") as scratch:
        build(scratch)
        differing = [name for name in (IMAGE, PDB)
                     if not filecmp.cmp(os.path.join(scratch, name), os.path.join(HERE, name), shallow=False)]
    for name in differing:
        print(f"differs from the rebuilt driver: tests/data/testdriver/{name}")
    if not differing:
        print("tests/data/testdriver/ is what build.py builds")
    return 1 if differing else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild in a scratch folder and compare")
    if parser.parse_args(argv).check:
        return check()
    build(HERE)
    print(f"wrote tests/data/testdriver/{IMAGE} and {PDB}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
