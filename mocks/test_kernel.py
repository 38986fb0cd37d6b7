"""The test kernel: a fake ``ntoskrnl.exe`` with a real-format ``ntkrnlmp.pdb`` and the ISF of the same
kernel, whose structures have exactly leakhunt's built-in x64 build 19045 layouts; and the ARM64 test
kernel, an ARM64 image and PDB of build 26100 whose structures are the ARM64 ones of mocks/arm64_layouts.py
(for the rest, the stable tables, the same on ARM64).

    python3 mocks/test_kernel.py                      # rebuild tests/data/testkernel/ (needs clang, lld-link)
    python3 mocks/test_kernel.py --check              # rebuild in a scratch folder, compare with the committed files
    python3 mocks/test_kernel.py --arch arm64 [--check]   # the same for tests/data/testkernel-arm64/

One description (``structures()``) says what the kernel holds: every structure of
``layouts.STABLE_LAYOUTS``, ``OTHER_STABLE_LAYOUTS`` and ``BUILD_LAYOUTS_X64[...][19045]`` with its
x64 offsets, nested paths (``Tail.Overlay.Thread``, ``Cid.UniqueProcess``, ``ApcState.Process``,
``FileHeader.NumberOfSections``) as real nested members, overlapping fields (``_KLOCK_ENTRY``'s
``EntryFlags`` and its bytes) as unnamed unions of unnamed structures, explicit padding, and the
tables' sizeof; plus ``_LEAKHUNT_SHAPES`` (bit fields, arrays, an enum, qualifiers, a pointer to a
structure that is never defined) and ``_LEAKHUNT_WIDE`` (9000 members: a field list long enough to be
split with LF_INDEX). From it this script writes C with a ``_Static_assert`` for every size and field
offset (so the compiler confirms the layout), builds it with ``clang --target=x86_64-pc-windows-msvc
-g -gcodeview`` and ``lld-link /debug``, and writes the volatility3 ISF JSON of the same kernel, with
the PDB's GUID and age (read from the image's CodeView record) and the RVAs of the globals (read from
the linker's map file).

The build runs in a fixed folder (``BUILD_DIR``) with ``/Brepro``, so the same tools give the same
bytes; the GUID lld writes is a hash of the PDB's content, which includes that folder. CI has no
clang: the tests use the committed files and run ``--check`` only where clang is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

try:
    import fcntl
except ImportError:  # Windows: no lock (the build needs clang and lld-link anyway)
    fcntl = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pykd_ext import layouts  # noqa: E402
from mocks.arm64_layouts import ARM64_BUILD_LAYOUTS  # noqa: E402

BUILD = 19045
OUTPUT_DIR = os.path.join(ROOT, "tests", "data", "testkernel")
BUILD_DIR = "/tmp/leakhunt-testkernel-build"
SOURCE = "testkernel.c"
PDB = "ntkrnlmp.pdb"
EXE = "ntoskrnl.exe"
ENTRY = "KiSystemStartup"
MACHINE_AMD64 = 0x8664
MACHINE_ARM64 = 0xAA64
POINTER_SIZE = 8


# ---- the type model: exactly what the C says ----

@dataclass(frozen=True)
class Base:
    name: str  # the C spelling, also the ISF base type name
    size: int


@dataclass(frozen=True)
class Pointer:
    target: Optional[str] = None  # the tag of the structure pointed to; None for void *
    depth: int = 1  # 2 for a pointer to a pointer


@dataclass(frozen=True)
class Array:
    element: "Type"
    count: int


@dataclass(frozen=True)
class Tagged:
    tag: str  # an embedded structure described elsewhere in the model


@dataclass(frozen=True)
class EnumType:
    tag: str


@dataclass
class Member:
    name: str  # "" for an unnamed member (its members belong to the enclosing structure)
    offset: int  # from the start of the enclosing aggregate
    type: "Type"
    bits: Optional[Tuple[int, int]] = None  # (bit position, bit length) of a bit field
    qualifiers: str = ""  # "const", "volatile"


@dataclass
class Aggregate:
    kind: str  # "struct" or "union"
    tag: Optional[str]  # None for an unnamed structure or union
    size: int
    members: List[Member] = field(default_factory=list)


Type = Union[Base, Pointer, Array, Tagged, EnumType, Aggregate]

UCHAR = Base("unsigned char", 1)
USHORT = Base("unsigned short", 2)
SHORT = Base("short", 2)
ULONG = Base("unsigned long", 4)
LONG = Base("long", 4)
ULONGLONG = Base("unsigned long long", 8)
KIND_TYPES = {"u8": UCHAR, "u16": USHORT, "i16": SHORT, "u32": ULONG, "u64": ULONGLONG}

# ---- the description ----

# What the "struct" fields of the tables are (the tables only say where they start), and the typed
# pointers (the rest are void *): (structure, field path) -> type.
EMBEDDED: Dict[Tuple[str, str], Type] = {
    ("_IRP", "ThreadListEntry"): Tagged("_LIST_ENTRY"),
    ("_IRP", "IoStatus"): Tagged("_IO_STATUS_BLOCK"),
    ("_IRP", "Tail.Overlay.ListEntry"): Tagged("_LIST_ENTRY"),
    ("_IO_STACK_LOCATION", "Parameters"): Array(Pointer(), 4),
    ("_DRIVER_OBJECT", "DriverName"): Tagged("_UNICODE_STRING"),
    ("_DRIVER_OBJECT", "MajorFunction"): Array(Pointer(), 28),
    ("_FILE_OBJECT", "FileName"): Tagged("_UNICODE_STRING"),
    ("_KLDR_DATA_TABLE_ENTRY", "InLoadOrderLinks"): Tagged("_LIST_ENTRY"),
    ("_KLDR_DATA_TABLE_ENTRY", "FullDllName"): Tagged("_UNICODE_STRING"),
    ("_KLDR_DATA_TABLE_ENTRY", "BaseDllName"): Tagged("_UNICODE_STRING"),
    ("_IMAGE_NT_HEADERS", "OptionalHeader"): Tagged("_IMAGE_OPTIONAL_HEADER64"),
    ("_IMAGE_SECTION_HEADER", "Name"): Array(UCHAR, 8),
    ("_EPROCESS", "ActiveProcessLinks"): Tagged("_LIST_ENTRY"),
    ("_EPROCESS", "ImageFileName"): Array(UCHAR, layouts.IMAGE_FILE_NAME_LENGTH),
    ("_EPROCESS", "ThreadListHead"): Tagged("_LIST_ENTRY"),
    ("_KTHREAD", "ThreadListEntry"): Tagged("_LIST_ENTRY"),
    ("_KTHREAD", "MutantListHead"): Tagged("_LIST_ENTRY"),
    ("_ETHREAD", "IrpList"): Tagged("_LIST_ENTRY"),
    ("_ETHREAD", "ThreadListEntry"): Tagged("_LIST_ENTRY"),
    ("_KLOCK_ENTRY", "TreeNode"): Tagged("_RTL_BALANCED_NODE"),
    ("_KLOCK_ENTRY", "OwnerTree"): Tagged("_RTL_RB_TREE"),
    ("_KLOCK_ENTRY", "WaiterTree"): Tagged("_RTL_RB_TREE"),
    ("_LOCK_TRACKER", "LockTrackerNode"): Tagged("_RTL_BALANCED_NODE"),
    ("_MDL", "Next"): Pointer("_MDL"),
    ("_MDL", "Process"): Pointer("_EPROCESS"),
    ("_IRP", "MdlAddress"): Pointer("_MDL"),
    ("_IRP", "Tail.Overlay.Thread"): Pointer("_ETHREAD"),
    ("_LIST_ENTRY", "Flink"): Pointer("_LIST_ENTRY"),
    ("_LIST_ENTRY", "Blink"): Pointer("_LIST_ENTRY"),
    ("_KTHREAD", "Process"): Pointer("_KPROCESS"),  # declared, never defined: a forward reference only
    ("_KTHREAD", "ApcState.Process"): Pointer("_KPROCESS"),
    ("_ETHREAD", "Tcb"): Tagged("_KTHREAD"),
    ("_LOCK_TRACKER", "Mdl"): Pointer("_MDL"),
    ("_LOCK_TRACKER", "Process"): Pointer("_EPROCESS"),
}
# The element structure of a "struct[n]" field.
ARRAY_ELEMENTS = {("_ETHREAD", "LockEntries"): Tagged("_KLOCK_ENTRY")}

# Structures and unions that dotted paths go through: (structure, path) -> (kind, tag, size, offset
# in the enclosing aggregate when the tables do not give it).
NESTED: Dict[Tuple[str, str], Tuple[str, Optional[str], int, Optional[int]]] = {
    ("_IRP", "Tail"): ("union", None, 0x58, None),
    ("_IRP", "Tail.Overlay"): ("struct", None, 0x50, 0),
    ("_KTHREAD", "ApcState"): ("struct", "_KAPC_STATE", 0x30, 0x98),
    ("_ETHREAD", "Cid"): ("struct", "_CLIENT_ID", 0x10, None),
    ("_IMAGE_NT_HEADERS", "FileHeader"): ("struct", "_IMAGE_FILE_HEADER", 0x14, 4),
    ("_IMAGE_SECTION_HEADER", "Misc"): ("union", None, 4, 8),
}

# Members the tables do not use, there so that the structures look like the kernel's: absolute
# offset and kind. Tail.Overlay.PacketType shares its bytes with CurrentStackLocation (an unnamed
# union, flattened into Overlay's field list as Microsoft's PDBs do).
EXTRA_FIELDS: Dict[str, Dict[str, Tuple[int, str]]] = {
    "_IRP": {"Tail.Overlay.AuxiliaryBuffer": (0xA0, "ptr"), "Tail.Overlay.PacketType": (0xB8, "u32"),
             "Tail.CompletionKey": (0x78, "ptr")},
    "_KTHREAD": {"ApcState.KernelApcPending": (0xC2, "u8")},
    "_ETHREAD": {"Tcb": (0x0, "struct")},
}

# Sizes the tables leave open (sizeof 0: leakhunt does not rely on them).
OPEN_SIZES = {"_FILE_OBJECT": 0xD8, "_KLDR_DATA_TABLE_ENTRY": 0xA0, "_IMAGE_NT_HEADERS": 0x108}

# Structures the tables' fields are made of, that the tables do not describe.
MEMBER_STRUCTURES = {
    "_IO_STATUS_BLOCK": (0x10, [("Status", 0x0, LONG), ("Information", 0x8, ULONGLONG)]),
    "_RTL_RB_TREE": (0x10, [("Root", 0x0, Pointer("_RTL_BALANCED_NODE")),
                            ("Min", 0x8, Pointer("_RTL_BALANCED_NODE"))]),
    "_IMAGE_OPTIONAL_HEADER64": (0xF0, [("Magic", 0x0, USHORT), ("SizeOfImage", 0x38, ULONG)]),
}

# 8-byte members: a field list of ~200 KB, continued 3 times by LF_INDEX; offsets past 0x8000.
WIDE_MEMBERS = 9000

# The globals leakhunt reads: name, C type.
GLOBALS = [
    ("KiBugCheckDriver", "struct _UNICODE_STRING *"),
    ("PsLoadedModuleList", "struct _LIST_ENTRY"),
    ("PsActiveProcessHead", "struct _LIST_ENTRY"),
    ("KdDebuggerDataBlock", "unsigned char [0x368]"),
    ("MmHighestPhysicalPage", "unsigned long long"),
]

ENUM_TAG = "_LEAKHUNT_STATE"
ENUM_CONSTANTS = {"StateIdle": 0, "StateBusy": 1, "StateGone": 7}


@dataclass(frozen=True)
class KernelSpec:
    """Which test kernel: its architecture, build, files, compiler target, and the tables of the structures
    that move between builds; ``nested`` and ``extra_fields`` override NESTED and EXTRA_FIELDS where its
    structures are laid out differently; ``reader_shapes``: it also carries the PDB reader's test types."""

    arch: str
    build: int
    output_dir: str
    build_dir: str
    clang_target: str
    machine: int
    build_tables: Dict[str, Tuple[Optional[int], Dict[str, Tuple[int, str]]]]
    comment: str
    nested: Dict[Tuple[str, str], Tuple[str, Optional[str], int, Optional[int]]] = field(default_factory=dict)
    extra_fields: Dict[str, Dict[str, Tuple[int, str]]] = field(default_factory=dict)
    embedded: Dict[Tuple[str, str], "Type"] = field(default_factory=dict)
    reader_shapes: bool = True


X64_KERNEL = KernelSpec(
    "x64", BUILD, OUTPUT_DIR, BUILD_DIR, "x86_64-pc-windows-msvc", MACHINE_AMD64,
    {name: per_build[BUILD] for name, per_build in layouts.BUILD_LAYOUTS_X64.items() if BUILD in per_build},
    "a fake kernel with leakhunt's x64 build 19045 layouts")
# KAPC_STATE is at 0x90 in the ARM64 KTHREAD, its KernelApcPending at +0x29 (mocks/arm64_layouts.py's headers);
# KLOCK_ENTRIES is a header followed by EntryCount entries.
ARM64_KERNEL = KernelSpec(
    "arm64", 26100, os.path.join(ROOT, "tests", "data", "testkernel-arm64"), "/tmp/leakhunt-testkernel-arm64-build",
    "aarch64-pc-windows-msvc", MACHINE_ARM64, dict(ARM64_BUILD_LAYOUTS),
    "a fake ARM64 kernel with the build 26100 layouts of mocks/arm64_layouts.py",
    nested={("_KTHREAD", "ApcState"): ("struct", "_KAPC_STATE", 0x30, 0x90)},
    extra_fields={"_KTHREAD": {"ApcState.KernelApcPending": (0xB9, "u8")}},
    embedded={("_KLOCK_ENTRIES", "Entries"): Array(Tagged("_KLOCK_ENTRY"), 0)},
    reader_shapes=False)
KERNELS = {spec.arch: spec for spec in (X64_KERNEL, ARM64_KERNEL)}


def table_rows(spec: KernelSpec = X64_KERNEL) -> Dict[str, Tuple[int, Dict[str, Tuple[int, str]]]]:
    """Every structure of the kernel: the stable tables' x64 column (the same on ARM64) and the kernel's
    tables of the structures that move between builds: name -> (size, rows)."""
    tables: Dict[str, Tuple[int, Dict[str, Tuple[int, str]]]] = {}
    for stable in (layouts.STABLE_LAYOUTS, layouts.OTHER_STABLE_LAYOUTS):
        for name, (rows, size64, _) in stable.items():
            tables[name] = (size64, {row[0]: (row[1], row[3]) for row in rows if row[1] is not None})
    for name, (size, rows) in spec.build_tables.items():
        tables[name] = (size or 0, dict(rows))
    return tables


def size_of(type_: Type, described: Dict[str, Aggregate]) -> int:
    if isinstance(type_, Base):
        return type_.size
    if isinstance(type_, Pointer):
        return POINTER_SIZE
    if isinstance(type_, Array):
        return size_of(type_.element, described) * type_.count
    if isinstance(type_, Tagged):
        return described[type_.tag].size
    if isinstance(type_, EnumType):
        return 4
    return type_.size


def _leaf_type(structure: str, path: str, kind: str, spec: KernelSpec) -> Type:
    if (structure, path) in spec.embedded:
        return spec.embedded[(structure, path)]
    if (structure, path) in EMBEDDED:
        return EMBEDDED[(structure, path)]
    if kind == "ptr":
        return Pointer()
    if kind in KIND_TYPES:
        return KIND_TYPES[kind]
    if kind.startswith("ptr["):
        return Array(Pointer(), int(kind[4:-1]))
    if kind.startswith("struct["):
        return Array(ARRAY_ELEMENTS[(structure, path)], int(kind[7:-1]))
    raise ValueError(f"{structure}.{path}: no type for kind {kind!r}")


def _build(structure: str, prefix: str, base: int, kind: str, tag: Optional[str], size: int,
           rows: Dict[str, Tuple[int, str]], described: Dict[str, Aggregate], spec: KernelSpec) -> Aggregate:
    """The aggregate at ``prefix`` (absolute offset ``base``) from the rows below it."""
    children: Dict[str, None] = {}
    for path in rows:
        if path.startswith(prefix):
            children.setdefault(path[len(prefix):].split(".")[0], None)
    members: List[Member] = []
    for child in children:
        path = prefix + child
        deeper = {p: r for p, r in rows.items() if p.startswith(path + ".")}
        if deeper:
            nested_kind, nested_tag, nested_size, nested_offset = {**NESTED, **spec.nested}[(structure, path)]
            offset = rows[path][0] if path in rows else base + nested_offset
            nested = _build(structure, path + ".", offset, nested_kind, nested_tag, nested_size, rows, described, spec)
            if nested_tag:
                described[nested_tag] = nested
                members.append(Member(child, offset - base, Tagged(nested_tag)))
            else:
                members.append(Member(child, offset - base, nested))
        else:
            offset, field_kind = rows[path]
            members.append(Member(child, offset - base, _leaf_type(structure, path, field_kind, spec)))
    return Aggregate(kind, tag, size, _arrange(members, kind, size, described))


def _arrange(members: List[Member], kind: str, size: int, described: Dict[str, Aggregate]) -> List[Member]:
    """Members in offset order; overlapping ones become an unnamed union of unnamed structures."""
    if kind == "union":
        return members
    ordered = sorted(members, key=lambda m: (m.offset, -size_of(m.type, described)))
    arranged: List[Member] = []
    cluster: List[Member] = []
    cluster_end = 0
    for member in ordered + [None]:
        if member is not None and cluster and member.offset < cluster_end:
            cluster.append(member)
            cluster_end = max(cluster_end, member.offset + size_of(member.type, described))
            continue
        if cluster:
            arranged.append(cluster[0] if len(cluster) == 1 else _overlap_union(cluster, cluster_end, described))
        if member is not None:
            cluster = [member]
            cluster_end = member.offset + size_of(member.type, described)
    return arranged


def _overlap_union(cluster: List[Member], end: int, described: Dict[str, Aggregate]) -> Member:
    start = cluster[0].offset
    alternatives: List[List[Member]] = []
    for member in cluster:
        for alternative in alternatives:
            last = alternative[-1]
            if last.offset + size_of(last.type, described) <= member.offset:
                alternative.append(member)
                break
        else:
            alternatives.append([member])
    union = Aggregate("union", None, end - start)
    for alternative in alternatives:
        if len(alternative) == 1 and alternative[0].offset == start:
            union.members.append(Member(alternative[0].name, 0, alternative[0].type))
        else:
            inner = [Member(m.name, m.offset - start, m.type) for m in alternative]
            last = alternative[-1]
            union.members.append(Member("", 0, Aggregate("struct", None,
                                                         last.offset + size_of(last.type, described) - start, inner)))
    return Member("", start, union)


def structures(spec: KernelSpec = X64_KERNEL) -> Dict[str, Aggregate]:
    """The test kernel's structures by tag, in an order where each is defined before it is embedded."""
    described: Dict[str, Aggregate] = {}
    for tag, (size, rows) in MEMBER_STRUCTURES.items():
        described[tag] = Aggregate("struct", tag, size, [Member(n, o, t) for n, o, t in rows])
    tables = table_rows(spec)
    order = ["_LIST_ENTRY", "_UNICODE_STRING", "_RTL_BALANCED_NODE", "_DISPATCHER_HEADER", "_KLOCK_ENTRY"]
    order += [name for name in tables if name not in order]
    for name in order:
        size, rows = tables[name]
        rows = dict(rows)
        rows.update(spec.extra_fields.get(name, EXTRA_FIELDS.get(name, {})))
        described[name] = _build(name, "", 0, "struct", name, size or OPEN_SIZES[name], rows, described, spec)
    if spec.reader_shapes:
        described["_LEAKHUNT_SHAPES"] = _shapes()
        described["_LEAKHUNT_WIDE"] = Aggregate("struct", "_LEAKHUNT_WIDE", 8 * WIDE_MEMBERS,
                                                [Member(f"Field{n:04d}", 8 * n, ULONGLONG) for n in range(WIDE_MEMBERS)])
    return {tag: _padded(aggregate, described, [0]) for tag, aggregate in described.items()}


def _shapes() -> Aggregate:
    """Type shapes the kernel tables do not have: bit fields, arrays, an enum, qualifiers, pointers."""
    return Aggregate("struct", "_LEAKHUNT_SHAPES", 0x60, [
        Member("Flags", 0x0, ULONG),
        Member("Locked", 0x4, ULONG, bits=(0, 1)),
        Member("Kind", 0x4, ULONG, bits=(1, 4)),
        Member("Count", 0x4, ULONG, bits=(5, 20)),
        Member("Wide", 0x8, ULONGLONG, bits=(0, 40)),
        Member("Top", 0x8, ULONGLONG, bits=(40, 24)),
        Member("Grid", 0x10, Array(Array(USHORT, 3), 4)),
        Member("State", 0x28, EnumType(ENUM_TAG)),
        Member("Constant", 0x2C, ULONG, qualifiers="const volatile"),
        Member("Owner", 0x30, Pointer("_KPROCESS")),
        Member("Chain", 0x38, Pointer("_MDL", depth=2)),
        Member("Heads", 0x40, Array(Tagged("_LIST_ENTRY"), 2)),
    ])


def _padded(aggregate: Aggregate, described: Dict[str, Aggregate], counter: List[int]) -> Aggregate:
    """The aggregate with explicit padding members wherever the description leaves a gap (named
    ``_PaddingN``, numbered through the whole structure: unnamed members share its name space)."""
    members: List[Member] = []
    for member in aggregate.members:
        if isinstance(member.type, Aggregate):
            member = Member(member.name, member.offset, _padded(member.type, described, counter), member.bits,
                            member.qualifiers)
        members.append(member)
    if aggregate.kind == "union":
        largest = max((size_of(member.type, described) for member in members), default=0)
        if largest < aggregate.size:
            members.append(_padding(counter, 0, aggregate.size))
        return Aggregate(aggregate.kind, aggregate.tag, aggregate.size, members)
    padded: List[Member] = []
    position = 0
    for member in members:
        if member.offset > position:
            padded.append(_padding(counter, position, member.offset - position))
        if member.offset < position and not (member.bits and padded and padded[-1].offset == member.offset):
            raise ValueError(f"{aggregate.tag}: {member.name} at {member.offset:#x} overlaps the member before it")
        padded.append(member)
        position = max(position, member.offset + size_of(member.type, described))
    if position > aggregate.size:
        raise ValueError(f"{aggregate.tag}: members run to {position:#x}, past the size {aggregate.size:#x}")
    if position < aggregate.size:
        padded.append(_padding(counter, position, aggregate.size - position))
    return Aggregate(aggregate.kind, aggregate.tag, aggregate.size, padded)


def _padding(counter: List[int], offset: int, length: int) -> Member:
    counter[0] += 1
    return Member(f"_Padding{counter[0]}", offset, Array(UCHAR, length))


def expected_layout(name: str, described: Dict[str, Aggregate]) -> Dict[str, Tuple[int, int]]:
    """Every named member path of a structure (through unnamed members) -> (offset, byte size)."""
    paths: Dict[str, Tuple[int, int]] = {}

    def walk(aggregate: Aggregate, prefix: str, base: int) -> None:
        for member in aggregate.members:
            offset = base + member.offset
            if not member.name:
                walk(member.type, prefix, offset)
                continue
            path = prefix + member.name
            paths.setdefault(path, (offset, size_of(member.type, described)))
            inner = described[member.type.tag] if isinstance(member.type, Tagged) else member.type
            if isinstance(inner, Aggregate):
                walk(inner, path + ".", offset)

    walk(described[name], "", 0)
    return paths


# ---- C ----

def _declarator(type_: Type, name: str, indent: str) -> str:
    if isinstance(type_, Base):
        return f"{type_.name} {name}"
    if isinstance(type_, Pointer):
        target = f"struct {type_.target}" if type_.target else "void"
        return f"{target} {'*' * type_.depth}{name}"
    if isinstance(type_, Array):
        dims = ""
        while isinstance(type_, Array):
            dims += f"[{type_.count}]"
            type_ = type_.element
        return _declarator(type_, name + dims, indent)
    if isinstance(type_, Tagged):
        return f"struct {type_.tag} {name}"
    if isinstance(type_, EnumType):
        return f"enum {type_.tag} {name}"
    body = _body(type_, indent + "    ")
    return f"{type_.kind} {{\n{body}{indent}}} {name}".rstrip()


def _body(aggregate: Aggregate, indent: str) -> str:
    lines = []
    for member in aggregate.members:
        qualifiers = member.qualifiers + " " if member.qualifiers else ""
        bits = f" : {member.bits[1]}" if member.bits else ""
        lines.append(f"{indent}{qualifiers}{_declarator(member.type, member.name, indent)}{bits};\n")
    return "".join(lines)


def c_source(described: Dict[str, Aggregate], spec: KernelSpec = X64_KERNEL) -> str:
    out = [f"/* Generated by mocks/test_kernel.py: {spec.comment}. */\n",
           "#include <stddef.h>\n\n",
           "struct _KPROCESS; /* declared, never defined */\n\n",
           f"enum {ENUM_TAG} {{ " + ", ".join(f"{k} = {v}" for k, v in ENUM_CONSTANTS.items()) + " };\n\n"]
    for tag, aggregate in described.items():
        out.append(f"{aggregate.kind} {tag} {{\n{_body(aggregate, '    ')}}};\n")
        out.append(f"_Static_assert(sizeof(struct {tag}) == {aggregate.size:#x}, \"{tag}\");\n")
        if not tag.startswith("_LEAKHUNT_WIDE"):
            for path, (offset, _) in expected_layout(tag, described).items():
                if not _is_bit_field(described[tag], path):
                    out.append(f"_Static_assert(offsetof(struct {tag}, {path}) == {offset:#x}, \"{tag}.{path}\");\n")
        out.append("\n")
    for name, ctype in GLOBALS:
        if ctype.endswith("]"):
            base, dims = ctype.split(" [")
            out.append(f"{base} {name}[{dims} = {{1}};\n")
        else:
            out.append(f"{ctype} {name} = {{0}};\n")
    # One global of every described structure, so that each one's definition reaches the PDB.
    for tag in described:
        out.append(f"struct {tag} LeakhuntType{tag};\n")
    out.append(f"\nvoid {ENTRY}(void) {{ }}\n")
    return "".join(out)


def _is_bit_field(aggregate: Aggregate, path: str) -> bool:
    for member in aggregate.members:
        if member.name == path:
            return member.bits is not None
        if not member.name and isinstance(member.type, Aggregate) and _is_bit_field(member.type, path):
            return True
    return False


# ---- building ----

def build(output_dir: str, spec: KernelSpec = X64_KERNEL) -> Dict[str, str]:
    """Compile and link the test kernel in its build folder, then write its files to ``output_dir``."""
    for tool in ("clang", "lld-link"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install clang and lld (apt-get install clang lld llvm)")
    with _build_dir_lock(spec.build_dir):  # two checkouts testing at once share the fixed build folder
        return _build_locked(output_dir, spec)


@contextlib.contextmanager
def _build_dir_lock(build_dir: str):
    with open(build_dir + ".lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_locked(output_dir: str, spec: KernelSpec) -> Dict[str, str]:
    described = structures(spec)
    build_dir = spec.build_dir
    shutil.rmtree(build_dir, ignore_errors=True)
    os.makedirs(build_dir)
    with open(os.path.join(build_dir, SOURCE), "w", encoding="utf-8") as handle:
        handle.write(c_source(described, spec))
    subprocess.run(["clang", f"--target={spec.clang_target}", "-fms-extensions", "-g", "-gcodeview", "-O0",
                    "-c", SOURCE, "-o", "testkernel.obj"], cwd=build_dir, check=True)
    subprocess.run(["lld-link", "/debug", f"/pdb:{PDB}", f"/out:{EXE}", f"/entry:{ENTRY}", "/subsystem:native",
                    "/nodefaultlib", "/Brepro", f"/pdbaltpath:{PDB}", "/map:testkernel.map", "testkernel.obj"],
                   cwd=build_dir, check=True)
    with open(os.path.join(build_dir, EXE), "rb") as handle:
        guid, age, _ = codeview_identity(handle.read())
    with open(os.path.join(build_dir, "testkernel.map"), encoding="utf-8") as handle:
        rvas = map_rvas(handle.read())
    isf = isf_document(described, guid, age, rvas, spec)
    os.makedirs(output_dir, exist_ok=True)
    for name in (SOURCE, PDB, EXE):
        shutil.copyfile(os.path.join(build_dir, name), os.path.join(output_dir, name))
    isf_path = os.path.join(output_dir, isf_relative_path(guid, age))
    os.makedirs(os.path.dirname(isf_path), exist_ok=True)
    with open(isf_path, "wb") as handle:
        handle.write(lzma.compress(json.dumps(isf, indent=1, sort_keys=True).encode("utf-8"), preset=6))
    return {"guid": guid, "age": str(age)}


def isf_relative_path(guid: str, age: int) -> str:
    """Where the ISF goes: a volatility3 symbols folder (``windows/ntkrnlmp.pdb/GUID-AGE.json.xz``)."""
    return os.path.join("isf", "windows", PDB, f"{guid}-{age}.json.xz")


def codeview_identity(image: bytes) -> Tuple[str, int, str]:
    """(GUID in symbol-store form, age, PDB name) of the image's CodeView RSDS debug record."""
    (pe_offset,) = struct.unpack_from("<I", image, 0x3C)
    optional = pe_offset + 24
    debug_rva, debug_size = struct.unpack_from("<II", image, optional + 112 + 6 * 8)
    sections = struct.unpack_from("<H", image, pe_offset + 6)[0]
    table = optional + struct.unpack_from("<H", image, pe_offset + 20)[0]
    for number in range(sections):
        virtual_size, virtual_address, _, raw_pointer = struct.unpack_from("<IIII", image, table + 40 * number + 8)
        if virtual_address <= debug_rva < virtual_address + max(virtual_size, 1):
            entry = raw_pointer + debug_rva - virtual_address
            for at in range(entry, entry + debug_size, 28):
                kind, size, _, pointer = struct.unpack_from("<IIII", image, at + 12)
                if kind == 2 and image[pointer:pointer + 4] == b"RSDS":  # IMAGE_DEBUG_TYPE_CODEVIEW
                    data1, data2, data3 = struct.unpack_from("<IHH", image, pointer + 4)
                    data4 = image[pointer + 12:pointer + 20].hex().upper()
                    (age,) = struct.unpack_from("<I", image, pointer + 20)
                    name = image[pointer + 24:pointer + size].split(b"\x00")[0].decode()
                    return f"{data1:08X}{data2:04X}{data3:04X}{data4}", age, name
    raise ValueError("the image has no CodeView record")


def map_rvas(text: str) -> Dict[str, int]:
    """Public symbol -> RVA, from lld-link's /map (``0003:00000000  Name  Rva+Base  obj``)."""
    base = None
    rvas: Dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if line.strip().startswith("Preferred load address is"):
            base = int(words[-1], 16)
        elif len(words) == 4 and ":" in words[0] and words[3].endswith(".obj") and base is not None:
            rvas[words[1]] = int(words[2], 16) - base
    return rvas


# ---- ISF ----

BASE_TYPES = {
    "char": ("char", 1, True), "unsigned char": ("char", 1, False), "short": ("int", 2, True),
    "unsigned short": ("int", 2, False), "long": ("int", 4, True), "unsigned long": ("int", 4, False),
    "int": ("int", 4, True), "unsigned long long": ("int", 8, False), "pointer": ("int", 8, False),
    "void": ("void", 0, True),
}


def isf_document(described: Dict[str, Aggregate], guid: str, age: int, rvas: Dict[str, int],
                 spec: KernelSpec = X64_KERNEL) -> dict:
    """The volatility3 ISF of the test kernel: the same structures, the globals' RVAs, the PDB identity."""
    user_types: Dict[str, dict] = {}
    unnamed: Dict[int, str] = {}

    def unnamed_name(aggregate: Aggregate) -> str:
        if id(aggregate) not in unnamed:
            unnamed[id(aggregate)] = f"__unnamed_{len(unnamed) + 1:x}"
            add(unnamed[id(aggregate)], aggregate)
        return unnamed[id(aggregate)]

    def type_of(type_: Type, bits: Optional[Tuple[int, int]] = None) -> dict:
        if bits is not None:
            return {"kind": "bitfield", "bit_position": bits[0], "bit_length": bits[1], "type": type_of(type_)}
        if isinstance(type_, Base):
            return {"kind": "base", "name": type_.name}
        if isinstance(type_, Pointer):
            subtype: dict = ({"kind": "struct", "name": type_.target} if type_.target
                             else {"kind": "base", "name": "void"})
            for _ in range(type_.depth):
                subtype = {"kind": "pointer", "subtype": subtype}
            return subtype
        if isinstance(type_, Array):
            return {"kind": "array", "count": type_.count, "subtype": type_of(type_.element)}
        if isinstance(type_, Tagged):
            return {"kind": described[type_.tag].kind, "name": type_.tag}
        if isinstance(type_, EnumType):
            return {"kind": "enum", "name": type_.tag}
        return {"kind": type_.kind, "name": unnamed_name(type_)}

    def fields(aggregate: Aggregate, base: int, into: Dict[str, dict]) -> Dict[str, dict]:
        for member in aggregate.members:
            if not member.name:  # flattened, as in the PDB's field list
                fields(member.type, base + member.offset, into)
            else:
                into.setdefault(member.name, {"offset": base + member.offset,
                                              "type": type_of(member.type, member.bits)})
        return into

    def add(name: str, aggregate: Aggregate) -> None:
        user_types[name] = {"kind": aggregate.kind, "size": aggregate.size, "fields": fields(aggregate, 0, {})}

    for tag, aggregate in described.items():
        add(tag, aggregate)
    symbols = {name: {"address": rvas[name]} for name, _ in GLOBALS}
    symbols[ENTRY] = {"address": rvas[ENTRY]}
    return {
        "metadata": {"format": "6.1.0", "producer": {"name": "leakhunt mocks/test_kernel.py", "version": "1"},
                     "windows": {"pdb": {"GUID": guid, "age": age, "database": PDB, "machine_type": spec.machine}}},
        "base_types": {name: {"endian": "little", "kind": kind, "signed": signed, "size": size}
                       for name, (kind, size, signed) in BASE_TYPES.items()},
        "user_types": user_types,
        "enums": {ENUM_TAG: {"base": "int", "size": 4, "constants": dict(ENUM_CONSTANTS)}},
        "symbols": symbols,
    }


def committed_files(output_dir: str = OUTPUT_DIR) -> List[str]:
    """The generated files under ``output_dir``, relative to it, sorted."""
    found = []
    for folder, _, names in os.walk(output_dir):
        found.extend(os.path.relpath(os.path.join(folder, name), output_dir) for name in names)
    return sorted(found)


def check(spec: KernelSpec = X64_KERNEL) -> int:
    """Rebuild in a scratch folder; 0 when every file equals the committed one, 1 otherwise."""
    folder = os.path.relpath(spec.output_dir, ROOT)
    with tempfile.TemporaryDirectory(prefix="leakhunt-testkernel-") as scratch:
        build(scratch, spec)
        rebuilt, committed = committed_files(scratch), committed_files(spec.output_dir)
        differing = [name for name in rebuilt if name not in committed or _read(os.path.join(scratch, name))
                     != _read(os.path.join(spec.output_dir, name))]
        differing += [name for name in committed if name not in rebuilt]
    for name in differing:
        print(f"differs from the rebuilt kernel: {folder}/{name}")
    if not differing:
        print(f"{folder}/ is what mocks/test_kernel.py builds")
    return 1 if differing else 0


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild in a scratch folder and compare")
    parser.add_argument("--arch", choices=sorted(KERNELS), default="x64", help="which test kernel (default x64)")
    args = parser.parse_args(argv)
    spec = KERNELS[args.arch]
    if args.check:
        return check(spec)
    shutil.rmtree(spec.output_dir, ignore_errors=True)
    identity = build(spec.output_dir, spec)
    print(f"wrote {os.path.relpath(spec.output_dir, ROOT)}/: {PDB} {identity['guid']}-{identity['age']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
