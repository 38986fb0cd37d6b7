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

from . import __version__

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


def load_command_modules() -> None:
    """Import what the commands need (the analyses, the sources, the renderers, numpy under them).

    Only a command that runs needs them: ``--help``, ``--version`` and a usage error load none of it.
    """
    global Options, name_of, TerminalProgress, render_json, printable, render_text, Report, run_analysis
    global KernelSession, load_symbol_files, open_session, Target, TargetError, SnapshotError, SnapshotTarget
    global load_snapshot
    from .analyses import Options
    from .bugchecks import name_of
    from .progress import TerminalProgress
    from .render.jsonout import render_json
    from .render.text import printable, render_text
    from .report import Report
    from .run import run_analysis
    from .session import KernelSession, load_symbol_files, open_session
    from .targets.base import Target, TargetError
    from .targets.snapshot import SnapshotError, SnapshotTarget, load_snapshot


def search_engine_name() -> str:
    """The engine ``search.preferred_engine`` picks (the compiled one when it was built), found without
    importing the search and numpy."""
    try:
        from . import _wordscan  # noqa: F401
    except ImportError:
        return "numpy"
    return "compiled"


class _VersionAction(argparse.Action):
    """--version, its text made only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(f"leakhunt {__version__} ({search_engine_name()} search engine)\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leakhunt",
        description="Find the driver that leaked locked pages or lock entries in a Windows kernel crash "
                    "(bug checks 0x76, 0xCB, 0xD9, 0x4E, 0x153, 0x162, 0x192).")
    parser.add_argument("--version", action=_VersionAction,
                        help="show the version and the search engine in use, and exit")
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

    from .fleet.command import add_parser as add_triage_parser
    add_triage_parser(commands)
    return parser


def pfn_range_argument(text: str):
    """argparse type for --pfn-range (shared with the WinDbg entry point)."""
    from .targets.base import pfn_range_from_text

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


def exit_code_for(report: "Report") -> int:
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
    from .render.text import printable

    write(sys.stderr, "leakhunt: " + printable(text) + "\n")


def output_width(stream) -> int:
    """Columns of the text report: the terminal's when ``stream`` is one, else DEFAULT_WIDTH."""
    from .render.text import DEFAULT_WIDTH

    try:
        if stream.isatty():
            import shutil

            return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    except (AttributeError, ValueError, OSError):
        pass
    return DEFAULT_WIDTH


def _emit(report: "Report", args) -> int:
    output = render_json(report) if args.format == "json" else \
        render_text(report, verbose=args.verbose, width=output_width(sys.stdout))
    write(sys.stdout, output)
    sys.stdout.flush()
    return exit_code_for(report)


def _run(target: "Target", args, make_session=None) -> int:
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
        f"  bug check:  0x{bugcheck.code:X} {name_of(bugcheck.code)} "
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


def command_triage(args) -> int:
    from .fleet.command import command_triage as triage
    return triage(args)


COMMANDS = {"analyze": command_analyze, "replay": command_replay, "inspect": command_inspect,
            "triage": command_triage}
# What the analyze command adds to replay's options, with its defaults.
ANALYZE_ONLY = {"record": None, "force": False, "symbol": [], "symbols": [], "symbol_path": None}


def command_for_the_file(args) -> None:
    """Send a kernel dump given to ``replay`` to ``analyze`` and a snapshot given to ``analyze`` to
    ``replay`` (with a one-line note), and refuse a file that is neither in leakhunt's words."""
    from . import sources

    path = args.dump if args.command == "analyze" else args.snapshot
    kind = sources.kind_of_file(path)
    if kind is None:
        return  # missing or unreadable: the command says which
    if kind == sources.USER_MINIDUMP:
        raise FileKindError(f"{path} is a user-mode minidump (MDMP), not a kernel crash dump: leakhunt reads "
                            f"kernel crash dumps (MEMORY.DMP) and leakhunt snapshots")
    if args.command == "analyze":
        if kind == sources.SNAPSHOT:
            used = [f"--{name.replace('_', '-')}" for name, default in ANALYZE_ONLY.items()
                    if getattr(args, name) != default]
            if used:
                raise UsageError(f"{path} is a leakhunt snapshot, not a dump: {', '.join(used)} apply to dump "
                                 f"files; replay it with `leakhunt replay {path}`")
            stderr_line(f"note: {path} is a leakhunt snapshot: replaying it (leakhunt replay)")
            args.command, args.snapshot = "replay", path
        return
    if kind == sources.KERNEL_DUMP:
        if args.command == "inspect":
            raise FileKindError(f"{path} is a kernel crash dump, not a snapshot: `leakhunt analyze {path}` "
                                f"analyzes it (--record FILE makes a snapshot of it)")
        stderr_line(f"note: {path} is a kernel crash dump, not a snapshot: analyzing it (leakhunt analyze)")
        args.command, args.dump = "analyze", path
        for name, default in ANALYZE_ONLY.items():
            setattr(args, name, default)
    elif kind == sources.OTHER:
        raise FileKindError(f"{path} is neither a leakhunt snapshot (a ZIP archive) nor a Windows kernel crash "
                            f"dump (PAGEDU64 or PAGEDUMP), or it is truncated")


class FileKindError(Exception):
    """A file of the wrong kind for every command (exit 3)."""


def main(argv: Optional[List[str]] = None) -> int:
    debug = os.environ.get("LEAKHUNT_DEBUG") == "1"
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(argv) if argv else None
        if args is None or not args.command:
            raise UsageError("no command given: leakhunt analyze MEMORY.DMP, leakhunt replay case.snap or "
                             "leakhunt inspect case.snap (leakhunt --help says more)")
        if args.command != "triage":  # triage takes many files, each looked at by itself
            command_for_the_file(args)
        load_command_modules()
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        stderr_line("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_SUCCESS_IF_PIPE_CLOSED
    except UsageError as error:
        stderr_line(f"error: {error}")
        return EXIT_USAGE
    except FileKindError as error:
        stderr_line(f"error: {error}")
        return EXIT_INPUT
    except Exception as error:  # no traceback reaches a user; LEAKHUNT_DEBUG=1 shows it
        return exit_code_for_error(error, debug)


def exit_code_for_error(error: Exception, debug: bool) -> int:
    """The exit code (and the one line) for an error a command raised."""
    from .analyses.common import PfnRangeOutsideSource
    from .targets.base import TargetError
    from .targets.snapshot import SnapshotError

    if isinstance(error, PfnRangeOutsideSource):
        stderr_line(f"error: {error}")
        return EXIT_USAGE
    if isinstance(error, (SnapshotError, TargetError)):
        stderr_line(f"error: {error}")
        return EXIT_INPUT
    if debug:
        raise error
    stderr_line(f"internal error: {type(error).__name__}: {error}. This is a bug in leakhunt: please report it "
                f"with the input file (LEAKHUNT_DEBUG=1 shows the traceback)")
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
