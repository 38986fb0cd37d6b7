"""Test-side control of the stand-in pykd (not part of the pykd API).

    import pykd
    from pykd import _control
    _control.load(case_0x76("x64", "irp"), types=False, call_cost=0.0005)
    _control.interrupt("dbgCommand", call=2)   # Ctrl+Break during the 2nd dbgCommand
    ... run the script ...
    _control.calls()                           # {"loadBytes": 812, "dbgCommand": 9, ...}
    _control.unload()

``load`` takes a Scenario (mocks/scenarios.py), a SnapshotData or a snapshot file path, plus the
options of ``_session.Session``: ``types`` (False: typeInfo raises TypeException), ``call_cost`` and
``page_cost`` (simulated seconds per pykd call and per 4 KiB page the engine touches), ``physical``
("sparse": only frames the snapshot maps, like a kernel dump; "full": every frame up to max_pfn),
``kernel``/``dump``, ``bugcheck_data``/``bugcheck_command`` (False: that way of reading the bug check
fails), ``modules_list`` (False: getModulesList fails), ``unreadable`` (virtual pages to drop),
``search_extension`` (False: ``!search`` prints only an error), ``hide_va`` (virtual pages ``!search``
cannot map back), ``x64_columns`` ("backtick" or "plain" 16-digit columns in ``!search`` rows).

``run_script(path, args)`` runs a script the way the ``!py`` bootstrapper does.
"""
from __future__ import annotations

import builtins
import os
import runpy
import sys
from typing import Dict, List, Sequence, Tuple

from pykd_ext.targets.snapshot import SnapshotData, load_snapshot

from . import _session


def load(source, **options) -> _session.Session:
    """Make ``source`` the target of an already initialised pykd, as inside WinDbg."""
    if isinstance(source, str):
        data = load_snapshot(source)
    elif isinstance(source, SnapshotData):
        data = source
    else:
        data = source.data  # a mocks.scenarios.Scenario
    _session.current = _session.Session(data, **options)
    return _session.current


def unload() -> None:
    _session.current = None


def session() -> _session.Session:
    if _session.current is None:
        raise RuntimeError("no target loaded in the stand-in pykd")
    return _session.current


def interrupt(function: str, call: int = 1) -> None:
    """Raise SystemExit("CTRL+BREAK") from the ``call``-th call of ``function`` (as pykd does on Ctrl+Break)."""
    session().interrupts[function] = call


def calls() -> Dict[str, int]:
    return dict(session().calls)


class DebuggerOutput:
    """What ``!py`` puts in sys.stdout and sys.stderr (pykd-ext's ``dbgout``): text and DML writes."""

    encoding = "ascii"
    closed = False

    def __init__(self):
        self.chunks: List[Tuple[str, str]] = []  # ("text" | "dml", what was written)

    def write(self, text: str) -> None:
        self.chunks.append(("text", text))

    def writedml(self, text: str) -> None:
        self.chunks.append(("dml", text))

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def written(self, kind: str = "") -> str:
        return "".join(text for chunk_kind, text in self.chunks if not kind or chunk_kind == kind)


def run_script(path: str, args: Sequence[str] = (), via: str = "runpy") -> Tuple[DebuggerOutput, DebuggerOutput]:
    """Run ``path`` as ``!py path args...`` does: sys.argv = [full script path, args...], sys.stdout and
    sys.stderr replaced by debugger output objects, a fresh ``__main__`` namespace (``via="runpy"``:
    runpy.run_path; ``via="exec"``: the bootstrapper's PyRun_File, which sets no ``__file__``).
    Returns (stdout, stderr); an exception that escapes the script propagates."""
    full = os.path.abspath(path)
    stdout, stderr = DebuggerOutput(), DebuggerOutput()
    saved = sys.argv, sys.stdout, sys.stderr
    sys.argv = [full] + list(args)
    sys.stdout, sys.stderr = stdout, stderr
    try:
        if via == "runpy":
            runpy.run_path(full, run_name="__main__")
        else:
            with open(full, "r", encoding="utf-8") as handle:
                code = compile(handle.read(), full, "exec")
            exec(code, {"__name__": "__main__", "__builtins__": builtins})
    finally:
        sys.argv, sys.stdout, sys.stderr = saved
    return stdout, stderr
