"""Fuzz target: ``load_snapshot`` and everything a replay does after it.

    python fuzz/fuzz_snapshot.py --runs 2000             # the CI run (about a minute)
    python fuzz/fuzz_snapshot.py --runs 100000 --seed 7  # longer, on demand
    python fuzz/fuzz_snapshot.py --replay fuzz/crashes/manifest-seed1-42.snap

Each input is a snapshot damaged one way: the file (truncated, bytes flipped, ZIP header fields set to
hostile values, manifest entries given wrong types, huge or negative numbers, removed, unknown versions)
or the memory inside a well-formed file (fuzz/mutators.py: flipped bits, missing pages, objects
overwritten, self pointers, cycles, absurd sizes, pure random memory, odd bug check parameters). The
bases are the 0x76 cases and one case of every other hunt. An input passes when:

- ``load_snapshot`` returns data or raises SnapshotError with one clear line;
- the analysis of the data returns a report that renders as text, DML and JSON;
- every suspect of a 0x76 report is supported by a chain of valid objects, and no suspect rests on a
  bug check thread that is not a thread (fuzz/oracles.py);
- ``leakhunt inspect`` and ``leakhunt replay`` exit with a documented code (never 5) and print at most
  one line on stderr;
- all of it within the time limit.
"""
from __future__ import annotations

import contextlib
import io
import json
import random
import sys
from typing import List, Tuple

from runner import ContractBroken, main, one_line

from fuzz.mutators import (DELETE, HOSTILE_VALUES, ZIP_FIELD_VALUES, apply_damage, clone, edit_manifest,
                           flip_bytes, manifest_json, manifest_paths, pointer_alphabet, random_damage,
                           randomize_memory, scenario_objects, set_zip_field, snapshot_bytes, snapshot_members,
                           truncate, zip_fields)
from fuzz.oracles import unsupported_suspects, unsupported_thread_starts
from mocks import scenarios_family as family
from mocks.scenarios import case_0x76
from mocks.scenarios_private import case_0x76_private
from pykd_ext import cli, console
from pykd_ext.analyses import analyze
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.targets.base import BugCheck, RecordedImage, SymbolicAddress
from pykd_ext.targets.snapshot import RecordingTarget, SnapshotError, SnapshotTarget, load_snapshot

DAMAGE = ("truncate", "flip", "zip-field", "manifest", "memory", "random-memory", "bug-check")


class Base:
    def __init__(self, name: str, data, expected=None):
        self.name = name
        self.data = data
        self.objects = scenario_objects(data, expected) if expected else {}
        self.alphabet = pointer_alphabet(data, self.objects)
        self.manifest, self.pages = snapshot_members(data)


def _recording(data):
    recorder = RecordingTarget(SnapshotTarget(data))
    analyze(recorder)
    return recorder.snapshot()


def _named(data):
    """A recording that kept names from symbol files and what the unwinder read of an image file (the
    manifest's code_names, module_notes and images), for a module of the case."""
    module = next(m for m in data.modules if m.name == "leakyflt")
    data.code_names = {module.base + 0x1B00: SymbolicAddress(module.base + 0x1B00, "leakyflt", "LfCancelIrp", 0x20,
                                                              "c:\\src\\leakyflt\\cancel.c", 118, "procedure")}
    data.module_notes = ["leakyflt: symbols from pdb leakyflt.pdb (a test's)"]
    image = RecordedImage("leakyflt", module.base, module.size, (0x3000, 0x24))
    image.reads[0x3000] = bytes(range(0x24))
    data.images = {("leakyflt", module.base): image}
    return data


def _bases() -> List[Base]:
    bases = []
    for arch in ("x64", "x86"):
        for kind in ("irp", "unlock", "nothing"):
            scenario = case_0x76(arch, kind, noise_pages=1, ki_bugcheck_driver="leakyflt.sys" if kind == "nothing"
                                 else "")
            bases.append(Base(scenario.name, scenario.data, scenario.expected))
        private = case_0x76_private(arch, noise_pages=1)
        bases.append(Base(private.name, private.data, private.expected))
    irp = case_0x76("x64", "irp", noise_pages=1)
    bases.append(Base("0x76-irp-recording", _recording(irp.data)))
    bases.append(Base("0x76-irp-recording-named", _named(_recording(irp.data))))
    for build in (family.case_0xcb, family.case_0x76_tracked, family.case_0xd9, family.case_0x4e,
                  family.case_0x153, family.case_0x162, family.case_0x192):
        scenario = build("x64", noise_pages=1)
        bases.append(Base(scenario.name, scenario.data))
    return bases


BASES = _bases()


def make_input(rng: random.Random) -> Tuple[str, bytes]:
    base = rng.choice(BASES)
    kind = rng.choice(DAMAGE)
    if kind in ("truncate", "flip", "zip-field"):
        raw = snapshot_bytes(base.manifest, base.pages)
        if kind == "truncate":
            return kind, truncate(raw, rng.randrange(len(raw)))
        if kind == "flip":
            return kind, flip_bytes(raw, [(rng.randrange(len(raw)), rng.randrange(1, 256))
                                          for _ in range(rng.randint(1, 8))])
        fields = zip_fields(raw)
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(ZIP_FIELD_VALUES) if rng.random() < 0.7 else rng.getrandbits(64)
            raw = set_zip_field(raw, rng.choice(fields), value)
        return kind, raw
    if kind == "manifest":
        manifest = base.manifest
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            value = rng.choice(HOSTILE_VALUES + [DELETE]) if roll < 0.7 else \
                rng.randrange(-2 ** 70, 2 ** 70) if roll < 0.85 else hex(rng.getrandbits(rng.choice((8, 32, 64, 72))))
            manifest = edit_manifest(manifest, rng.choice(manifest_paths(manifest)), value)
        return kind, snapshot_bytes(manifest_json(manifest), base.pages)
    data = clone(base.data)
    if kind == "random-memory":
        randomize_memory(data, rng, base.alphabet if rng.random() < 0.7 else ())
    else:
        for op in random_damage(rng, rng.randint(1, 10)):
            apply_damage(data, base.objects, base.alphabet, op)
        if kind == "bug-check":
            code = rng.choice([0x76, 0xCB, 0xD9, 0x4E, 0x153, 0x162, 0x192, 0x1000007E, rng.getrandbits(32)])
            mask = (1 << (8 * data.pointer_size)) - 1
            data.bugcheck = BugCheck(code, tuple(rng.choice(base.alphabet + [0, 1, 2, 3, mask, rng.getrandbits(64)])
                                                 & mask for _ in range(4)))
    return kind, snapshot_bytes(*snapshot_members(data))


def _command(argv) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def check(path: str) -> str:
    try:
        data = load_snapshot(path)
    except SnapshotError as error:
        one_line(str(error))
        outcome, loaded = "refused: one line, exit 3", False
    else:
        report = analyze(SnapshotTarget(data))
        render_text(report, verbose=True)
        render_dml(report, verbose=True)
        json.loads(render_json(report))
        unsupported = unsupported_thread_starts(data, report)
        if data.bugcheck.code == 0x76:
            unsupported += unsupported_suspects(data, report)
        if unsupported:
            raise ContractBroken(f"suspects nothing valid supports: {unsupported}")
        outcome, loaded = ("report naming a suspect" if report.suspects else "report, nobody named"), True
    for argv, allowed in ((["inspect", path], {0} if loaded else {console.EXIT_INPUT}),
                          (["replay", path, "-v"], {console.EXIT_SUSPECT, console.EXIT_NO_SUSPECT, console.EXIT_NO_HUNT}
                           if loaded else {console.EXIT_INPUT})):
        code, _, err = _command(argv)
        if code not in allowed or err.count("\n") > 1 or "Traceback" in err:
            raise ContractBroken(f"leakhunt {argv[0]} exited {code} (allowed {sorted(allowed)}) with {err!r}")
    return outcome


if __name__ == "__main__":
    sys.exit(main("fuzz_snapshot", __doc__.splitlines()[0], make_input, check, ".snap"))
