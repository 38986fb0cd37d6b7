"""The ``leakhunt`` command: analyze a dump file, replay or inspect a snapshot.

Exit codes (documented in the README):
  0  the report names at least one suspect driver
  1  the report names no suspect (the evidence names nobody, or the bug check has no hunt)
  2  usage error (bad arguments)
  3  input error: a file that is missing, unreadable, truncated, corrupt or of the wrong kind
  4  the hunt was not possible or could not finish: the source lacks the memory it needs (e.g. a
     small dump) or corrupt data stopped it; the bug check and whatever was found are still printed
  5  internal error in leakhunt (please report it with the input that caused it)
  130 interrupted (Ctrl+C): the partial report found so far is printed
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

from . import __version__, search
from .analyses import Options
from .bugchecks import name_of
from .progress import TerminalProgress
from .render.jsonout import render_json
from .render.text import printable, render_text
from .report import Report
from .run import run_analysis
from .session import KernelSession, load_symbol_files, open_session
from .targets.base import Target, TargetError, pfn_range_from_text
from .targets.snapshot import SnapshotError, SnapshotTarget, load_snapshot

EXIT_SUSPECT = 0
EXIT_NO_SUSPECT = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_NO_HUNT = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130
# A reader that stops early (e.g. `| head`) is not an error of the analysis.
EXIT_SUCCESS_IF_PIPE_CLOSED = 0


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leakhunt",
        description="Find the driver that leaked locked pages or lock entries in a Windows kernel crash "
                    "(bug checks 0x76, 0xCB, 0xD9, 0x4E, 0x153, 0x162, 0x192).")
    parser.add_argument("--version", action="version",
                        version=f"leakhunt {__version__} ({search.preferred_engine} search engine)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_report_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--format", choices=("text", "json"), default="text", help="report format (default: text)")
        sub.add_argument("-v", "--verbose", action="store_true",
                         help="also show rejected candidates and why, and the layout sources")
        sub.add_argument("--pfn-range", metavar="START-END", type=pfn_range_argument,
                         help="search only these physical page frame numbers (hex), like !search's StartPFN EndPFN")

    analyze_parser = commands.add_parser("analyze", help="analyze a Windows kernel crash dump file (MEMORY.DMP)")
    analyze_parser.add_argument("dump", help="kernel crash dump file")
    add_report_options(analyze_parser)
    analyze_parser.add_argument("--record", metavar="FILE", help="also write what was read to a snapshot file")
    analyze_parser.add_argument("--force", action="store_true", help="let --record overwrite an existing file")
    analyze_parser.add_argument("--symbol-path", metavar="PATH",
                                help="where to find the kernel's symbols, in _NT_SYMBOL_PATH syntax (folders, symbol "
                                     "stores, srv*CACHE*URL, volatility3 symbol folders; default: $_NT_SYMBOL_PATH)")
    analyze_parser.add_argument("--symbols", action="append", default=[], metavar="FILE",
                                help="the kernel's symbols: its PDB (ntkrnlmp.pdb), a volatility3 ISF file "
                                     '(.json, .json.xz), or a JSON map of addresses {"nt!KiBugCheckDriver": "0x..."}')
    analyze_parser.add_argument("--symbol", action="append", default=[], metavar="NAME=ADDRESS",
                                help="give a symbol address the dump lacks, e.g. nt!KiBugCheckDriver=0xfffff80312345678")

    replay_parser = commands.add_parser("replay", help="analyze a recorded snapshot (.snap)")
    replay_parser.add_argument("snapshot", help="snapshot file")
    add_report_options(replay_parser)

    inspect_parser = commands.add_parser("inspect", help="say what a snapshot file holds")
    inspect_parser.add_argument("snapshot", help="snapshot file")
    return parser


def pfn_range_argument(text: str):
    """argparse type for --pfn-range (shared with the WinDbg entry point)."""
    try:
        return pfn_range_from_text(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_symbols(pairs: List[str]) -> Dict[str, int]:
    """``--symbol NAME=ADDRESS`` values: {"nt!Name": address} (a bare name is nt's)."""
    symbols: Dict[str, int] = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        try:
            address = int(str(value).strip(), 0) if separator and name.strip() else None
        except ValueError:
            address = None
        if address is None or not 0 <= address < 1 << 64:
            raise UsageError(f"bad symbol {pair!r}: write NAME=ADDRESS, e.g. nt!KiBugCheckDriver=0xfffff80312345678")
        name = name.strip()
        symbols[name if "!" in name else "nt!" + name] = address
    return symbols


def exit_code_for(report: Report) -> int:
    if report.partial:
        return EXIT_INTERRUPTED
    if report.suspects:
        return EXIT_SUSPECT
    if not report.complete_hunt:
        return EXIT_NO_HUNT
    return EXIT_NO_SUSPECT


def _options(args) -> Options:
    progress = None
    if args.format == "text" and sys.stderr.isatty():
        progress = TerminalProgress(sys.stderr)
    return Options(verbose=args.verbose, pfn_range=args.pfn_range, progress=progress)


def write(stream, text: str) -> None:
    """Write ``text``, escaping what the stream's encoding cannot hold (a cp1252 console, a C locale,
    a lone surrogate from a hostile file name) instead of failing halfway through a report."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


def stderr_line(text: str) -> None:
    """One line on stderr, whatever the message holds (paths and names come from the user's input)."""
    write(sys.stderr, "leakhunt: " + printable(text) + "\n")


def _emit(report: Report, args) -> int:
    output = render_json(report) if args.format == "json" else render_text(report, verbose=args.verbose)
    write(sys.stdout, output)
    sys.stdout.flush()
    return exit_code_for(report)


def _run(target: Target, args, make_session=None) -> int:
    """Analyze ``target`` (recording it with --record), print the report, return the exit code."""
    record = getattr(args, "record", None)
    options = _options(args)
    try:
        report = run_analysis(target, options, make_session, record, getattr(args, "force", False),
                              say=lambda path: stderr_line(f"recorded this session to {path}"))
    finally:
        if options.progress is not None:
            options.progress.finish()
        target.close()
    return _emit(report, args)


def command_replay(args) -> int:
    return _run(SnapshotTarget.open(args.snapshot), args)


def command_analyze(args) -> int:
    pairs = parse_symbols(args.symbol)
    symbol_path = args.symbol_path if args.symbol_path is not None else os.environ.get("_NT_SYMBOL_PATH")
    if args.record and os.path.exists(args.record) and not args.force:
        raise UsageError(f"{args.record} already exists; choose another name or pass --force to overwrite it")
    symbol_files, addresses = load_symbol_files(args.symbols)
    addresses.update(pairs)  # --symbol NAME=ADDRESS wins over a file's map
    from .targets.dumpfile import DumpFileTarget

    def make_session(target: Target) -> KernelSession:
        return open_session(target, symbol_path or None, symbol_files, addresses)

    return _run(DumpFileTarget.open(args.dump), args, make_session)


def command_inspect(args) -> int:
    data = load_snapshot(args.snapshot)
    bugcheck = data.bugcheck
    page_bytes = len(data.pages) * 4096
    lines = [
        f"{args.snapshot}: leakhunt snapshot ({data.created_by or 'unknown writer'})",
        f"  target:     {data.arch}, pointer size {data.pointer_size}, build {data.build or 'unknown'}",
        f"  source:     {data.description or '-'}",
        f"  bug check:  {bugcheck.code:#x} {name_of(bugcheck.code)} "
        f"({', '.join(f'{p:#x}' for p in bugcheck.parameters)})",
        f"  memory:     {len(data.pages)} page(s), {page_bytes / 1024:.0f} KiB"
        + (" (all of memory: searches run over it)" if data.complete else " (pages read during the recording)"),
        f"  unreadable: {len(data.unreadable)} page(s) recorded as not readable",
        f"  searches:   {len(data.searches)} recorded",
        f"  symbols:    {', '.join(sorted(data.symbols)) or 'none'}"
        + (f"; not found: {', '.join(sorted(data.missing_symbols))}" if data.missing_symbols else ""),
        f"  types:      {', '.join(n for n, t in sorted(data.types.items()) if t is not None) or 'none (built-in layouts)'}",
        f"  modules:    {len(data.modules)}" + (f" ({', '.join(m.image for m in data.modules[:8])}"
                                                 f"{', ...' if len(data.modules) > 8 else ''})" if data.modules else ""),
    ]
    write(sys.stdout, "\n".join(lines) + "\n")
    return 0


COMMANDS = {"analyze": command_analyze, "replay": command_replay, "inspect": command_inspect}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = os.environ.get("LEAKHUNT_DEBUG") == "1"
    try:
        return COMMANDS[args.command](args)
    except UsageError as error:
        stderr_line(f"error: {error}")
        return EXIT_USAGE
    except (SnapshotError, TargetError) as error:
        stderr_line(f"error: {error}")
        return EXIT_INPUT
    except KeyboardInterrupt:
        stderr_line("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_SUCCESS_IF_PIPE_CLOSED
    except Exception as error:  # no traceback reaches a user; LEAKHUNT_DEBUG=1 shows it
        if debug:
            raise
        stderr_line(f"internal error: {type(error).__name__}: {error}. This is a bug in leakhunt: please report it "
                    f"with the input file (LEAKHUNT_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
