"""Start-up cost of the leakhunt command, side by side with the interpreter's own.

    python3 benchmarks/bench_startup.py [--repeat 15] [--compare OTHER_CHECKOUT]

Each run is a fresh process (what a user or a pipeline pays per call); the commands are interleaved,
one of each per round, so that a change of machine load hits them all alike. Reported: the median
wall time of each command, its ratio to ``python -c pass`` (the floor no command can go under) and
whether numpy and tabulate were loaded (``--version`` and ``--help`` need neither). ``--compare`` adds
the same commands run from another checkout of leakhunt (e.g. an older commit, ``git worktree add``),
measured in the same rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "mocks", "snapshots", "0x76-irp-x64.snap")

# label -> arguments after `python3`
COMMANDS: Tuple[Tuple[str, List[str]], ...] = (
    ("python -c pass", ["-c", "pass"]),
    ("leakhunt --version", ["-m", "pykd_ext", "--version"]),
    ("leakhunt --help", ["-m", "pykd_ext", "--help"]),
    ("leakhunt replay 0x76-irp-x64.snap", ["-m", "pykd_ext", "replay", SNAPSHOT]),
    ("leakhunt replay ... --format json", ["-m", "pykd_ext", "replay", SNAPSHOT, "--format", "json"]),
)

# Which heavy modules a command loads: run it, then list them from sys.modules at exit.
_LOADED_PROBE = """
import atexit, sys
from pykd_ext.cli import main
atexit.register(lambda: sys.__stderr__.write(
    "loaded:" + ",".join(m for m in ("numpy", "tabulate", "pykd_ext.analyses") if m in sys.modules) + "\\n"))
sys.argv = ["leakhunt"] + sys.argv[1:]
sys.exit(main())
"""


def run_once(arguments: List[str], checkout: str = ROOT) -> float:
    """One fresh process; ``python -m pykd_ext`` imports the package of ``checkout`` (its working directory)."""
    start = time.perf_counter()
    subprocess.run([sys.executable] + arguments, cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - start


def loaded_modules(arguments: List[str]) -> str:
    if arguments[:2] != ["-m", "pykd_ext"]:
        return "-"
    result = subprocess.run([sys.executable, "-c", _LOADED_PROBE] + arguments[2:], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    line = [x for x in result.stderr.splitlines() if x.startswith("loaded:")]
    return (line[-1][len("loaded:"):] or "none") if line else "?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="rounds (one run of every command each)")
    parser.add_argument("--compare", metavar="CHECKOUT", help="also run the commands from this leakhunt checkout")
    args = parser.parse_args(argv)
    runs = [(label, arguments, ROOT) for label, arguments in COMMANDS]
    if args.compare:
        other = os.path.abspath(args.compare)
        runs += [(f"{label} [{os.path.basename(other)}]", arguments, other)
                 for label, arguments in COMMANDS[1:]]
    times: Dict[str, List[float]] = {label: [] for label, _, _ in runs}
    for label, arguments, checkout in runs:  # one unmeasured run each: the page cache holds every file
        run_once(arguments, checkout)
    for _ in range(args.repeat):
        for label, arguments, checkout in runs:
            times[label].append(run_once(arguments, checkout))
    floor = statistics.median(times[COMMANDS[0][0]])
    print(f"Python {sys.version.split()[0]}, {args.repeat} interleaved rounds, median wall time per fresh process")
    print()
    print("| command | median | / python -c pass | numpy, tabulate, analyses loaded |")
    print("|---|---|---|---|")
    for label, arguments, checkout in runs:
        median = statistics.median(times[label])
        loaded = loaded_modules(arguments) if checkout == ROOT else "-"
        print(f"| `{label}` | {median * 1000:.0f} ms | {median / floor:.2f} | {loaded} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
