"""The symbol path (``--symbol-path``, ``_NT_SYMBOL_PATH``): where symbol files and image files are looked for.

Two kinds of file are looked up by identity: an image's symbol file (a PDB by its name, GUID and age,
or an ISF made from it), and an image file itself (``amdppm.sys`` by its TimeDateStamp and
SizeOfImage, ``ImageKey``: a small dump holds no image, and the image's CodeView record names its PDB).
The store key of a PDB is ``<GUID><AGE in hex>``; that of an image ``<TimeDateStamp as 8 upper-case
hex digits><SizeOfImage in lower-case hex>`` (``C9C030003b000``), as Microsoft's symbol stores and the
SSQP key conventions write it. Keys are also tried in lower and upper case (a store copied to a
case-sensitive disk is often lower-case).

Syntax, as the Windows debuggers read it: elements separated by ``;``, searched in order.

- ``DIR``: a folder. It is searched as a symbol store (``DIR/ntkrnlmp.pdb/<GUID><AGE hex>/ntkrnlmp.pdb``,
  or a ``file.ptr`` there holding ``PATH:<file>`` or ``MSG:<text>``), as a plain folder
  (``DIR/ntkrnlmp.pdb``, a build's output folder) and, for symbol files, as a volatility3 symbols
  folder (``DIR/windows/ntkrnlmp.pdb/<GUID>-<AGE>.json[.xz|.gz]``, with DIR the ``symbols`` folder, its
  ``windows`` folder or the ``ntkrnlmp.pdb`` folder). Within one element a PDB is preferred to an ISF
  file.
- ``cache*DIR``: a symbol store, and the downstream store of every later ``srv*URL`` that names none
  (``cache*`` alone: the default downstream store).
- ``srv*DIR*URL`` / ``srv*URL`` / ``symsrv*symsrv.dll*DIR*URL``: a symbol server. DIR (else the
  nearest ``cache*`` before it, else the default downstream store, ``default_downstream_store()``) is
  searched first; a file it lacks is downloaded from ``URL/<name>/<GUID><AGE>/<name>`` into it, once.
  ``srv*`` alone is Microsoft's public symbol server. More stores between ``srv*`` and the URL are
  searched in order (the first is the one downloads go to).

Downloads go over HTTP(S) with a timeout and a size cap, into a temporary file beside the final one
that is renamed into place only when complete and of the right kind (a PDB, a PE image); no partial
file is left, also on Ctrl+C, and a file already in the store is never replaced. A server's
``file.ptr`` answer and compressed ``.pd_`` / ``.sy_`` (CAB) files are not supported: only the plain file.

A lookup may be given ``accept(path) -> why not``: a file found at the right place but refused (a PDB
of another build, an image of another TimeDateStamp) is named among the places looked, and the search
goes on.

This module finds files; it does not open them (``pykd_ext.symbols.files.open_symbol_file`` does).
"""
from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

from ..console import OutputError
from ..outfiles import make_folder, refuse_unless_replaceable, write_atomically
from .base import PdbIdentity
from .files import MSF_7_MAGIC
from .pe import image_store_key

# Downloads a URL to a file: (True, "") or (False, why).
Fetch = Callable[[str, str], Tuple[bool, str]]
# Checks a file found for an identity: "" when it is the one, else why not ("of another build ...").
Accept = Callable[[str], str]

MICROSOFT_SYMBOL_SERVER = "https://msdl.microsoft.com/download/symbols"
DOWNLOAD_TIMEOUT_SECONDS = 30.0  # for each network wait (connect, each read)
DOWNLOAD_DEADLINE_SECONDS = 600.0  # for the whole transfer
# A kernel PDB is 10-30 MB; the cap keeps a misbehaving server from filling the disk.
MAX_DOWNLOAD_BYTES = 512 << 20
CAB_MAGIC = b"MSCF"
ISF_SUFFIXES = (".json", ".json.xz", ".json.gz")
# How volatility3 names a table: <GUID>-<AGE in decimal>.json[.xz|.gz].
_VOLATILITY3_NAME = re.compile(r"^[0-9A-Fa-f]{32}-\d+\.json(\.xz|\.gz)?$")
_CHUNK = 1 << 16
IMAGE_MAGIC = b"MZ"
# file.ptr is a one-line text file; anything longer is not one.
_MAX_FILE_PTR_BYTES = 4096


def default_downstream_store() -> str:
    """Where ``srv*URL`` (and ``cache*``) keep downloads when the path names no folder.

    ``%LOCALAPPDATA%\\leakhunt\\sym`` on Windows, ``$XDG_CACHE_HOME/leakhunt/sym`` (default
    ``~/.cache/leakhunt/sym``) elsewhere.
    """
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        root = os.environ["LOCALAPPDATA"]
    else:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "leakhunt", "sym")


@dataclass(frozen=True)
class ImageKey:
    """An image file as a symbol store files it: name, TimeDateStamp and SizeOfImage."""

    name: str  # e.g. "amdppm.sys"
    time_date_stamp: int
    size_of_image: int

    @property
    def store_key(self) -> str:
        return image_store_key(self.time_date_stamp, self.size_of_image)


# What a lookup is for: an image's symbol file (by PDB identity) or the image file itself.
StoreEntry = Union[PdbIdentity, ImageKey]


def describe(identity: StoreEntry) -> str:
    """``symbol file for X (GUID G, age A)`` or ``image file for X (TimeDateStamp T, SizeOfImage S)``."""
    if isinstance(identity, ImageKey):
        return (f"image file for {identity.name} (TimeDateStamp {identity.time_date_stamp:08X}, SizeOfImage "
                f"{identity.size_of_image:#x})")
    return f"symbol file for {identity.name} (GUID {identity.guid}, age {identity.age})"


@dataclass(frozen=True)
class Place:
    """One place a lookup tried, and why it did not give the file."""

    where: str
    why: str  # "missing", "HTTP 404", "timed out after 30 s", ...

    def __str__(self) -> str:
        return f"{self.where} ({self.why})"


@dataclass
class Lookup:
    """The outcome of SymbolPath.find: the first matching file, or every place looked and why."""

    identity: StoreEntry
    path: Optional[str] = None
    downloaded_from: str = ""  # the URL, when the file was fetched by this lookup
    places: List[Place] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.path is not None

    def warning(self) -> str:
        """One line naming the file (name, GUID, age) and every place it was looked for."""
        where = "; ".join(str(place) for place in self.places) or "the symbol path is empty"
        return f"no {describe(self.identity)}: looked in {where}"


# ---- elements -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalFolder:
    """A folder: symbol store, plain folder and volatility3 symbols folder at once."""

    folder: str

    def find(self, identity: StoreEntry, accept: Optional[Accept] = None) -> Tuple[Optional[str], List[Place]]:
        """The first file here for ``identity`` that ``accept`` takes (any, without it), and the
        places looked: the files refused and why, else the folder and why nothing was there."""
        if not os.path.isdir(self.folder):
            return None, [Place(self.folder, "no such folder")]
        candidates, pointer_message = self._candidates(identity)
        refused: List[Place] = []
        for candidate in candidates:
            why = accept(candidate) if accept is not None else ""
            if not why:
                return candidate, []
            refused.append(Place(candidate, why))
        return None, refused or [Place(self.folder, pointer_message or "missing")]

    def _candidates(self, identity: StoreEntry) -> Tuple[List[str], str]:
        """The existing files that may be ``identity``, in order (the store's, the plain folder's, the
        file a store's ``file.ptr`` points to, then the ISF files of a symbol file), and what a
        ``file.ptr`` says instead of naming a file."""
        names = _name_spellings(identity.name)
        candidates = [os.path.join(self.folder, name, key, name) for name in names
                      for key in _key_spellings(identity.store_key)]
        candidates += [os.path.join(self.folder, name) for name in names]
        found = [candidate for candidate in candidates if os.path.isfile(candidate)]
        pointed, pointer_message = _follow_file_ptr(self.folder, identity)
        if pointed:
            found.append(pointed)
        if isinstance(identity, PdbIdentity):
            found += [candidate for candidate in self._isf_candidates(identity) if os.path.isfile(candidate)]
        return found, pointer_message

    def _isf_candidates(self, identity: PdbIdentity) -> Iterator[str]:
        stem = f"{identity.guid}-{identity.age}"
        for name in _name_spellings(identity.name):
            for folder in (os.path.join(self.folder, "windows", name), os.path.join(self.folder, name),
                           self.folder):
                for suffix in ISF_SUFFIXES:
                    yield os.path.join(folder, stem + suffix)

    def candidates(self, pdb_name: str) -> Iterator[str]:
        """Every file here that may be ``pdb_name`` or an ISF of it, whatever its GUID and age."""
        for name in _name_spellings(pdb_name):
            plain = _existing_file(os.path.join(self.folder, name))
            if plain:
                yield plain
            store = os.path.join(self.folder, name)
            for key in _sorted_entries(store):
                found = _existing_file(os.path.join(store, key, name))
                if found:
                    yield found
            for folder in (os.path.join(self.folder, "windows", name), store, self.folder):
                for entry in _sorted_entries(folder):
                    if _VOLATILITY3_NAME.match(entry):
                        found = _existing_file(os.path.join(folder, entry))
                        if found:
                            yield found


@dataclass(frozen=True)
class SymbolServer:
    """``srv*STORE*...*URL``: local stores searched first, then the server, downloading into ``stores[0]``."""

    stores: Tuple[str, ...]
    url: str

    def find(self, identity: StoreEntry, fetch: Optional[Fetch],
             accept: Optional[Accept] = None) -> Tuple[Optional[str], str, List[Place]]:
        """(file, the URL it was downloaded from or "", places looked); ``fetch`` None: offline. A
        file already at the download's destination (refused by ``accept``) is never replaced."""
        places: List[Place] = []
        for store in self.stores:
            found, looked = LocalFolder(store).find(identity, accept)
            if found:
                return found, "", []
            places.extend(looked)
        url = server_file_url(self.url, identity)
        destination = os.path.join(self.stores[0], identity.name, identity.store_key, identity.name)
        if fetch is None:
            places.append(Place(url, "not downloaded: offline"))
            return None, "", places
        if os.path.exists(destination):
            places.append(Place(url, f"not downloaded: {destination} is there already"))
            return None, "", places
        ok, why = fetch(url, destination)
        if ok:
            why = accept(destination) if accept is not None else ""
            if not why:
                return destination, url, []
            places.append(Place(destination, f"downloaded from {url}, but {why}"))
            return None, "", places
        places.append(Place(url, why))
        return None, "", places


def server_file_url(server: str, identity: StoreEntry) -> str:
    """``URL/<name>/<key>/<name>``, the plain (uncompressed) file on a symbol server."""
    name = urllib.parse.quote(identity.name)
    return f"{server.rstrip('/')}/{name}/{identity.store_key}/{name}"


# ---- the path -----------------------------------------------------------------------------------

class SymbolPath:
    """A parsed symbol path: its elements in search order."""

    def __init__(self, elements: Sequence[object]):
        self.elements = list(elements)
        # Download limits, per path: each network wait, the whole transfer, the body size.
        self.timeout = DOWNLOAD_TIMEOUT_SECONDS
        self.deadline = DOWNLOAD_DEADLINE_SECONDS
        self.max_bytes = MAX_DOWNLOAD_BYTES

    @classmethod
    def parse(cls, text: Optional[str]) -> "SymbolPath":
        """Parse ``_NT_SYMBOL_PATH`` syntax; empty elements are skipped, nothing touches the disk."""
        elements: List[object] = []
        downstream: Optional[str] = None
        for raw in (text or "").split(";"):
            element = raw.strip()
            if not element:
                continue
            parts = [part.strip() for part in element.split("*")]
            keyword = parts[0].lower() if len(parts) > 1 else ""
            if keyword == "cache":
                downstream = parts[1] if len(parts) > 1 and parts[1] else default_downstream_store()
                elements.append(LocalFolder(downstream))
            elif keyword in ("srv", "symsrv"):
                rest = parts[2:] if keyword == "symsrv" else parts[1:]  # symsrv*symsrv.dll*...
                elements.append(_server(rest, downstream))
            else:
                elements.append(LocalFolder(element))
        return cls(elements)

    def find(self, identity: StoreEntry, offline: bool = False, accept: Optional[Accept] = None) -> Lookup:
        """The first file for ``identity`` in element order (downloading from servers unless
        ``offline``) that ``accept`` takes; the files it refuses are among the places looked."""
        lookup = Lookup(identity)
        if not _is_plain_file_name(identity.name):  # the name comes from the dump: never a path
            lookup.places.append(Place(repr(identity.name)[:80], "not a plain file name, not looked up"))
            return lookup
        kind = "image" if isinstance(identity, ImageKey) else "pdb"
        fetch = None if offline else (lambda url, destination: self._fetch(url, destination, kind))
        for element in self.elements:
            if isinstance(element, SymbolServer):
                found, url, looked = element.find(identity, fetch, accept)
            else:
                found, looked = element.find(identity, accept)
                url = ""
            if found:
                lookup.path, lookup.downloaded_from = found, url
                return lookup
            lookup.places.extend(looked)
        return lookup

    def candidates(self, pdb_name: str) -> Iterator[str]:
        """Local files that may describe ``pdb_name`` whatever their GUID and age, in element order
        (for a dump whose image identity is unknown: each must then be checked against the dump)."""
        if not _is_plain_file_name(pdb_name):
            return
        seen = set()
        for element in self.elements:
            folders = element.stores if isinstance(element, (SymbolServer, SymbolServerStores)) else (element.folder,)
            for folder in folders:
                for path in LocalFolder(folder).candidates(pdb_name):
                    key = os.path.normcase(os.path.realpath(path))
                    if key not in seen:
                        seen.add(key)
                        yield path

    def __bool__(self) -> bool:
        return bool(self.elements)

    def _fetch(self, url: str, destination: str, kind: str) -> Tuple[bool, str]:
        return download(url, destination, self.timeout, self.max_bytes, self.deadline, kind)


def _server(parts: List[str], downstream: Optional[str]) -> object:
    parts = [part for part in parts if part]
    if not parts:
        return SymbolServer((downstream or default_downstream_store(),), MICROSOFT_SYMBOL_SERVER)
    if not _is_url(parts[-1]):
        # srv*DIR1*DIR2: a chain of local stores only.
        return SymbolServerStores(tuple(parts))
    stores = tuple(parts[:-1]) or (downstream or default_downstream_store(),)
    return SymbolServer(stores, parts[-1])


@dataclass(frozen=True)
class SymbolServerStores:
    """``srv*DIR1*DIR2``: symbol stores searched in order, no server."""

    stores: Tuple[str, ...]

    def find(self, identity: StoreEntry, accept: Optional[Accept] = None) -> Tuple[Optional[str], List[Place]]:
        places: List[Place] = []
        for store in self.stores:
            found, looked = LocalFolder(store).find(identity, accept)
            if found:
                return found, []
            places.extend(looked)
        return None, places


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


# ---- local files --------------------------------------------------------------------------------

def _is_plain_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(character in name for character in '/\\:\0')


def _name_spellings(name: str) -> List[str]:
    """The name as given and lower-cased (stores on case-sensitive file systems are often lower-case)."""
    return [name] if name == name.lower() else [name, name.lower()]


def _key_spellings(key: str) -> List[str]:
    """The store key as written, then lower-cased and upper-cased (stores copied to case-sensitive
    disks, or written by tools that spell the key otherwise)."""
    spellings = [key]
    for spelling in (key.lower(), key.upper()):
        if spelling not in spellings:
            spellings.append(spelling)
    return spellings


def _existing_file(path: str) -> Optional[str]:
    return path if os.path.isfile(path) else None


def _sorted_entries(folder: str) -> List[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _follow_file_ptr(folder: str, identity: StoreEntry) -> Tuple[Optional[str], str]:
    """A store's ``file.ptr`` (``PATH:<file>`` or ``MSG:<text>``): the file it points to, or why not."""
    for name in _name_spellings(identity.name):
        pointer = os.path.join(folder, name, identity.store_key, "file.ptr")
        if not os.path.isfile(pointer):
            continue
        try:
            with open(pointer, "rb") as handle:
                text = handle.read(_MAX_FILE_PTR_BYTES).decode("utf-8", "replace").strip()
        except OSError as error:
            return None, f"{pointer} unreadable: {error.strerror or error}"
        kind, _, value = text.partition(":")
        if kind.strip().upper() == "PATH":
            target = value.strip()
            if os.path.isfile(target):
                return target, ""
            return None, f"{pointer} points to {target}, which is missing"
        if kind.strip().upper() == "MSG":
            return None, f"{pointer} says: {value.strip()[:200]}"
        return None, f"{pointer} is not PATH:... or MSG:..."
    return None, ""


# ---- downloads ----------------------------------------------------------------------------------

def download(url: str, destination: str, timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
             max_bytes: int = MAX_DOWNLOAD_BYTES, deadline_seconds: float = DOWNLOAD_DEADLINE_SECONDS,
             kind: str = "pdb") -> Tuple[bool, str]:
    """Fetch ``url`` into ``destination`` atomically: (True, "") or (False, why).

    The body goes to a temporary file in the destination's folder, which replaces ``destination``
    only once complete and checked to be of its ``kind`` (``"pdb"``: MSF 7.0, ``"image"``: MZ); on any
    failure, Ctrl+C included, the temporary file is removed. ``timeout`` bounds each network wait,
    ``deadline_seconds`` the transfer.
    """
    folder = os.path.dirname(destination)
    deadline = time.monotonic() + deadline_seconds
    request = urllib.request.Request(url, headers={"User-Agent": "leakhunt-symbol-fetch"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as error:
        error.close()
        return False, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        return False, _network_reason(error, timeout)
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.strip().isdigit() else None
        if expected is not None and expected > max_bytes:
            return False, f"{expected} bytes, more than the {max_bytes >> 20} MiB cap: refused"
        try:
            make_folder(folder, "the symbol cache folder")
            refuse_unless_replaceable(destination, overwrite=True, what="symbol file")
        except OutputError as error:
            return False, str(error)

        def fetch(out) -> None:
            ok, why = _copy_body(response, out, expected, max_bytes, deadline, deadline_seconds, timeout, kind)
            if not ok:
                raise _TransferFailed(why)

        try:
            write_atomically(destination, fetch, overwrite=True, what="symbol file")
        except _TransferFailed as failed:
            return False, str(failed)
        except OutputError as error:
            return False, str(error)
        return True, ""


class _TransferFailed(Exception):
    """The download stopped or its content is not of its kind: nothing is written (the reason in words)."""


def _copy_body(response, out, expected: Optional[int], max_bytes: int, deadline: float,
               deadline_seconds: float, timeout: float, kind: str) -> Tuple[bool, str]:
    total = 0
    head = b""
    while True:
        if time.monotonic() > deadline:
            return False, f"not complete after {deadline_seconds:g} s ({total} bytes received)"
        try:
            chunk = response.read1(_CHUNK)  # what has arrived (read() would wait for a whole chunk)
        except http.client.IncompleteRead as error:
            return False, f"connection dropped after {total + len(error.partial)} bytes"
        except (socket.timeout, TimeoutError):
            return False, f"timed out after {timeout:g} s ({total} bytes received)"
        except (OSError, http.client.HTTPException) as error:
            return False, f"connection failed after {total} bytes: {error}"
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            return False, f"more than the {max_bytes >> 20} MiB cap: refused"
        if len(head) < len(MSF_7_MAGIC):
            head += chunk[:len(MSF_7_MAGIC)]
        out.write(chunk)
    if expected is not None and total != expected:
        return False, f"connection dropped after {total} of {expected} bytes"
    if head.startswith(CAB_MAGIC):
        return False, "the server sent a compressed (CAB) file, which is not supported"
    if kind == "image" and not head.startswith(IMAGE_MAGIC):
        return False, "the server's answer is not a PE image (no MZ signature)"
    if kind != "image" and not head.startswith(MSF_7_MAGIC):
        return False, "the server's answer is not a PDB (no MSF 7.0 signature)"
    return True, ""


def _network_reason(error: BaseException, timeout: float) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host not found"
    text = getattr(reason, "strerror", None) or str(reason)
    return f"connection failed: {text}"
