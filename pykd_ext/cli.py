"""The ``leakhunt`` command: analyze a dump file, replay or inspect a snapshot (triage: fleet/).

Exit codes and the one-line messages are pykd_ext/console.py's, shared with ``leakhunt triage`` and
``!py leakhunt``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

from . import __version__
from .console import (EXIT_SUCCESS_IF_PIPE_CLOSED, FileKindError, OutputError, UsageError, debugging,
                      exit_code_for, exit_code_for_error, interrupted_line, is_terminal, output_width, pfn_range_argument,
                      reader_stopped_early, silence_stdout, stderr_line, write_report)


def load_command_modules() -> None:
    """Import what the commands need (the analyses, the sources, the renderers, numpy under them).

    Only a command that runs needs them: ``--help``, ``--version`` and a usage error load none of it.
    """
    global Options, name_of, TerminalProgress, render_json, render_text, run_analysis
    global KernelSession, load_symbol_files, open_session, Target, load_snapshot, open_dump, open_source
    from .analyses import Options
    from .bugchecks import name_of
    from .progress import TerminalProgress
    from .render.jsonout import render_json
    from .render.text import render_text
    from .run import run_analysis
    from .session import KernelSession, load_symbol_files, open_session
    from .sources import open_dump, open_source
    from .targets.base import Target
    from .targets.snapshot import load_snapshot


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
        write_report(f"leakhunt {__version__} ({search_engine_name()} search engine)\n", what="the version")
        parser.exit()


class OneLineParser(argparse.ArgumentParser):
    """argparse with leakhunt's errors: one line, ``leakhunt: error: ...`` (raised as UsageError, so the
    command says it like every other error), naming the --help that lists the options."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help lists the options)")


COMMANDS_TEXT = ("leakhunt analyze MEMORY.DMP, leakhunt replay case.snap, leakhunt inspect case.snap or "
                 "leakhunt triage --out DIR DUMPS...")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    inspect_parser.add_argument("--format", choices=("text", "json"), default="text",
                                help="summary format (default: text)")

    from .fleet.command import add_parser as add_triage_parser
    add_triage_parser(commands)
    return parser


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


def _options(args) -> "Options":
    progress = None
    if args.format == "text" and is_terminal(sys.stderr):
        progress = TerminalProgress(sys.stderr)
    return Options(verbose=args.verbose, pfn_range=args.pfn_range, progress=progress)


def _emit(report, args) -> int:
    """Print the report; its exit code. Raises OutputError when stdout cannot take it."""
    output = render_json(report) if args.format == "json" else \
        render_text(report, verbose=args.verbose, width=output_width(sys.stdout))
    write_report(output)
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
    return _run(open_source(args.snapshot), args)


def command_analyze(args) -> int:
    from .outfiles import refuse_unless_replaceable
    from .console import OutputError

    pairs = parse_symbols(args.symbol)
    symbol_path = args.symbol_path if args.symbol_path is not None else os.environ.get("_NT_SYMBOL_PATH")
    if args.record:
        try:  # before the hunt: a path that cannot be written is said at once, not after minutes
            refuse_unless_replaceable(args.record, args.force, "snapshot")
        except OutputError as error:
            raise UsageError(f"--record {error}") from None
    symbol_files, addresses = load_symbol_files(args.symbols)
    addresses.update(pairs)  # --symbol NAME=ADDRESS wins over a file's map

    def make_session(target: "Target") -> "KernelSession":
        return open_session(target, symbol_path or None, symbol_files, addresses)

    return _run(open_dump(args.dump), args, make_session)


def command_inspect(args) -> int:
    data = load_snapshot(args.snapshot)
    bugcheck = data.bugcheck
    summary = {
        "file": args.snapshot,
        "created_by": data.created_by or None,
        "target": {"arch": data.arch, "pointer_size": data.pointer_size, "build": data.build},
        "source": data.description or None,
        "bugcheck": {"code": f"{bugcheck.code:#x}", "name": name_of(bugcheck.code),
                     "parameters": [f"{p:#x}" for p in bugcheck.parameters]},
        "complete": data.complete,
        "pages": len(data.pages),
        "unreadable_pages": len(data.unreadable),
        "searches": len(data.searches),
        "symbols": sorted(data.symbols),
        "missing_symbols": sorted(data.missing_symbols),
        "types": sorted(n for n, t in data.types.items() if t is not None),
        "modules": [m.image for m in data.modules or ()],  # None: the recording walked PsLoadedModuleList
    }
    if args.format == "json":
        write_report(json.dumps(summary, indent=1) + "\n")
        return 0
    page_bytes = len(data.pages) * 4096
    modules = summary["modules"]
    lines = [
        f"{args.snapshot}: leakhunt snapshot ({data.created_by or 'unknown writer'})",
        f"  target:     {data.arch}, pointer size {data.pointer_size}, build {data.build or 'unknown'}",
        f"  source:     {data.description or '-'}",
        f"  bug check:  0x{bugcheck.code:X} {summary['bugcheck']['name']} "
        f"({', '.join(summary['bugcheck']['parameters'])})",
        f"  memory:     {len(data.pages)} page(s), {page_bytes / 1024:.0f} KiB"
        + (" (all of memory: searches run over it)" if data.complete else " (pages read during the recording)"),
        f"  unreadable: {len(data.unreadable)} page(s) recorded as not readable",
        f"  searches:   {len(data.searches)} recorded",
        f"  symbols:    {', '.join(summary['symbols']) or 'none'}"
        + (f"; not found: {', '.join(summary['missing_symbols'])}" if data.missing_symbols else ""),
        f"  types:      {', '.join(summary['types']) or 'none (built-in layouts)'}",
        f"  modules:    {len(modules)}" + (f" ({', '.join(modules[:8])}{', ...' if len(modules) > 8 else ''})"
                                           if modules else ""),
    ]
    write_report("\n".join(lines) + "\n")
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


def main(argv: Optional[List[str]] = None) -> int:
    """The ``leakhunt`` command; returns the exit code (no traceback reaches the user)."""
    try:
        parser = build_parser()
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(argv) if argv else None
        if args is None or not args.command:
            raise UsageError(f"no command given: {COMMANDS_TEXT} (leakhunt --help says more)")
        if args.command != "triage":  # triage takes many files, each looked at by itself
            command_for_the_file(args)
        load_command_modules()
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return interrupted_line()
    except BrokenPipeError:
        quiet = reader_stopped_early()
        silence_stdout()
        if quiet:
            return EXIT_SUCCESS_IF_PIPE_CLOSED
        return exit_code_for_error(OutputError("cannot write the report to standard output: the reader of the "
                                               "output went away (broken pipe)"))
    except Exception as error:  # no traceback reaches a user; LEAKHUNT_DEBUG=1 shows it
        return exit_code_for_error(error, debugging())


if __name__ == "__main__":
    sys.exit(main())
