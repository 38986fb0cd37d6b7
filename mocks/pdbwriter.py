"""A small MSF 7.0 / PDB writer, for tests: type records and symbols clang does not emit.

clang writes real PDBs (``mocks/test_kernel.py``), but not every record recent Microsoft kernel PDBs
hold: LF_STRUCTURE2 / LF_CLASS2 / LF_UNION2 (32-bit properties, count and size as numeric leaves),
unique names, C++ field-list leaves, and no hostile file at all. This writer lays out the same
container from type records and symbols given one by one:

- streams 0 (empty old directory), 1 (PDB info: VC70, signature, age, GUID, an empty named stream map,
  the VC140 feature code), 2 (TPI, V80), 3 (DBI: header, optional debug header naming the section
  header stream, machine), 4 (an empty IPI), 5 (section headers), 6 (symbol records);
- blocks after the superblock and the two free block map blocks (skipping the free block map blocks
  of every later interval), then the stream directory and its block map.

It writes no hash streams, module streams or global/public symbol hash tables (the reader does not use
them), so it makes test inputs, not PDBs for other tools: llvm-pdbutil 14, for one, needs the module
list these files lack. The records themselves follow cvinfo.h; the same reader reads clang's PDBs,
which llvm-pdbutil checks (tests/test_pdb.py).
"""
from __future__ import annotations

import struct
from typing import Iterable, List, Optional, Sequence, Tuple

from pykd_ext.symbols import pdb as fmt

MSF_FIRST_DATA_BLOCK = 3  # 0 superblock, 1 and 2 the free block maps
PUBLIC = 3  # CV_fldattr_t access: public


def numeric(value: int) -> bytes:
    """A numeric leaf: the value itself below 0x8000, else the narrowest integer leaf that holds it."""
    if 0 <= value < 0x8000:
        return struct.pack("<H", value)
    kinds = ((0x8002, "<H"), (0x8004, "<I"), (0x800A, "<Q")) if value >= 0 else \
        ((0x8000, "<b"), (0x8001, "<h"), (0x8003, "<i"), (0x8009, "<q"))
    for kind, code in kinds:
        try:
            return struct.pack("<H", kind) + struct.pack(code, value)
        except struct.error:
            continue
    raise ValueError(f"no numeric leaf holds {value}")


def c_string(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def pad_leaf(data: bytes) -> bytes:
    """Pad a field-list leaf or a type record payload to 4 bytes with LF_PAD bytes (0xF0 + remaining)."""
    remaining = -len(data) % 4
    return data + bytes(0xF0 + n for n in range(remaining, 0, -1))


# ---- field-list leaves ----

def member(name: str, type_index: int, offset: int) -> bytes:
    return pad_leaf(struct.pack("<HHI", fmt.LF_MEMBER, PUBLIC, type_index) + numeric(offset) + c_string(name))


def continuation(type_index: int) -> bytes:
    return struct.pack("<HHI", fmt.LF_INDEX, 0, type_index)


def nested_type(name: str, type_index: int) -> bytes:
    return pad_leaf(struct.pack("<HHI", fmt.LF_NESTTYPE, 0, type_index) + c_string(name))


def one_method(name: str, type_index: int, introducing_virtual: bool = False) -> bytes:
    attributes = PUBLIC | ((4 << 2) if introducing_virtual else 0)
    vtable_offset = struct.pack("<I", 0) if introducing_virtual else b""
    return pad_leaf(struct.pack("<HHI", fmt.LF_ONEMETHOD, attributes, type_index) + vtable_offset + c_string(name))


def static_member(name: str, type_index: int) -> bytes:
    return pad_leaf(struct.pack("<HHI", fmt.LF_STMEMBER, PUBLIC, type_index) + c_string(name))


def base_class(type_index: int, offset: int) -> bytes:
    return pad_leaf(struct.pack("<HHI", fmt.LF_BCLASS, PUBLIC, type_index) + numeric(offset))


def vfunctab(type_index: int) -> bytes:
    return struct.pack("<HHI", fmt.LF_VFUNCTAB, 0, type_index)


def enumerate_value(name: str, value: int) -> bytes:
    return pad_leaf(struct.pack("<HH", fmt.LF_ENUMERATE, PUBLIC) + numeric(value) + c_string(name))


class TypeRecords:
    """TPI type records, numbered from 0x1000 in the order they are added."""

    MAX_RECORD = 0xFF00  # the longest record MSVC writes; field lists longer than that continue

    def __init__(self):
        self.records: List[bytes] = []

    @property
    def next_index(self) -> int:
        return fmt.FIRST_TYPE_INDEX + len(self.records)

    def add(self, kind: int, payload: bytes) -> int:
        """A record of any kind; the payload is padded to 4 bytes. Returns its type index."""
        body = pad_leaf(struct.pack("<H", kind) + payload)
        self.records.append(struct.pack("<H", len(body)) + body)
        return self.next_index - 1

    def pointer(self, referent: int, size: int = 8) -> int:
        kind = 0x0C if size == 8 else 0x0A  # CV_PTR_64, CV_PTR_NEAR32
        return self.add(fmt.LF_POINTER, struct.pack("<II", referent, kind | size << 13))

    def modifier(self, referent: int, const: bool = False, volatile: bool = False) -> int:
        return self.add(fmt.LF_MODIFIER, struct.pack("<IH", referent, int(const) | int(volatile) << 1))

    def array(self, element: int, total_size: int, index_type: int = 0x23) -> int:
        return self.add(fmt.LF_ARRAY, struct.pack("<II", element, index_type) + numeric(total_size) + c_string(""))

    def bitfield(self, base: int, length: int, position: int) -> int:
        return self.add(fmt.LF_BITFIELD, struct.pack("<IBB", base, length, position))

    def field_list(self, leaves: Iterable[bytes]) -> int:
        """Field lists holding ``leaves``, split into LF_INDEX-continued records where too long; the
        index of the first (the continuations are added before it, as MSVC and clang do)."""
        chunks: List[List[bytes]] = [[]]
        size = 0
        for leaf in leaves:
            if size + len(leaf) > self.MAX_RECORD - 16 and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append(leaf)
            size += len(leaf)
        following = 0
        for chunk in reversed(chunks):
            data = b"".join(chunk) + (continuation(following) if following else b"")
            following = self.add(fmt.LF_FIELDLIST, data)
        return following

    def structure(self, name: str, field_list: int, size: int, count: int = 0, kind: int = fmt.LF_STRUCTURE,
                  forward: bool = False, unique_name: Optional[str] = None) -> int:
        """LF_STRUCTURE / LF_CLASS / LF_INTERFACE, or their 32-bit-property forms (LF_STRUCTURE2...)."""
        properties = (fmt.PROP_FORWARD_REF if forward else 0) | (fmt.PROP_HAS_UNIQUE_NAME if unique_name else 0)
        names = c_string(name) + (c_string(unique_name) if unique_name else b"")
        if kind in fmt.CLASS2_KINDS:
            fixed = struct.pack("<IIII", properties, field_list, 0, 0) + numeric(count) + numeric(size)
        else:
            fixed = struct.pack("<HHIII", count, properties, field_list, 0, 0) + numeric(size)
        return self.add(kind, fixed + names)

    def union(self, name: str, field_list: int, size: int, count: int = 0, kind: int = fmt.LF_UNION,
              forward: bool = False, unique_name: Optional[str] = None) -> int:
        properties = (fmt.PROP_FORWARD_REF if forward else 0) | (fmt.PROP_HAS_UNIQUE_NAME if unique_name else 0)
        names = c_string(name) + (c_string(unique_name) if unique_name else b"")
        if kind == fmt.LF_UNION2:
            fixed = struct.pack("<II", properties, field_list) + numeric(count) + numeric(size)
        else:
            fixed = struct.pack("<HHI", count, properties, field_list) + numeric(size)
        return self.add(kind, fixed + names)

    def enum(self, name: str, underlying: int, field_list: int, count: int = 0) -> int:
        return self.add(fmt.LF_ENUM, struct.pack("<HHII", count, 0, underlying, field_list) + c_string(name))

    def stream(self) -> bytes:
        records = b"".join(self.records)
        header = struct.pack("<IIIIIHHIIiIiIiI", 20040203, 56, fmt.FIRST_TYPE_INDEX, self.next_index, len(records),
                             fmt.NO_STREAM, fmt.NO_STREAM, 4, 0x3FFFF, 0, 0, 0, 0, 0, 0)
        return header + records


def symbol_record(kind: int, name: str, segment: int, offset: int, type_or_flags: int = 0) -> bytes:
    """S_PUB32 (flags) or S_GDATA32 / S_LDATA32 (type index): offset, segment, name; 4-byte aligned."""
    body = struct.pack("<HIIH", kind, type_or_flags, offset, segment) + c_string(name)
    body += bytes(-(len(body) + 2) % 4)
    return struct.pack("<H", len(body)) + body


def section_headers(virtual_addresses: Sequence[int], virtual_size: int = 0x1000) -> bytes:
    headers = b""
    for number, address in enumerate(virtual_addresses):
        headers += struct.pack("<8sIIIIIIHHI", f".sec{number}".encode(), virtual_size, address, 0, 0, 0, 0, 0, 0,
                               0x40000040)
    return headers


def info_stream(guid: bytes, age: int, signature: int = 0x5EED) -> bytes:
    """PDB info: VC70, signature, age, GUID; an empty named stream map (capacity 1); VC140."""
    # string buffer size 0; hash table size 0, capacity 1; present bits: 1 word, 0; deleted bits: 0 words
    named_streams = struct.pack("<IIIIII", 0, 0, 1, 1, 0, 0)
    return struct.pack("<III", 20000404, signature, age) + guid + named_streams + struct.pack("<I", 20140508)


def dbi_stream(age: int, machine: int, symbol_stream: int, section_stream: int,
               omap_stream: int = fmt.NO_STREAM, original_section_stream: int = fmt.NO_STREAM) -> bytes:
    debug_header = [fmt.NO_STREAM] * 11
    debug_header[fmt.DEBUG_HEADER_SECTION_HEADERS] = section_stream
    debug_header[fmt.DEBUG_HEADER_OMAP_FROM_SOURCE] = omap_stream
    debug_header[fmt.DEBUG_HEADER_ORIGINAL_SECTION_HEADERS] = original_section_stream
    optional = struct.pack(f"<{len(debug_header)}H", *debug_header)
    header = fmt.DBI_HEADER.pack(-1, 19990903, age, fmt.NO_STREAM, 0x8E1D, fmt.NO_STREAM, 0, symbol_stream, 0,
                                 0, 0, 0, 0, 0, 0, len(optional), 0, 0, machine, 0)
    return header + optional


def msf(streams: Sequence[bytes], block_size: int = 4096) -> bytes:
    """The MSF 7.0 container of ``streams`` (stream i is streams[i])."""
    blocks: List[bytes] = []
    next_block = [MSF_FIRST_DATA_BLOCK]

    def allocate(data: bytes) -> List[int]:
        numbers = []
        for start in range(0, len(data), block_size):
            while next_block[0] % block_size in (1, 2):  # the free block maps of each interval
                next_block[0] += 1
            numbers.append(next_block[0])
            blocks.append((next_block[0], data[start:start + block_size].ljust(block_size, b"\x00")))
            next_block[0] += 1
        return numbers

    stream_blocks = [allocate(data) for data in streams]
    directory = struct.pack("<I", len(streams)) + b"".join(struct.pack("<I", len(data)) for data in streams)
    directory += b"".join(struct.pack(f"<{len(numbers)}I", *numbers) for numbers in stream_blocks)
    directory_blocks = allocate(directory)
    (block_map,) = allocate(struct.pack(f"<{len(directory_blocks)}I", *directory_blocks))
    block_count = next_block[0]
    image = bytearray(block_count * block_size)
    image[:56] = fmt.MSF_MAGIC + struct.pack("<6I", block_size, 1, block_count, len(directory), 0, block_map)
    for fpm_block in range(1, block_count, block_size):
        for number in (fpm_block, fpm_block + 1):
            if number < block_count:
                image[number * block_size:(number + 1) * block_size] = b"\xff" * block_size
    for number, data in blocks:
        image[number * block_size:(number + 1) * block_size] = data
    return bytes(image)


def write_pdb(types: TypeRecords, symbols: Sequence[bytes] = (), sections: Sequence[int] = (0x1000, 0x2000),
              guid: bytes = bytes(range(16)), age: int = 1, machine: int = 0x8664, block_size: int = 4096,
              info_age: Optional[int] = None, omap: Sequence[Tuple[int, int]] = (),
              original_sections: Sequence[int] = (), section_size: int = 0x1000) -> bytes:
    """A whole PDB: info, TPI, DBI, an empty IPI, section headers (each ``section_size`` bytes) and
    symbol records. ``info_age``: an info stream age other than the DBI's ``age`` (as pdbcopy leaves
    it). ``omap``: (source RVA, target RVA) pairs of an image rearranged after linking, whose symbols'
    section:offset refer to ``original_sections`` (streams 7 and 8)."""
    empty_ipi = TypeRecords().stream()
    omap_streams = [b"".join(struct.pack("<II", *pair) for pair in omap), section_headers(original_sections)] \
        if omap else []
    dbi = dbi_stream(age, machine, 6, 5, *((7, 8) if omap else ()))
    streams = [b"", info_stream(guid, age if info_age is None else info_age), types.stream(), dbi, empty_ipi,
               section_headers(sections, section_size), b"".join(symbols)] + omap_streams
    return msf(streams, block_size)


def guid_bytes(text: str) -> bytes:
    """The 16 stored bytes of a GUID given in symbol-store form (the reverse of the reader's formatting)."""
    raw = bytes.fromhex(text)
    data1, data2, data3 = struct.unpack(">IHH", raw[:8])
    return struct.pack("<IHH", data1, data2, data3) + raw[8:]


def class2_sample() -> bytes:
    """LF_STRUCTURE2 / LF_UNION2 / LF_CLASS2 definitions with forward references by unique name, an
    unnamed member, C++ field-list leaves to step over, and numeric leaves of every integer width."""
    types = TypeRecords()
    # Another _NODE (another unique name), defined first: found by name, never by the forward reference.
    other_fields = types.field_list([member("Other", 0x74, 0)])
    types.structure("_NODE", other_fields, 4, kind=fmt.LF_CLASS2, unique_name=".?AV_NODE@other@@")
    node_forward = types.structure("_NODE", 0, 0, kind=fmt.LF_STRUCTURE2, forward=True, unique_name=".?AU_NODE@@")
    node_pointer = types.pointer(node_forward)
    bits = types.bitfield(0x22, 3, 4)  # unsigned long : 3 at bit 4
    name = types.array(0x20, 15)
    union_fields = types.field_list([member("Whole", 0x23, 0), member("Low", 0x75, 0)])
    union = types.union("_NODE::<unnamed-tag>", union_fields, 8, count=2, kind=fmt.LF_UNION2)
    volatile_pointer = types.modifier(node_pointer, volatile=True)
    enum_fields = types.field_list([enumerate_value("Red", 0), enumerate_value("Far", 0x12345678),
                                    enumerate_value("Minus", -2)])
    colour = types.enum("_COLOUR", 0x74, enum_fields, count=3)
    method = types.add(0x1009, struct.pack("<IIIBBHII", 0x03, node_forward, 0, 0, 0, 0, 0, 0))  # LF_MFUNCTION
    fields = types.field_list([
        base_class(0x1000, 0), vfunctab(node_pointer),
        member("Next", volatile_pointer, 0x8), member("Bits", bits, 0x10),
        member("Name", name, 0x14), nested_type("Inner", union),
        member("", union, 0x28),  # an unnamed member: its members are the structure's
        one_method("Walk", method), one_method("Visit", method, introducing_virtual=True),
        static_member("Count", 0x74), member("Colour", colour, 0x30),
        member("Far", 0x23, 0x12348), member("Farther", 0x23, 0x123456788),
    ])
    types.structure("_NODE", fields, 0x123456790, count=12, kind=fmt.LF_STRUCTURE2, unique_name=".?AU_NODE@@")
    holder_fields = types.field_list([member("Node", node_forward, 0), member("Tail", 0x74, 0x40)])
    types.structure("_HOLDER", holder_fields, 0x48, kind=fmt.LF_CLASS2)
    symbols = [symbol_record(fmt.S_PUB32, "KiBugCheckDriver", 2, 0x10),
               symbol_record(fmt.S_GDATA32, "PsLoadedModuleList", 1, 0x20, 0x1000),
               symbol_record(fmt.S_LDATA32, "KiLocal", 2, 0x30, 0x1000)]
    return write_pdb(types, symbols, sections=[0x1000, 0x5000], guid=guid_bytes("00112233445566778899AABBCCDDEEFF"),
                     age=3)


# Primitive type indices (cvinfo.h) of the test kernel's base types, and of void * (64-bit).
PRIMITIVE_INDICES = {"unsigned char": 0x20, "unsigned short": 0x21, "short": 0x11, "unsigned long": 0x22,
                     "long": 0x12, "unsigned long long": 0x23}
VOID_POINTER_64 = 0x603


def kernel_types(types: TypeRecords, described, kind: int = fmt.LF_STRUCTURE2) -> None:
    """Add the test kernel's structures (``mocks.test_kernel.structures()``) as Microsoft's compiler
    writes them: forward references for members' structure types, unnamed members flattened into the
    enclosing field list, unnamed nested structures as ``<unnamed-tag>`` records, bit fields, arrays,
    modifiers; every named structure as a ``kind`` record (LF_STRUCTURE2 by default)."""
    from mocks import test_kernel as model

    forward = {}
    enums = {}

    def forward_of(tag: str) -> int:
        if tag not in forward:
            record_kind = kind if tag not in described or described[tag].kind == "struct" else fmt.LF_UNION
            if record_kind == fmt.LF_UNION:
                forward[tag] = types.union(tag, 0, 0, forward=True)
            else:
                forward[tag] = types.structure(tag, 0, 0, kind=record_kind, forward=True)
        return forward[tag]

    def type_index(type_) -> int:
        if isinstance(type_, model.Base):
            return PRIMITIVE_INDICES[type_.name]
        if isinstance(type_, model.Pointer):
            index = forward_of(type_.target) if type_.target else VOID_POINTER_64
            for _ in range(type_.depth - (0 if type_.target else 1)):
                index = types.pointer(index)
            return index
        if isinstance(type_, model.Array):
            return types.array(type_index(type_.element), model.size_of(type_, described))
        if isinstance(type_, model.Tagged):
            return forward_of(type_.tag)
        if isinstance(type_, model.EnumType):
            if type_.tag not in enums:
                values = [enumerate_value(name, value) for name, value in model.ENUM_CONSTANTS.items()]
                enums[type_.tag] = types.enum(type_.tag, 0x74, types.field_list(values), len(values))
            return enums[type_.tag]
        return define(type_, "<unnamed-tag>")

    def leaves(aggregate, base: int) -> List[bytes]:
        out = []
        for item in aggregate.members:
            if not item.name:
                out += leaves(item.type, base + item.offset)
                continue
            index = type_index(item.type)
            if item.bits:
                index = types.bitfield(index, item.bits[1], item.bits[0])
            if item.qualifiers:
                index = types.modifier(index, const="const" in item.qualifiers, volatile="volatile" in item.qualifiers)
            out.append(member(item.name, index, base + item.offset))
        return out

    def define(aggregate, name: str) -> int:
        field_list = types.field_list(leaves(aggregate, 0))
        if aggregate.kind == "union":
            return types.union(name, field_list, aggregate.size, len(aggregate.members), kind=fmt.LF_UNION2)
        return types.structure(name, field_list, aggregate.size, len(aggregate.members), kind=kind)

    for tag, aggregate in described.items():
        define(aggregate, tag)
