"""A stand-in for pykd 0.3.4.15, for running leakhunt's WinDbg entry point on any OS.

It implements the subset of the real module's API that leakhunt uses, with the real names, signatures,
return types and exception classes (see /work/shared/reference/pykd-api.md): memory comes back as
lists of ints, addresses of a 32-bit target come back sign-extended, bulk loads fail as a whole when any
page is missing, ``dbgCommand`` returns None for empty output, ``dprint(..., dml=True)`` calls
``_sys.stdout.writedml`` when it exists. Every public name here exists in the real module; anything
else (a name the real pykd lacks) fails with AttributeError, as it would in WinDbg.

Tests load a target with ``pykd._control.load(scenario_or_snapshot, ...)`` (not part of the pykd API).
"""
import enum as _enum
import functools as _functools
import re as _re
import sys as _sys

import numpy as _np

from . import _session

__version__ = "0.3.4.15"
version = __version__


# ---- exceptions (dbgexcept.h: registerExceptions) -------------------------------------------------

class DbgException(Exception):
    """Pykd base exception class"""


class MemoryException(DbgException):
    """Target memory access exception class"""


class SymbolException(DbgException):
    """Symbol exception"""


class TypeException(SymbolException):
    """type exception"""


class CallException(DbgException):
    """Function call exception"""


class CPUException(DbgException):
    """CPU exception"""


# ---- enums and small classes -----------------------------------------------------------------------

class CPUType(_enum.IntEnum):
    I386 = 0x14C
    ARM = 0x1C4
    AMD64 = 0x8664
    ARM64 = 0xAA64


class outputFlag(_enum.IntFlag):
    Normal = 0x1
    Error = 0x2
    Warning = 0x4
    Verbose = 0x8


class systemVersion:
    def __init__(self, build: int):
        self.win32Major = 10
        self.win32Minor = 0
        self.servicePack = ""
        self.buildNumber = build
        self.buildString = f"{build}.1.amd64fre.vb_release.191206-1406"

    def __str__(self) -> str:
        return f"Major Version: {self.win32Major}\nMinor Version: {self.win32Minor}\nBuild: {self.buildNumber}"


# ---- plumbing --------------------------------------------------------------------------------------

def _target() -> _session.Session:
    if _session.current is None:
        raise DbgException("pykd is not initialized or no target is loaded")
    return _session.current


def _api(function):
    """Count the call, pay the simulated per-call cost, deliver a scheduled Ctrl+Break."""
    @_functools.wraps(function)
    def wrapper(*args, **kwargs):
        if _session.current is not None:
            _session.current.enter(function.__qualname__)
        return function(*args, **kwargs)
    return wrapper


def _offset(value) -> int:
    """MEMOFFSET_64: an unsigned 64-bit integer (Boost.Python raises OverflowError otherwise)."""
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise OverflowError("can't convert negative or too large value to unsigned long long")
    return value


def _count(value) -> int:
    """``count`` is a C unsigned long (32 bits)."""
    value = int(value)
    if not 0 <= value < 1 << 32:
        raise OverflowError("value too large to convert to unsigned long")
    return value


def _virtual(target: _session.Session, offset: int) -> int:
    """kdlib normalises a 32-bit target's addresses; anything past 32 bits that is not a sign
    extension is not an address of that target."""
    if target.pointer_size == 4:
        if offset >> 32 not in (0, 0xFFFFFFFF):
            raise MemoryException(f"Memory exception at {offset:#x} target virtual address")
        return offset & 0xFFFFFFFF
    return offset


def _read(offset, size: int, phyAddr: bool) -> bytes:
    target = _target()
    offset = _offset(offset)
    if phyAddr:
        data = target.read_physical(offset, size)
    else:
        data = target.read_virtual(_virtual(target, offset), size)
    if data is None:
        kind = "physical" if phyAddr else "virtual"
        raise MemoryException(f"Memory exception at {offset:#x} target {kind} address")
    return data


def _words(data: bytes, size: int):
    """A list of Python ints, built in C as pykd's converter does."""
    return _np.frombuffer(data, dtype="<u8" if size == 8 else "<u4").tolist()


# ---- session ---------------------------------------------------------------------------------------

def isWindbgExt() -> bool:
    return hasattr(_sys.stdout, "writedml")


def initialize() -> None:
    if _session.current is not None:
        raise DbgException("pykd is already initialized")


def loadDump(path) -> int:
    from pykd_ext.targets.snapshot import SnapshotError, load_snapshot

    try:
        data = load_snapshot(str(path))
    except SnapshotError as error:
        raise DbgException(f"Failed to open dump {path}: {error}") from None
    _session.current = _session.Session(data)
    return 0


@_api
def isKernelDebugging() -> bool:
    return _target().kernel


@_api
def isDumpAnalyzing() -> bool:
    return _target().dump


@_api
def is64bitSystem() -> bool:
    return _target().pointer_size == 8


@_api
def ptrSize() -> int:
    return _target().pointer_size


@_api
def getCPUType() -> CPUType:
    return {"x64": CPUType.AMD64, "x86": CPUType.I386, "arm64": CPUType.ARM64}[_target().data.arch]


@_api
def getSystemVersion() -> systemVersion:
    build = _target().data.build
    if build is None:
        raise DbgException("Call IDebugControl::GetSystemVersion failed")
    return systemVersion(build)


@_api
def reg(name):
    """A register of the current context: for a kernel dump, the context its header records
    (mocks.dumpwriter.kernel_context), by the names WinDbg's ``r`` uses."""
    from mocks.dumpwriter import kernel_context
    registers = kernel_context(_target().data)
    key = str(name).lower()
    if key not in registers:
        raise DbgException(f"Invalid register name {name!r}")
    return registers[key]


@_api
def bugCheckData():
    target = _target()
    if not target.kernel or not target.bugcheck_data:
        raise DbgException("Call IDebugControl::ReadBugCheckData failed\n HRESULT 0x80004001")
    check = target.data.bugcheck
    return (check.code,) + tuple(_session.sign_extend(p, target.pointer_size) for p in check.parameters)


# ---- output and commands ---------------------------------------------------------------------------

def dprint(str, dml=False) -> None:  # noqa: A002 - the real parameter name
    stream = _sys.stdout
    if dml and hasattr(stream, "writedml"):
        stream.writedml(str)
    else:
        stream.write(str)


def dprintln(str, dml=False) -> None:  # noqa: A002
    dprint(str + "\n", dml)


_NUMBER = _re.compile(r"^(?:0x)?[0-9a-fA-F`]+$")


def _expression(token: str) -> int:
    """The debugger's default radix is 16; 0x and backticks are accepted."""
    if not _NUMBER.match(token):
        raise ValueError(token)
    return int(token.replace("`", ""), 16)


@_api
def dbgCommand(command, suppressOutput=True, outputMask=outputFlag.Normal):
    target = _target()
    words = str(command).split()
    if not words:
        raise DbgException("empty command")
    output, error = "", ""
    if words[0] == "!search":
        arguments = [w for w in words[1:] if not w.startswith("-")]
        if not target.search_extension:
            error = "No export search found\n"
        elif not target.kernel:
            error = "!search is only supported in kernel mode\n"
        else:
            try:
                numbers = [_expression(a) for a in arguments]
                if not 1 <= len(numbers) <= 4:
                    raise ValueError(command)
            except ValueError:
                raise DbgException(f"Couldn't resolve error at '{command}'") from None
            data, delta = numbers[0], numbers[1] if len(numbers) > 1 else 0
            first = numbers[2] if len(numbers) > 2 else None
            last = numbers[3] if len(numbers) > 3 else None
            output = target.search_command(data, delta, first, last)
    elif words == [".bugcheck"]:
        if target.kernel and target.bugcheck_command:
            output = target.bugcheck_command_output()
        else:
            error = "^ Operation not supported in current debug session: '.bugcheck'\n"
    else:
        raise DbgException(f"the stand-in pykd does not know the command {command!r}")
    captured = (output if int(outputMask) & outputFlag.Normal else "") + \
        (error if int(outputMask) & outputFlag.Error else "")
    if not suppressOutput:
        _sys.stdout.write(output + error)
        return None
    return captured or None


# ---- symbols, types, modules -----------------------------------------------------------------------

@_api
def getOffset(name) -> int:
    target = _target()
    name = str(name)
    module, _, symbol = name.rpartition("!")
    if module and module not in {m.name for m in target.data.modules}:
        raise DbgException(f"Failed to find module '{module}'")
    for key, address in target.symbols.items():
        if key == name or (not module and key.split("!", 1)[-1] == symbol):
            return _session.sign_extend(address, target.pointer_size)
    raise SymbolException(f"{name} : symbol not found")


@_api
def findSymbolAndDisp(offset):
    """(module name, symbol name, displacement) of the nearest symbol at or below ``offset`` in the module
    holding it; DbgException when no symbol of that module is at or below it (as the real one raises)."""
    target = _target()
    address = _offset(offset) & ((1 << (8 * target.pointer_size)) - 1)
    holder = next((m for m in target.data.modules if m.base <= address < m.base + m.size), None)
    if holder is None:
        raise DbgException(f"no module holds {address:#x}")
    best = None
    for key, where in target.symbols.items():
        owner, _, name = key.rpartition("!")
        if owner == holder.name and where <= address and (best is None or where > best[1]):
            best = (name, where)
    if best is None:
        raise SymbolException(f"no symbol of {holder.name} at or below {address:#x}")
    return holder.name, best[0], address - best[1]


class typeInfo:
    """A type from the symbols: ``typeInfo("nt!_MDL")``."""

    @_api
    def __init__(self, name, _node=None):
        if _node is None:
            target = _target()
            key = str(name).split("!", 1)[-1]
            _node = target.types.get(key)
            if _node is None:
                raise TypeException(f"{name} : type not found")
        self._node = _node

    @_api
    def size(self) -> int:
        return self._node.size

    def _member(self, name):
        try:
            return self._node.members[str(name)]
        except KeyError:
            raise TypeException(f"{self._node.name} : field {name} not found") from None

    @_api
    def fieldOffset(self, name) -> int:
        return self._member(name)[0]

    @_api
    def field(self, name) -> "typeInfo":
        return typeInfo(None, self._member(name)[1])


class module:
    """A loaded image, as getModulesList() returns them (the stand-in builds them only there)."""

    @_api
    def __init__(self, nameOrAddress, _module=None):
        if _module is None:
            raise DbgException(f"Failed to find module '{nameOrAddress}'")
        self._module = _module

    @_api
    def name(self) -> str:
        return self._module.name

    @_api
    def image(self) -> str:
        return self._module.image

    @_api
    def begin(self) -> int:
        return _session.sign_extend(self._module.base, _target().pointer_size)

    @_api
    def size(self) -> int:
        return self._module.size


@_api
def getModulesList():
    target = _target()
    if not target.modules_list:
        raise DbgException("Call IDebugSymbols::GetNumberModules failed")
    return [module(None, m) for m in target.data.modules]


# ---- memory ----------------------------------------------------------------------------------------

@_api
def loadBytes(offset, count, phyAddr=False):
    return list(_read(offset, _count(count), phyAddr))


@_api
def loadDWords(offset, count, phyAddr=False):
    return _words(_read(offset, 4 * _count(count), phyAddr), 4)


@_api
def loadQWords(offset, count, phyAddr=False):
    return _words(_read(offset, 8 * _count(count), phyAddr), 8)
