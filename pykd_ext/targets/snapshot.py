"""Recorded snapshots: a file that holds everything an analysis read from a target.

Format (version 1) — a ZIP archive with two members:

``snapshot.json``
    UTF-8 JSON, the manifest: ``format`` ("leakhunt-snapshot"), ``version`` (1), ``created_by``,
    ``target`` {``arch``, ``pointer_size``, ``build``, ``description``, ``max_pfn``},
    ``bugcheck`` {``code``, ``parameters``}, ``symbols`` {name: address}, ``missing_symbols``
    [names looked up and not found], ``types`` {type name: {``size``, ``fields``: {name:
    [offset, size]}} or null when the source had no type information}, ``modules`` [{``name``,
    ``image``, ``base``, ``size``}], ``complete`` (true when ``pages`` is all of memory and may be
    searched; false for a recording, which replays only the searches it recorded), ``pages``
    [{``va``, ``pa``}] in the order of their bytes in ``pages.bin``, ``unreadable`` [virtual page
    addresses that could not be read], ``searches`` [{``values``, ``pfn_range``, ``hits``:
    [{``value``, ``va``, ``pa``}]}], ``failed_searches`` (only when a recorded search was not
    possible) [{``values``, ``pfn_range``, ``reason``}], ``header_searches`` (only when a search also
    collected object headers: ``search_pointers_and_headers``) [{``values``, ``pfn_range``, ``headers``
    {``type``, ``sizes``}, ``hits``, ``header_hits``: [{``va``, ``pa``, ``next``}]} or, when it was
    not possible, ``reason`` instead of the hits]. Numbers that are addresses are hex strings
    ("0xfffff803..."). Written only when the source has them: a module's ``timestamp``,
    ``partial_pages`` [{``va``, ``ranges``: [[start, end], ...]}] (pages a small dump held only in
    part: the offsets in the page that were readable), ``crash_facts`` {``thread``, ``process``,
    ``stack`` [base, size], ``broken_driver``, ``unloaded`` [{``image``, ``start``, ``end``,
    ``truncated``}], ``registers`` [[name, value]], ``from_triage`` (false only for a kernel dump, whose
    header's context record is all it holds)} (a small dump's triage facts, or a dump header's context),
    ``target``'s ``crash_time`` (ISO 8601 UTC), ``code_names`` {address: {``module``, ``function``,
    ``offset``, ``file``, ``line``, ``kind``}} (the names the modules' symbol files gave the addresses the
    report named, so that a replay names them the same without the files), ``module_notes`` [lines]
    (what finding those files said) and ``images`` [{``name``, ``base``, ``size``,
    ``exception_directory`` [rva, size], ``reads`` [{``rva``, ``bytes`` (hex)}]}] (what the unwinder
    read of image files from the symbol path, so that a replay unwinds the same stack).

``pages.bin``
    The recorded memory: 4 KiB pages back to back, page *i* described by ``pages[i]``.

``unzip -p case.snap snapshot.json`` shows the manifest; ``leakhunt inspect case.snap`` summarises it.
"""
from __future__ import annotations

import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .. import __version__
from ..kernel.modules import MAX_IMAGE_SIZE
from ..outfiles import write_atomically
from ..search import ValueSet
from ..sources import unopenable_reason
from ..typeinfo import FieldInfo, TypeInfo
from .base import (PAGE_SIZE, BugCheck, CrashFacts, HeaderHit, MemoryReadError, Module, ObjectHeaders, PfnRange,
                   ProgressCallback, RecordedImage, SearchHit, SearchUnavailable, SymbolicAddress, SymbolNotFound,
                   Target, TargetError,
                   UnloadedModule, read_from_pages)

FORMAT_NAME = "leakhunt-snapshot"
FORMAT_VERSION = 1
MANIFEST_NAME = "snapshot.json"
PAGES_NAME = "pages.bin"
# Fixed member timestamp so that recording the same session twice gives identical files.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Refuse manifests or page stores beyond these sizes rather than exhaust memory on a hostile file.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_PAGES_BYTES = 8 * 1024 * 1024 * 1024
# Type layouts beyond this size (structure size, field offset or width) are corrupt.
MAX_TYPE_BYTES = 1 << 20
# The pointer size each architecture implies.
ARCH_POINTER_SIZES = {"x64": 8, "x86": 4, "arm64": 8}


CRASH_TIME_FORM = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class SnapshotError(TargetError):
    """The snapshot file is missing, unreadable, truncated, corrupt or of an unknown version."""


SearchKey = Tuple[Tuple[int, ...], Optional[Tuple[int, int]]]
# A search that also collected object headers: the search's key and (header type, sizes).
HeaderSearchKey = Tuple[SearchKey, Tuple[int, Tuple[int, ...]]]
# What such a search found, or why it was not possible.
HeaderSearchResult = Union[Tuple[Dict[int, List[SearchHit]], List[HeaderHit]], str]


@dataclass
class SnapshotData:
    """Everything a snapshot holds, in memory."""

    arch: str
    pointer_size: int
    bugcheck: BugCheck
    build: Optional[int] = None
    description: str = ""
    max_pfn: Optional[int] = None
    crash_time: Optional[str] = None  # Target.crash_time
    symbols: Dict[str, int] = field(default_factory=dict)
    missing_symbols: Set[str] = field(default_factory=set)
    types: Dict[str, Optional[TypeInfo]] = field(default_factory=dict)
    # Where each symbol came from, when not from the recorded source itself (a PDB, an ISF file...).
    symbol_sources: Dict[str, str] = field(default_factory=dict)
    # The recorded source's own module list; None when it had none and the module list was walked
    # from nt!PsLoadedModuleList in the recorded pages (a replay walks it again).
    modules: Optional[List[Module]] = field(default_factory=list)
    pages: Dict[int, bytes] = field(default_factory=dict)  # virtual page address -> 4 KiB
    physical: Dict[int, int] = field(default_factory=dict)  # virtual page -> physical page
    unreadable: Set[int] = field(default_factory=set)
    complete: bool = False
    searches: Dict[SearchKey, Dict[int, List[SearchHit]]] = field(default_factory=dict)
    failed_searches: Dict[SearchKey, str] = field(default_factory=dict)  # search -> why it was not possible
    header_searches: Dict[HeaderSearchKey, HeaderSearchResult] = field(default_factory=dict)
    created_by: str = ""
    # What the recorded source could not do (Target.limitations) and why no hunt was possible at all.
    limitations: List[str] = field(default_factory=list)
    hunt_unavailable: str = ""
    # What finding the kernel's symbols said when the session was recorded (replayed as said).
    symbol_notes: List[str] = field(default_factory=list)
    # Pages the source held only in part (a small dump): page -> readable (start, end) offsets in it.
    partial: Dict[int, List[Tuple[int, int]]] = field(default_factory=dict)
    # What the source recorded about the crash besides memory (Target.crash_facts).
    crash_facts: Optional[CrashFacts] = None
    # Names the modules' symbol files gave (address -> name), and what finding those files said.
    code_names: Dict[int, SymbolicAddress] = field(default_factory=dict)
    module_notes: Optional[List[str]] = None
    # What the unwinder read of image files (not memory), by (module name, base).
    images: Dict[Tuple[str, int], RecordedImage] = field(default_factory=dict)


def search_key(values: Iterable[int], pfn_range: Optional[PfnRange]) -> SearchKey:
    return (tuple(sorted(set(values))), (pfn_range.first, pfn_range.last) if pfn_range else None)


def header_search_key(values: Iterable[int], headers: ObjectHeaders, pfn_range: Optional[PfnRange]) -> HeaderSearchKey:
    return search_key(values, pfn_range), (headers.type, tuple(sorted(set(headers.sizes))))


# ---- writing -----------------------------------------------------------------------------------

def _hex(value: Optional[int]) -> Optional[str]:
    return None if value is None else f"{value:#x}"


def _manifest(data: SnapshotData) -> dict:
    page_order = sorted(data.pages)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created_by": data.created_by or f"leakhunt {__version__}",
        "target": {
            "arch": data.arch,
            "pointer_size": data.pointer_size,
            "build": data.build,
            "description": data.description,
            "max_pfn": _hex(data.max_pfn),
            **({"crash_time": data.crash_time} if data.crash_time else {}),
        },
        "bugcheck": {"code": _hex(data.bugcheck.code), "parameters": [_hex(p) for p in data.bugcheck.parameters]},
        "symbols": {name: _hex(address) for name, address in sorted(data.symbols.items())},
        "missing_symbols": sorted(data.missing_symbols),
        "types": {name: _type_entry(info) for name, info in sorted(data.types.items())},
        "modules": None if data.modules is None else [_module_entry(m) for m in data.modules],
        "complete": data.complete,
        "pages": [{"va": _hex(va), "pa": _hex(data.physical.get(va))} for va in page_order],
        "unreadable": [_hex(va) for va in sorted(data.unreadable)],
        "searches": [
            {
                "values": [_hex(v) for v in values],
                "pfn_range": None if pfn is None else [_hex(pfn[0]), _hex(pfn[1])],
                "hits": [{"value": _hex(h.value), "va": _hex(h.virtual), "pa": _hex(h.physical)}
                         for value in values for h in hits.get(value, [])],
            }
            for (values, pfn), hits in sorted(data.searches.items(), key=lambda item: (item[0][0], item[0][1] or ()))
        ],
    }
    if data.failed_searches:
        manifest["failed_searches"] = [
            {"values": [_hex(v) for v in values], "pfn_range": None if pfn is None else [_hex(pfn[0]), _hex(pfn[1])],
             "reason": reason}
            for (values, pfn), reason in sorted(data.failed_searches.items(), key=lambda item: (item[0][0], item[0][1] or ()))
        ]
    # Keys of what not every source has: written only when there is something to say, so that a
    # recording of a source without them is the same file as before they existed.
    if data.header_searches:
        manifest["header_searches"] = [_header_search_entry(key, result) for key, result in
                                       sorted(data.header_searches.items(), key=lambda item: (
                                           item[0][0][0], item[0][0][1] or (), item[0][1][0], item[0][1][1]))]
    if data.symbol_sources:
        manifest["symbol_sources"] = dict(sorted(data.symbol_sources.items()))
    if data.symbol_notes:
        manifest["symbol_notes"] = list(data.symbol_notes)
    if data.limitations:
        manifest["limitations"] = list(data.limitations)
    if data.hunt_unavailable:
        manifest["hunt_unavailable"] = data.hunt_unavailable
    if data.partial:
        manifest["partial_pages"] = [{"va": _hex(va), "ranges": [list(r) for r in ranges]}
                                     for va, ranges in sorted(data.partial.items())]
    if data.crash_facts is not None:
        manifest["crash_facts"] = _crash_facts_entry(data.crash_facts)
    if data.code_names:
        manifest["code_names"] = {_hex(address): _name_entry(named) for address, named in sorted(data.code_names.items())}
    if data.module_notes is not None:
        manifest["module_notes"] = list(data.module_notes)
    if data.images:
        manifest["images"] = [{"name": image.name, "base": _hex(image.base), "size": _hex(image.size),
                               "exception_directory": [_hex(v) for v in image.exception_directory],
                               "reads": [{"rva": _hex(rva), "bytes": data_read.hex()}
                                         for rva, data_read in sorted(image.reads.items())]}
                              for _, image in sorted(data.images.items())]
    return manifest


def _load_images(entries) -> Dict[Tuple[str, int], RecordedImage]:
    images: Dict[Tuple[str, int], RecordedImage] = {}
    for entry in _expect(entries, list, "images"):
        _expect(entry, dict, "image")
        directory = _expect(entry.get("exception_directory"), list, "image exception directory")
        if len(directory) != 2:
            raise SnapshotError("corrupt snapshot: an image's exception directory is not [rva, size]")
        image = RecordedImage(_text(entry.get("name"), "image name"), _number(entry.get("base"), "image base"),
                              _number(entry.get("size"), "image size", MAX_IMAGE_SIZE),
                              (_number(directory[0], "exception directory", MAX_IMAGE_SIZE),
                               _number(directory[1], "exception directory size", MAX_IMAGE_SIZE)))
        for read in _expect(entry.get("reads", []), list, "image reads"):
            _expect(read, dict, "image read")
            try:
                content = bytes.fromhex(_text(read.get("bytes"), "image bytes"))
            except ValueError:
                raise SnapshotError("corrupt snapshot: image bytes are not hex") from None
            image.reads[_number(read.get("rva"), "image read RVA", MAX_IMAGE_SIZE)] = content
        images[(image.name, image.base)] = image
    return images


def _name_entry(named: SymbolicAddress) -> dict:
    return {"module": named.module, "function": named.function, "offset": _hex(named.offset), "file": named.file,
            "line": named.line, "kind": named.kind}


def _load_code_names(entries) -> Dict[int, SymbolicAddress]:
    names: Dict[int, SymbolicAddress] = {}
    for address, entry in _expect(entries, dict, "code_names").items():
        _expect(entry, dict, "code name")
        line = entry.get("line")
        if line is not None and (type(line) is not int or line < 0):
            raise SnapshotError("corrupt snapshot: a code name's line is not a number")
        where = _number(address, "code name address")
        names[where] = SymbolicAddress(where, _text(entry.get("module", ""), "code name module"),
                                       _text(entry.get("function", ""), "code name function"),
                                       _number(entry.get("offset", "0x0"), "code name offset"),
                                       _text(entry.get("file", ""), "code name file"), line,
                                       _text(entry.get("kind", ""), "code name kind"))
    return names


def _header_search_entry(key: HeaderSearchKey, result: HeaderSearchResult) -> dict:
    (values, pfn), (header_type, sizes) = key
    entry = {"values": [_hex(v) for v in values], "pfn_range": None if pfn is None else [_hex(pfn[0]), _hex(pfn[1])],
             "headers": {"type": header_type, "sizes": list(sizes)}}
    if isinstance(result, str):
        entry["reason"] = result
        return entry
    hits, header_hits = result
    entry["hits"] = [{"value": _hex(h.value), "va": _hex(h.virtual), "pa": _hex(h.physical)}
                     for value in values for h in hits.get(value, [])]
    entry["header_hits"] = [{"va": _hex(h.virtual), "pa": _hex(h.physical), "next": _hex(h.next_word)}
                            for h in header_hits]
    return entry


def _load_header_search(entry, data: "SnapshotData") -> None:
    values, pfn_key = _recorded_search_key(entry)
    headers = _expect(entry.get("headers"), dict, "searched object headers")
    header_type = _number(headers.get("type"), "object header type", 1 << 16)
    sizes = tuple(sorted({_number(size, "object header size", 1 << 16)
                          for size in _expect(headers.get("sizes"), list, "object header sizes")}))
    key = ((values, pfn_key), (header_type, sizes))
    if "reason" in entry:
        data.header_searches[key] = _text(entry["reason"], "reason")
        return
    data.header_searches[key] = (_recorded_hits(entry, values),
                                 [HeaderHit(_optional_number(hit.get("va"), "header address"),
                                            _optional_number(hit.get("pa"), "header physical address"),
                                            _number(hit.get("next"), "word after a header"))
                                  for hit in (_expect(item, dict, "header hit") for item in
                                              _expect(entry.get("header_hits", []), list, "header hits"))])


def _crash_facts_entry(facts: CrashFacts) -> dict:
    return {"thread": _hex(facts.thread), "process": _hex(facts.process),
            "stack": None if facts.stack is None else [_hex(facts.stack[0]), facts.stack[1]],
            "broken_driver": facts.broken_driver,
            "unloaded": [{"image": u.image, "start": _hex(u.start), "end": _hex(u.end), "truncated": u.truncated}
                         for u in facts.unloaded],
            "registers": [[name, _hex(value)] for name, value in facts.registers],
            **({} if facts.from_triage else {"from_triage": False})}


def _load_crash_facts(entry) -> CrashFacts:
    _expect(entry, dict, "crash_facts")
    stack = entry.get("stack")
    if stack is not None and (not isinstance(stack, list) or len(stack) != 2):
        raise SnapshotError("corrupt snapshot: malformed crash_facts stack")
    broken = entry.get("broken_driver")
    unloaded = []
    for item in _expect(entry.get("unloaded", []), list, "unloaded drivers"):
        _expect(item, dict, "unloaded driver")
        unloaded.append(UnloadedModule(_text(item.get("image", ""), "unloaded driver name"),
                                       _number(item.get("start"), "unloaded driver start"),
                                       _number(item.get("end"), "unloaded driver end"), bool(item.get("truncated"))))
    registers = []
    for pair in _expect(entry.get("registers", []), list, "registers"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise SnapshotError("corrupt snapshot: malformed register")
        registers.append((_text(pair[0], "register name"), _number(pair[1], "register value")))
    return CrashFacts(unloaded=tuple(unloaded), broken_driver=None if broken is None else _text(broken, "broken driver"),
                      thread=_optional_number(entry.get("thread"), "crash thread"),
                      process=_optional_number(entry.get("process"), "crash process"),
                      stack=None if stack is None else (_number(stack[0], "stack base"),
                                                        _number(stack[1], "stack size", MAX_TYPE_BYTES)),
                      registers=tuple(registers), from_triage=entry.get("from_triage", True) is not False)


def _check_partial(data: SnapshotData, address: int, size: int, reason: str) -> None:
    """Refuse a read that touches bytes a partly held page did not have when it was recorded."""
    page = address & ~(PAGE_SIZE - 1)
    while page < address + size:
        ranges = data.partial.get(page)
        if ranges is not None:
            low, high = max(address, page) - page, min(address + size, page + PAGE_SIZE) - page
            if not any(start <= low and high <= end for start, end in ranges):
                raise MemoryReadError(address, size, reason=reason)
        page += PAGE_SIZE


def _type_entry(info: Optional[TypeInfo]) -> Optional[dict]:
    if info is None:
        return None
    entry = {"size": info.size, "fields": {f: [fi.offset, fi.size] for f, fi in sorted(info.fields.items())}}
    if info.source:
        entry["source"] = info.source
    return entry


def _module_entry(module: Module) -> dict:
    entry = {"name": module.name, "image": module.image, "base": _hex(module.base), "size": _hex(module.size)}
    if module.timestamp is not None:
        entry["timestamp"] = _hex(module.timestamp)
    return entry


def save_snapshot(data: SnapshotData, path: str, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: a half-written recording never replaces anything, and
    nothing but a regular file (with ``overwrite``) is ever replaced (pykd_ext/outfiles.py).

    Raises OutputError if ``path`` exists and ``overwrite`` is false, is not a regular file, or if the
    snapshot cannot be written.
    """
    manifest = json.dumps(_manifest(data), indent=1, sort_keys=False).encode("utf-8")

    def produce(raw) -> None:
        with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(zipfile.ZipInfo(MANIFEST_NAME, _ZIP_DATE), manifest, zipfile.ZIP_DEFLATED)
            info = zipfile.ZipInfo(PAGES_NAME, _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as pages:
                for va in sorted(data.pages):
                    pages.write(data.pages[va])

    write_atomically(path, produce, overwrite, what="snapshot")


# ---- reading -----------------------------------------------------------------------------------

def _number(value, what: str, limit: int = 1 << 64) -> int:
    if isinstance(value, bool):
        raise SnapshotError(f"corrupt snapshot: {what} is not a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value, 0)
        except ValueError:
            raise SnapshotError(f"corrupt snapshot: {what} {value[:40]!r} is not a number") from None
    else:
        raise SnapshotError(f"corrupt snapshot: {what} is not a number")
    if number < 0 or number >= limit:
        raise SnapshotError(f"corrupt snapshot: {what} {number:#x} is out of range")
    return number


def _optional_number(value, what: str) -> Optional[int]:
    return None if value is None else _number(value, what)


def _optional_crash_time(value) -> Optional[str]:
    """``target.crash_time``: absent, or ISO 8601 UTC as Target.crash_time writes it."""
    if value is None:
        return None
    if not isinstance(value, str) or not CRASH_TIME_FORM.fullmatch(value):
        raise SnapshotError("corrupt snapshot: crash_time is not a time like 2021-02-21T01:38:22Z")
    return value


def _text(value, what: str) -> str:
    return _expect(value, str, what)


def _expect(value, kind, what: str):
    if not isinstance(value, kind):
        raise SnapshotError(f"corrupt snapshot: {what} has the wrong type")
    return value


def load_snapshot(path: str) -> SnapshotData:
    """Read a snapshot file (opened read-only) and check every part of it."""
    reason = unopenable_reason(path, "snapshot file")
    if reason:
        raise SnapshotError(f"{path} {reason}")
    try:
        with open(path, "rb") as raw:
            with zipfile.ZipFile(raw) as archive:
                names = set(archive.namelist())
                if MANIFEST_NAME not in names:
                    raise SnapshotError(f"{path} is not a leakhunt snapshot (no {MANIFEST_NAME} inside)")
                manifest_info = archive.getinfo(MANIFEST_NAME)
                if manifest_info.file_size > MAX_MANIFEST_BYTES:
                    raise SnapshotError(f"{path}: the manifest is implausibly large")
                manifest_bytes = archive.read(MANIFEST_NAME)
                manifest = _parse_manifest(manifest_bytes, path)
                page_count = len(manifest["pages"])
                pages_bytes = b""
                if page_count:
                    if PAGES_NAME not in names:
                        raise SnapshotError(f"{path}: the snapshot lists pages but has no {PAGES_NAME}")
                    declared = archive.getinfo(PAGES_NAME).file_size
                    if declared > MAX_PAGES_BYTES:
                        raise SnapshotError(f"{path}: the page store is implausibly large")
                    if declared != page_count * PAGE_SIZE:
                        # Checked before inflating: a hostile file can declare gigabytes in a few kilobytes.
                        raise SnapshotError(f"{path}: the page store declares {declared} bytes but the manifest "
                                            f"lists {page_count} pages (truncated or corrupt snapshot)")
                    pages_bytes = archive.read(PAGES_NAME)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such file") from None
    except PermissionError:
        raise SnapshotError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise SnapshotError(f"{path} is a directory, not a snapshot file") from None
    except zipfile.BadZipFile:  # zipfile's own words ("File is not a zip file") would not say what to do
        raise SnapshotError(f"{path} is not a leakhunt snapshot or is truncated (its ZIP structure is "
                            f"unreadable)") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError, zlib.error) as error:
        raise SnapshotError(f"{path} is corrupt ({error})") from None
    except RuntimeError as error:  # zipfile's "File ... is encrypted, password required for extraction"
        raise SnapshotError(f"{path} is corrupt or not a leakhunt snapshot ({error})") from None
    except OSError as error:
        raise SnapshotError(f"cannot read {path}: {error.strerror or error}") from None
    return _build(manifest, pages_bytes, path)


def _parse_manifest(raw: bytes, path: str) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SnapshotError(f"{path}: the manifest is not valid JSON (corrupt snapshot)") from None
    except RecursionError:
        raise SnapshotError(f"{path}: the manifest is nested too deeply (corrupt snapshot)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise SnapshotError(f"{path} is not a leakhunt snapshot (format marker missing)")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SnapshotError(f"{path}: the snapshot has no valid format version")
    if version > FORMAT_VERSION:
        raise SnapshotError(f"{path} was written in snapshot format version {version}; this leakhunt reads "
                            f"version {FORMAT_VERSION} and older: upgrade leakhunt")
    if version < 1:
        raise SnapshotError(f"{path}: unknown snapshot format version {version}")
    _expect(manifest.setdefault("pages", []), list, "pages")
    return manifest


def _build(manifest: dict, pages_bytes: bytes, path: str) -> SnapshotData:
    target = _expect(manifest.get("target"), dict, "target")
    pointer_size = target.get("pointer_size")
    arch = target.get("arch")
    if not isinstance(arch, str) or arch not in ARCH_POINTER_SIZES:
        raise SnapshotError(f"corrupt snapshot: unknown architecture {arch!r}")
    if type(pointer_size) is not int or pointer_size != ARCH_POINTER_SIZES[arch]:
        raise SnapshotError(f"corrupt snapshot: pointer size {pointer_size!r} does not fit architecture {arch} "
                            f"({ARCH_POINTER_SIZES[arch]})")
    bugcheck = _expect(manifest.get("bugcheck"), dict, "bugcheck")
    parameters = _expect(bugcheck.get("parameters"), list, "bugcheck parameters")
    if len(parameters) != 4:
        raise SnapshotError("corrupt snapshot: the bug check needs 4 parameters")
    build = target.get("build")
    if build is not None and (not isinstance(build, int) or isinstance(build, bool) or build < 0):
        raise SnapshotError("corrupt snapshot: build is not a number")
    data = SnapshotData(
        arch=arch,
        pointer_size=pointer_size,
        bugcheck=BugCheck(_number(bugcheck.get("code"), "bug check code", 1 << 32),
                          tuple(_number(p, "bug check parameter", 1 << (8 * pointer_size)) for p in parameters)),
        build=build,
        description=str(target.get("description") or ""),
        max_pfn=_optional_number(target.get("max_pfn"), "max_pfn"),
        crash_time=_optional_crash_time(target.get("crash_time")),
        complete=bool(manifest.get("complete", False)),
        created_by=str(manifest.get("created_by") or ""),
    )
    for name, address in _expect(manifest.get("symbols", {}), dict, "symbols").items():
        data.symbols[str(name)] = _number(address, f"symbol {name}")
    data.missing_symbols = {str(n) for n in _expect(manifest.get("missing_symbols", []), list, "missing_symbols")}
    for name, info in _expect(manifest.get("types", {}), dict, "types").items():
        if info is None:
            data.types[str(name)] = None
            continue
        _expect(info, dict, f"type {name}")
        fields = {}
        for field_name, pair in _expect(info.get("fields", {}), dict, f"type {name} fields").items():
            if not isinstance(pair, list) or len(pair) != 2:
                raise SnapshotError(f"corrupt snapshot: field {name}.{field_name} is malformed")
            fields[str(field_name)] = FieldInfo(_number(pair[0], "field offset", MAX_TYPE_BYTES),
                                                _number(pair[1], "field size", MAX_TYPE_BYTES))
        data.types[str(name)] = TypeInfo(str(name), _number(info.get("size", 0), f"size of {name}", MAX_TYPE_BYTES),
                                         fields, _text(info.get("source", ""), f"source of type {name}"))
    modules = manifest.get("modules", [])
    if modules is None:
        data.modules = None
    for entry in _expect(modules, list, "modules") if modules is not None else ():
        _expect(entry, dict, "module")
        data.modules.append(Module(str(entry.get("name", "")), str(entry.get("image", "")),
                                   _number(entry.get("base"), "module base"), _number(entry.get("size"), "module size"),
                                   _optional_number(entry.get("timestamp"), "module timestamp")))
    for name, label in _expect(manifest.get("symbol_sources", {}), dict, "symbol_sources").items():
        data.symbol_sources[str(name)] = _text(label, f"source of symbol {name}")
    data.symbol_notes = [_text(n, "symbol note") for n in _expect(manifest.get("symbol_notes", []), list, "symbol_notes")]
    data.limitations = [_text(n, "limitation") for n in _expect(manifest.get("limitations", []), list, "limitations")]
    data.hunt_unavailable = _text(manifest.get("hunt_unavailable", ""), "hunt_unavailable")
    if manifest.get("crash_facts") is not None:
        data.crash_facts = _load_crash_facts(manifest["crash_facts"])
    data.code_names = _load_code_names(manifest.get("code_names", {}))
    data.images = _load_images(manifest.get("images", []))
    if manifest.get("module_notes") is not None:
        data.module_notes = [_text(n, "module note") for n in _expect(manifest["module_notes"], list, "module_notes")]
    for entry in _expect(manifest.get("partial_pages", []), list, "partial_pages"):
        _expect(entry, dict, "partial page")
        ranges = []
        for pair in _expect(entry.get("ranges"), list, "partial page ranges"):
            if not isinstance(pair, list) or len(pair) != 2:
                raise SnapshotError("corrupt snapshot: malformed partial page range")
            ranges.append((_number(pair[0], "range start", PAGE_SIZE), _number(pair[1], "range end", PAGE_SIZE + 1)))
        data.partial[_number(entry.get("va"), "partial page address")] = ranges
    pages = manifest["pages"]
    if len(pages_bytes) != len(pages) * PAGE_SIZE:
        raise SnapshotError(f"{path}: the page store holds {len(pages_bytes)} bytes but the manifest lists "
                            f"{len(pages)} pages (truncated or corrupt snapshot)")
    view = memoryview(pages_bytes)
    for index, entry in enumerate(pages):
        _expect(entry, dict, "page")
        va = _number(entry.get("va"), "page address")
        if va % PAGE_SIZE:
            raise SnapshotError(f"corrupt snapshot: page address {va:#x} is not page aligned")
        if va in data.pages:
            raise SnapshotError(f"corrupt snapshot: page {va:#x} is listed twice")
        data.pages[va] = bytes(view[index * PAGE_SIZE:(index + 1) * PAGE_SIZE])
        pa = _optional_number(entry.get("pa"), "physical page address")
        if pa is not None:
            data.physical[va] = pa
    data.unreadable = {_number(v, "unreadable page") for v in _expect(manifest.get("unreadable", []), list, "unreadable")}
    for entry in _expect(manifest.get("searches", []), list, "searches"):
        values, pfn_key = _recorded_search_key(entry)
        data.searches[(values, pfn_key)] = _recorded_hits(entry, values)
    for entry in _expect(manifest.get("failed_searches", []), list, "failed_searches"):
        data.failed_searches[_recorded_search_key(entry)] = str(entry.get("reason") or "the search was not possible")
    for entry in _expect(manifest.get("header_searches", []), list, "header_searches"):
        _load_header_search(entry, data)
    return data


def _recorded_hits(entry: dict, values: Tuple[int, ...]) -> Dict[int, List[SearchHit]]:
    hits: Dict[int, List[SearchHit]] = {v: [] for v in values}
    for hit in _expect(entry.get("hits", []), list, "hits"):
        _expect(hit, dict, "hit")
        value = _number(hit.get("value"), "hit value")
        if value not in hits:
            raise SnapshotError(f"corrupt snapshot: a hit for {value:#x} that was not searched for")
        hits[value].append(SearchHit(value, _optional_number(hit.get("va"), "hit address"),
                                     _optional_number(hit.get("pa"), "hit physical address")))
    return hits


def _recorded_search_key(entry) -> SearchKey:
    _expect(entry, dict, "search")
    values = tuple(sorted({_number(v, "searched value") for v in _expect(entry.get("values"), list, "values")}))
    pfn = entry.get("pfn_range")
    pfn_key = None
    if pfn is not None:
        if not isinstance(pfn, list) or len(pfn) != 2:
            raise SnapshotError("corrupt snapshot: malformed pfn_range")
        pfn_key = (_number(pfn[0], "pfn"), _number(pfn[1], "pfn"))
    return values, pfn_key


# ---- the replay target -------------------------------------------------------------------------

class SnapshotTarget(Target):
    """Replays a snapshot: reads come from its pages, searches from its recordings or its pages."""

    def __init__(self, data: SnapshotData):
        self.data = data
        self.arch = data.arch
        self.pointer_size = data.pointer_size
        self.build = data.build
        self.max_pfn = data.max_pfn
        self.crash_time = data.crash_time
        # The recorded description, unchanged: a replay's JSON is byte-identical to the recorded session's.
        self.description = data.description or "recorded snapshot"
        self.has_type_info = any(info is not None for info in data.types.values())
        self.hunt_unavailable = data.hunt_unavailable

    @property
    def finds_object_headers(self) -> bool:
        """All of memory can be searched for anything; a recording replays the header searches it made."""
        return self.data.complete or bool(self.data.header_searches)

    @classmethod
    def open(cls, path: str) -> "SnapshotTarget":
        return cls(load_snapshot(path))

    def bugcheck(self) -> BugCheck:
        return self.data.bugcheck

    def read(self, address: int, size: int) -> bytes:
        content = read_from_pages(address, size, self.data.pages.get, "not in the snapshot")
        _check_partial(self.data, address, size, "not in the snapshot")
        return content

    def crash_facts(self) -> Optional[CrashFacts]:
        return self.data.crash_facts

    def symbol(self, name: str) -> int:
        try:
            return self.data.symbols[name]
        except KeyError:
            raise SymbolNotFound(name, "not in the snapshot") from None

    def symbol_source(self, name: str) -> str:
        return self.data.symbol_sources.get(name, "recording")

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        return self.data.types.get(name)

    def modules(self) -> Optional[List[Module]]:
        return None if self.data.modules is None else list(self.data.modules)

    def limitations(self) -> List[str]:
        return list(self.data.limitations)

    def recorded_symbol_notes(self) -> List[str]:
        return list(self.data.symbol_notes)

    def name_address(self, module: Optional[Module], address: int) -> Optional[SymbolicAddress]:
        return self.data.code_names.get(address)

    def recorded_module_notes(self) -> Optional[List[str]]:
        return None if self.data.module_notes is None else list(self.data.module_notes)

    def recorded_image(self, module: Module) -> Optional[RecordedImage]:
        return self.data.images.get((module.name, module.base))

    def search_pointers(self, values: Iterable[int], pfn_range: Optional[PfnRange] = None,
                        progress: Optional[ProgressCallback] = None) -> Dict[int, List[SearchHit]]:
        key = search_key(values, pfn_range)
        recorded = self.data.searches.get(key)
        if recorded is not None:
            return {v: list(recorded.get(v, [])) for v in key[0]}
        if key in self.data.failed_searches:
            raise SearchUnavailable(self.data.failed_searches[key])
        if not self.data.complete:
            raise SearchUnavailable("this snapshot is a recording and did not record a search for these values")
        return self._scan(key[0], None, pfn_range, progress)[0]

    def search_pointers_and_headers(self, values: Iterable[int], headers: ObjectHeaders,
                                    pfn_range: Optional[PfnRange] = None, progress: Optional[ProgressCallback] = None
                                    ) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        key = header_search_key(values, headers, pfn_range)
        recorded = self.data.header_searches.get(key)
        if isinstance(recorded, str):
            raise SearchUnavailable(recorded)
        if recorded is not None:
            hits, header_hits = recorded
            return {v: list(hits.get(v, [])) for v in key[0][0]}, list(header_hits)
        if not self.data.complete:
            raise SearchUnavailable("this snapshot is a recording and did not record a search for these values "
                                    "and object headers")
        return self._scan(key[0][0], headers, pfn_range, progress)

    def _scan(self, values: Tuple[int, ...], headers: Optional[ObjectHeaders], pfn_range: Optional[PfnRange],
              progress: Optional[ProgressCallback]) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        # A value wider than a pointer occurs nowhere (ValueSet would search its truncation).
        value_set = ValueSet([v for v in values if v >> (8 * self.pointer_size) == 0], self.pointer_size,
                             headers=headers)
        hits: Dict[int, List[SearchHit]] = {v: [] for v in values}
        header_hits: List[HeaderHit] = []
        # Scan in physical order, as a search of physical memory would.
        order = sorted(self.data.pages, key=lambda va: (self.data.physical.get(va, va), va))
        total = len(order) * PAGE_SIZE
        for done, va in enumerate(order):
            pa = self.data.physical.get(va)
            if pfn_range is not None and (pa is None or not pfn_range.contains_address(pa)):
                continue
            found = value_set.find(self.data.pages[va])
            for index, value in zip(found.indices.tolist(), found.words.tolist()):
                offset = index * self.pointer_size
                hits[value].append(SearchHit(value, va + offset, None if pa is None else pa + offset))
            for index, next_word in zip(found.header_indices.tolist(), found.header_next.tolist()):
                offset = index * self.pointer_size
                header_hits.append(HeaderHit(va + offset, None if pa is None else pa + offset, next_word))
            if progress is not None and done % 256 == 0:
                progress(done * PAGE_SIZE, total)
        for value in hits:
            hits[value].sort(key=lambda h: (h.virtual or 0, h.physical or 0))
        header_hits.sort(key=lambda h: (h.virtual or 0, h.physical or 0))
        return hits, header_hits


# ---- recording any target ----------------------------------------------------------------------

class RecordingTarget(Target):
    """Wraps a target and records everything the analysis reads, for ``--record``.

    Memory is recorded a whole page at a time so that replay fails and succeeds exactly where the
    original did.
    """

    def __init__(self, inner: Target):
        self.inner = inner
        self.arch = inner.arch
        self.pointer_size = inner.pointer_size
        self.build = inner.build
        self.max_pfn = inner.max_pfn
        self.description = inner.description
        self.crash_time = inner.crash_time
        self.has_type_info = inner.has_type_info
        self.hunt_unavailable = inner.hunt_unavailable
        self.finds_object_headers = inner.finds_object_headers
        self.data = SnapshotData(arch=inner.arch, pointer_size=inner.pointer_size, bugcheck=BugCheck(0, (0, 0, 0, 0)),
                                 build=inner.build, description=inner.description, max_pfn=inner.max_pfn,
                                 crash_time=inner.crash_time)
        self._bugcheck: Optional[BugCheck] = None
        self._modules_asked = False

    def bugcheck(self) -> BugCheck:
        if self._bugcheck is None:
            self._bugcheck = self.inner.bugcheck()
            self.data.bugcheck = self._bugcheck
        return self._bugcheck

    def _page(self, page: int) -> Optional[bytes]:
        if page in self.data.pages:
            return self.data.pages[page]
        if page in self.data.unreadable:
            return None
        try:
            content = self.inner.read(page, PAGE_SIZE)
        except MemoryReadError:
            ranges = self.inner.readable_ranges(page, PAGE_SIZE)
            if not ranges:
                self.data.unreadable.add(page)
                return None
            held = bytearray(PAGE_SIZE)  # a page the source holds in part: the rest is recorded as unreadable
            for start, end in ranges:
                held[start - page:end - page] = self.inner.read(start, end - start)
            content = bytes(held)
            self.data.partial[page] = [(start - page, end - page) for start, end in ranges]
        self.data.pages[page] = content
        return content

    def read(self, address: int, size: int) -> bytes:
        content = read_from_pages(address, size, self._page, "not readable when recorded")
        _check_partial(self.data, address, size, "not readable when recorded")
        return content

    def crash_facts(self) -> Optional[CrashFacts]:
        if self.data.crash_facts is None:
            self.data.crash_facts = self.inner.crash_facts()
        return self.data.crash_facts

    def symbol(self, name: str) -> int:
        if name in self.data.symbols:
            return self.data.symbols[name]
        if name in self.data.missing_symbols:
            raise SymbolNotFound(name)
        try:
            address = self.inner.symbol(name)
        except SymbolNotFound:
            self.data.missing_symbols.add(name)
            raise
        self.data.symbols[name] = address
        return address

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        if name not in self.data.types:
            self.data.types[name] = self.inner.type_info(name, field_names)
        return self.data.types[name]

    def symbol_source(self, name: str) -> str:
        return self.inner.symbol_source(name)

    def modules(self) -> Optional[List[Module]]:
        if not self._modules_asked:
            listed = self.inner.modules()
            self.data.modules = None if listed is None else list(listed)
            self._modules_asked = True
        return None if self.data.modules is None else list(self.data.modules)

    def limitations(self) -> List[str]:
        return self.inner.limitations()

    def recorded_symbol_notes(self) -> List[str]:
        return self.inner.recorded_symbol_notes()

    def name_address(self, module: Optional[Module], address: int) -> Optional[SymbolicAddress]:
        return self.inner.name_address(module, address)

    def recorded_module_notes(self) -> Optional[List[str]]:
        return self.inner.recorded_module_notes()

    def recorded_image(self, module: Module) -> Optional[RecordedImage]:
        return self.inner.recorded_image(module)

    def search_pointers(self, values: Iterable[int], pfn_range: Optional[PfnRange] = None,
                        progress: Optional[ProgressCallback] = None) -> Dict[int, List[SearchHit]]:
        key = search_key(values, pfn_range)
        if key in self.data.failed_searches:
            raise SearchUnavailable(self.data.failed_searches[key])
        if key not in self.data.searches:
            try:
                self.data.searches[key] = self.inner.search_pointers(key[0], pfn_range, progress)
            except SearchUnavailable as error:
                self.data.failed_searches[key] = str(error)
                raise
        return {v: list(self.data.searches[key].get(v, [])) for v in key[0]}

    def search_pointers_and_headers(self, values: Iterable[int], headers: ObjectHeaders,
                                    pfn_range: Optional[PfnRange] = None, progress: Optional[ProgressCallback] = None
                                    ) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        key = header_search_key(values, headers, pfn_range)
        if key not in self.data.header_searches:
            try:
                self.data.header_searches[key] = self.inner.search_pointers_and_headers(key[0][0], headers, pfn_range,
                                                                                        progress)
            except SearchUnavailable as error:
                self.data.header_searches[key] = str(error)
        recorded = self.data.header_searches[key]
        if isinstance(recorded, str):
            raise SearchUnavailable(recorded)
        hits, header_hits = recorded
        return {v: list(hits.get(v, [])) for v in key[0][0]}, list(header_hits)

    def snapshot(self) -> SnapshotData:
        """The recording so far (the bug check and what the source cannot do are always included)."""
        self.bugcheck()
        self.data.limitations = self.inner.limitations()
        self.data.hunt_unavailable = self.inner.hunt_unavailable
        return self.data

    def searches_done(self) -> None:
        self.inner.searches_done()

    def close(self) -> None:
        self.inner.close()
