"""Run one analysis, and record it when asked: the one path shared by ``leakhunt`` and ``!py leakhunt``.

Recording wraps the target in a RecordingTarget before the kernel session is made, so that the
snapshot holds every page, symbol and search the analysis used; what the session added on top of the
target (symbols and layouts from the kernel's symbol files, and what finding them said) is written
into the snapshot too, so that ``leakhunt replay`` gives the same report, byte for byte.
"""
from __future__ import annotations

from typing import Callable, Optional

from .analyses import Options, analyze
from .report import Report
from .session import KernelSession
from .targets.base import Target
from .targets.snapshot import RecordingTarget, SnapshotData, save_snapshot

# How a session is made over the (possibly recording) target: the command line's symbol options.
SessionFactory = Callable[[Target], KernelSession]


def run_analysis(target: Target, options: Options, make_session: Optional[SessionFactory] = None,
                 record_path: Optional[str] = None, overwrite: bool = False,
                 say: Callable[[str], None] = lambda text: None) -> Report:
    """Analyze ``target`` (through ``make_session``, default: no symbol files) and, with
    ``record_path``, save what was read as a snapshot; ``say`` gets the one line saying where."""
    recorder = RecordingTarget(target) if record_path else None
    source = recorder or target
    session = make_session(source) if make_session else KernelSession(source)
    report = analyze(session, options)
    if recorder is not None:
        if report.partial:
            report.warn(f"the recording was not written to {record_path}: the hunt was interrupted")
        else:
            save_snapshot(recorded_session(recorder.snapshot(), session), record_path, overwrite=overwrite)
            say(record_path)
    return report


def recorded_session(data: SnapshotData, session: KernelSession) -> SnapshotData:
    """Add to a recording what the session resolved beyond the target: symbols and their sources,
    the layouts the symbol files gave, the names the modules' symbol files gave, and what finding all
    those files said."""
    for name, address in session.resolved_symbols().items():
        data.symbols[name] = address
        data.missing_symbols.discard(name)
    data.symbol_sources.update(session.symbol_sources)
    data.types.update(session.file_types)
    data.symbol_notes = list(session.notes)
    data.code_names = {address: named for address, named in session.described.items() if named.function}
    notes = session.module_notes()
    data.module_notes = notes if notes or data.code_names else None
    data.images = dict(session.file_image_reads)
    return data
