"""The seeded mutation loop shared by the fuzz targets: arguments, per-input time limit, outcome counts,
saved failures.

A target gives ``make_input(rng) -> (kind, bytes)`` and ``check(path) -> outcome``; ``check`` raises
``ContractBroken`` (or anything else) when leakhunt misbehaves. ``make_input`` may also return
``(kind, bytes, expected)``: what the input must give (e.g. a refusal), passed on as
``check(path, expected)``. Input *i* of seed *s* is drawn from
``random.Random(f"{s}:{i}")``, so ``--seed s --only i`` reproduces it; ``--replay FILE`` re-checks a
saved input.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FAILED = "FAILED"


class ContractBroken(AssertionError):
    """leakhunt broke one of its promises on this input (the message says which)."""


class TimeLimit(BaseException):
    """The input took longer than the time limit: a hang or a pathological slowdown (a BaseException,
    so that no ``except Exception`` on the way can mistake it for an error of the input)."""


def _alarm(signum, frame):
    raise TimeLimit()


def one_line(message: str) -> None:
    """The contract of every refusal: one clear line, no traceback."""
    if not message or "\n" in message or "Traceback" in message:
        raise ContractBroken(f"the refusal is not one clear line: {message!r}")


def main(name: str, description: str, make_input: Callable[[random.Random], tuple],
         check: Callable[..., str], suffix: str, argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--runs", type=int, default=2000, help="inputs to try (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    parser.add_argument("--only", type=int, help="try only input number ONLY of the seed")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per input (default 10)")
    parser.add_argument("--crashes", default=os.path.join(HERE, "crashes"),
                        help="where failing inputs are saved (default fuzz/crashes/)")
    parser.add_argument("--replay", metavar="FILE", help="check one saved input and show what happens")
    args = parser.parse_args(argv)
    if args.replay:
        print(check(args.replay))
        return 0
    timed = hasattr(signal, "SIGALRM")
    if timed:
        signal.signal(signal.SIGALRM, _alarm)
    outcomes: Counter = Counter()
    failures = []
    started = time.monotonic()
    numbers = [args.only] if args.only is not None else range(args.runs)
    with tempfile.TemporaryDirectory(prefix="leakhunt-fuzz-") as scratch:
        path = os.path.join(scratch, "input" + suffix)
        for number in numbers:
            made = make_input(random.Random(f"{args.seed}:{number}"))
            kind, raw = made[0], made[1]
            expected = made[2] if len(made) > 2 else None
            with open(path, "wb") as handle:
                handle.write(raw)
            try:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, args.timeout)
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # a warning printed to a user's terminal is a finding too
                    outcome = check(path) if expected is None else check(path, expected)
            except TimeLimit:
                outcome, detail = FAILED, f"no answer within {args.timeout} s"
            except Exception:  # noqa: BLE001 - any exception is a finding
                outcome, detail = FAILED, traceback.format_exc()
            finally:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            outcomes[(kind, outcome)] += 1
            if outcome == FAILED:
                failures.append(_save(args.crashes, f"{kind}-seed{args.seed}-{number}{suffix}", raw, detail))
    _summary(name, outcomes, len(numbers), time.monotonic() - started, args.seed)
    for saved in failures[:20]:
        print(f"  failing input saved: {saved}")
    return 1 if failures else 0


def _save(directory: str, file_name: str, raw: bytes, detail: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, file_name)
    with open(path, "wb") as handle:
        handle.write(raw)
    with open(path + ".txt", "w", encoding="utf-8") as handle:
        handle.write(detail)
    return path


def _summary(name: str, outcomes: Counter, runs: int, seconds: float, seed: int) -> None:
    from tabulate import tabulate

    kinds = sorted({kind for kind, _ in outcomes})
    columns = sorted({outcome for _, outcome in outcomes} | {FAILED}, key=lambda o: (o == FAILED, o))
    rows = [[kind] + [outcomes.get((kind, column), 0) for column in columns]
            + [sum(outcomes.get((kind, column), 0) for column in columns)] for kind in kinds]
    rows.append(["all"] + [sum(outcomes.get((kind, column), 0) for kind in kinds) for column in columns] + [runs])
    print(f"{name}: {runs} inputs, seed {seed}, {seconds:.1f} s")
    print(tabulate(rows, headers=["damage"] + columns + ["inputs"], tablefmt="github"))
