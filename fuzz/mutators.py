"""Ways to damage leakhunt's inputs the way crashed machines and file transfers do.

Memory (a scenario's ``SnapshotData``): flipped bits, zeroed or missing (paged out) pages, objects
overwritten with random words, and hostile field values written through leakhunt's own layout tables:
self pointers, cycles, absurd sizes. Snapshot files: truncation, flipped bytes, damaged ZIP header
fields, manifest values of the wrong type or range, missing keys and unknown versions.

Every helper takes its randomness from an explicit ``random.Random`` or from explicit arguments, so the
seeded fuzz loops (``fuzz/fuzz_*.py``) and the hypothesis tests (``tests/test_robust_*.py``) share them
and any failure can be replayed.
"""
from __future__ import annotations

import copy
import io
import json
import os
import random
import struct
import tempfile
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

from pykd_ext.kernel.io import IoReader
from pykd_ext.kernel.modules import ModuleMap
from pykd_ext.layouts import KIND_SIZES, Layouts, builtin_layout
from pykd_ext.targets.base import PAGE_SIZE
from pykd_ext.targets.snapshot import MANIFEST_NAME, PAGES_NAME, SnapshotData, SnapshotTarget, save_snapshot

# ---- memory --------------------------------------------------------------------------------------


def clone(data: SnapshotData) -> SnapshotData:
    """A copy of ``data`` whose memory can be damaged without touching the original."""
    twin = copy.copy(data)
    twin.pages = dict(data.pages)
    twin.physical = dict(data.physical)
    twin.unreadable = set(data.unreadable)
    twin.symbols = dict(data.symbols)
    return twin


def poke(data: SnapshotData, address: int, raw: bytes) -> bool:
    """Overwrite memory at a virtual address; returns False (and writes nothing) if a page is missing."""
    first, last = address & ~(PAGE_SIZE - 1), (address + len(raw) - 1) & ~(PAGE_SIZE - 1)
    pages = range(first, last + PAGE_SIZE, PAGE_SIZE)
    if not raw or any(page not in data.pages for page in pages):
        return False
    for page in pages:
        content = bytearray(data.pages[page])
        start, stop = max(address, page), min(address + len(raw), page + PAGE_SIZE)
        content[start - page:stop - page] = raw[start - address:stop - address]
        data.pages[page] = bytes(content)
    return True


def field_size(data: SnapshotData, struct_name: str, field: str) -> int:
    kind = builtin_layout(struct_name, data.pointer_size, data.build).kinds[field]
    return data.pointer_size if kind == "ptr" else KIND_SIZES[kind]


def field_address(data: SnapshotData, struct_name: str, address: int, field: str) -> int:
    return address + builtin_layout(struct_name, data.pointer_size, data.build).offsets[field]


def write_field(data: SnapshotData, struct_name: str, address: int, field: str, value: int) -> bool:
    """Write ``value`` (truncated to the field's width) into a field of the structure at ``address``."""
    size = field_size(data, struct_name, field)
    raw = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return poke(data, field_address(data, struct_name, address, field), raw)


def flip_bit(data: SnapshotData, address: int, bit: int) -> bool:
    page = address & ~(PAGE_SIZE - 1)
    if page not in data.pages:
        return False
    return poke(data, address, bytes([data.pages[page][address - page] ^ (1 << (bit % 8))]))


def zero_page(data: SnapshotData, page: int) -> None:
    if page in data.pages:
        data.pages[page] = bytes(PAGE_SIZE)


def drop_page(data: SnapshotData, page: int) -> None:
    """Make a page unreadable, as if it were paged out or missing from the dump."""
    data.pages.pop(page, None)
    data.physical.pop(page, None)


def random_words(rng: random.Random, count: int, pointer_size: int, alphabet: Sequence[int] = ()) -> bytes:
    """``count`` pointer-sized words: random bits, or values drawn from ``alphabet`` when given."""
    mask = (1 << (8 * pointer_size)) - 1
    words = [(rng.choice(alphabet) if alphabet and rng.random() < 0.8 else rng.getrandbits(8 * pointer_size)) & mask
             for _ in range(count)]
    return struct.pack(("<%dQ" if pointer_size == 8 else "<%dI") % count, *words)


def overwrite_object(data: SnapshotData, address: int, size: int, rng: random.Random,
                     alphabet: Sequence[int] = ()) -> bool:
    """Replace the ``size`` bytes of an object with random words (a freed and reused allocation)."""
    words = (size + data.pointer_size - 1) // data.pointer_size
    return poke(data, address, random_words(rng, words, data.pointer_size, alphabet)[:size])


def pointer_alphabet(data: SnapshotData, objects: Dict[str, List[int]]) -> List[int]:
    """Values that make random memory dangerous: the bug check parameters, the addresses of real objects
    and pages, small integers (sizes, Type codes, counts), page frame numbers and user page addresses."""
    values = set(data.bugcheck.parameters) | {0, 1, 3, 4, 5, 6, 0xFFFF, 0xFFFFFFFF}
    for addresses in objects.values():
        values.update(addresses)
    values.update(list(data.pages)[:64])
    values.update(pfn for pfn in list(data.physical.values())[:64])
    values.update(pa // PAGE_SIZE for pa in list(data.physical.values())[:64])
    values.update(range(0x10, 0x200, 0x8))
    values.update((0x1D45A000 + n) << 12 for n in range(4))
    values.discard(None)
    return sorted(values)


def randomize_memory(data: SnapshotData, rng: random.Random, alphabet: Sequence[int] = ()) -> None:
    """Replace every page with random words (drawn from ``alphabet`` four times in five when given)."""
    for page in list(data.pages):
        data.pages[page] = random_words(rng, PAGE_SIZE // data.pointer_size, data.pointer_size, alphabet)


def scenario_objects(data: SnapshotData, expected: Dict[str, object]) -> Dict[str, List[int]]:
    """The kernel objects of an undamaged scenario, by structure name: the MDLs and IRPs it built, and
    the devices, drivers and file objects their stacks lead to (read from the undamaged memory)."""
    objects: Dict[str, List[int]] = {"_MDL": [], "_IRP": [], "_DEVICE_OBJECT": [], "_DRIVER_OBJECT": [],
                                     "_FILE_OBJECT": [], "_EPROCESS": [int(expected["process"])]}

    def add(kind: str, address: Optional[int]) -> None:
        if address and address not in objects[kind]:
            objects[kind].append(address)

    for key in ("locked_mdls", "decoy_mdls", "stale_mdls"):
        for address in expected.get(key, []) or []:
            add("_MDL", address)
    add("_MDL", expected.get("unlock_mdl"))
    for address in expected.get("devices", []) or []:  # devices a driver keeps MDLs in the extension of
        add("_DEVICE_OBJECT", address)
    target = SnapshotTarget(data)
    layouts = Layouts(target)
    reader = IoReader(target, layouts, ModuleMap(target.modules()))
    for address in list(expected.get("irps", [])) + list(expected.get("unrelated_irps", [])):
        add("_IRP", address)
        irp = reader.read_irp(address)
        add("_MDL", irp.mdl_address)
        add("_FILE_OBJECT", irp.original_file_object)
        for location in irp.stack:
            if location.device is not None:
                add("_DEVICE_OBJECT", location.device.address)
                if location.device.driver is not None:
                    add("_DRIVER_OBJECT", location.device.driver.address)
    return objects


def object_size(data: SnapshotData, struct_name: str) -> int:
    layout = builtin_layout(struct_name, data.pointer_size, data.build)
    if layout is None or not layout.size:
        return 0x100
    return layout.size


# Hostile values for one field, as (structure, field, value); ``SELF`` is replaced by the object's own
# address and ``OTHER`` by the address of another object of the same kind (a two-object cycle).
SELF = "self"
OTHER = "other"
HOSTILE_FIELDS: List[Tuple[str, str, object]] = [
    ("_MDL", "Size", 0xFFFF), ("_MDL", "Size", 0), ("_MDL", "Size", 0x8000),
    ("_MDL", "ByteCount", 0xFFFFFFFF), ("_MDL", "ByteOffset", 0xFFFFFFFF), ("_MDL", "MdlFlags", 0xFFFF),
    ("_MDL", "Next", SELF), ("_MDL", "Next", OTHER), ("_MDL", "StartVa", 0), ("_MDL", "Process", 0),
    ("_IRP", "StackCount", 255), ("_IRP", "StackCount", 0), ("_IRP", "CurrentLocation", 0),
    ("_IRP", "CurrentLocation", 255), ("_IRP", "Size", 0xFFFF), ("_IRP", "MdlAddress", SELF),
    ("_IRP", "MdlAddress", OTHER), ("_IRP", "Tail.Overlay.CurrentStackLocation", SELF),
    ("_IRP", "Tail.Overlay.OriginalFileObject", SELF), ("_IRP", "Type", 3),
    ("_DEVICE_OBJECT", "DriverObject", SELF), ("_DEVICE_OBJECT", "DriverObject", OTHER),
    ("_DEVICE_OBJECT", "DriverObject", 0), ("_DEVICE_OBJECT", "Type", 4), ("_DEVICE_OBJECT", "Size", 0),
    ("_DRIVER_OBJECT", "Type", 3), ("_DRIVER_OBJECT", "Size", 0xFFFF), ("_DRIVER_OBJECT", "DriverStart", 0),
    ("_DRIVER_OBJECT", "DriverStart", SELF), ("_FILE_OBJECT", "Type", 6),
]

# Hostile UNICODE_STRING headers (Length, MaximumLength, Buffer): Length past MaximumLength, odd,
# huge, a NULL buffer with a length, a buffer pointing at the header itself.
HOSTILE_STRINGS: List[Tuple[int, int, object]] = [
    (0x20, 0x10, None), (0x11, 0x20, None), (0xFFFE, 0xFFFE, None), (0x10, 0x12, 0), (0x10, 0x10, SELF),
    (0xFFFF, 0xFFFF, None),
]
STRING_FIELDS = {"_DRIVER_OBJECT": "DriverName", "_FILE_OBJECT": "FileName"}


def resolve(value: object, address: int, others: Sequence[int]) -> int:
    if value == SELF:
        return address
    if value == OTHER:
        candidates = [o for o in others if o != address]
        return candidates[0] if candidates else address
    return int(value)  # type: ignore[arg-type]


def write_hostile_field(data: SnapshotData, objects: Dict[str, List[int]], struct_name: str, field: str,
                        value: object, index: int) -> bool:
    """Write one HOSTILE_FIELDS entry into the ``index``-th object of that kind (modulo how many exist)."""
    addresses = objects.get(struct_name) or []
    if not addresses:
        return False
    address = addresses[index % len(addresses)]
    other = resolve(value, address, addresses)
    written = write_field(data, struct_name, address, field, other)
    if written and value == OTHER:
        # Close the cycle: the other object points back (MDL.Next, DEVICE_OBJECT.DriverObject...).
        write_field(data, struct_name, other, field, address)
    return written


def write_hostile_string(data: SnapshotData, objects: Dict[str, List[int]], struct_name: str,
                         header: Tuple[int, int, object], index: int) -> bool:
    addresses = objects.get(struct_name) or []
    if not addresses:
        return False
    string = field_address(data, struct_name, addresses[index % len(addresses)], STRING_FIELDS[struct_name])
    length, maximum, buffer = header
    ok = write_field(data, "_UNICODE_STRING", string, "Length", length)
    ok = write_field(data, "_UNICODE_STRING", string, "MaximumLength", maximum) and ok
    if buffer is not None:
        ok = write_field(data, "_UNICODE_STRING", string, "Buffer", resolve(buffer, string, [])) and ok
    return ok


# ---- snapshot files ------------------------------------------------------------------------------


def snapshot_members(data: SnapshotData) -> Tuple[dict, bytes]:
    """The manifest (as JSON data) and the page store that ``save_snapshot`` writes for ``data``."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "base.snap")
        save_snapshot(data, path)
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(MANIFEST_NAME)), archive.read(PAGES_NAME)


def build_archive(members: Sequence[Tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members:
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), content, compression)
    return buffer.getvalue()


def snapshot_bytes(manifest: object, pages: bytes, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    raw = json.dumps(manifest).encode("utf-8") if not isinstance(manifest, bytes) else manifest
    return build_archive([(MANIFEST_NAME, raw), (PAGES_NAME, pages)], compression)


# Values of the wrong type, sign or size for any manifest entry.
HOSTILE_VALUES: List[object] = [
    None, True, False, 0, -1, 1, 3, 4, 8, 2 ** 32, 2 ** 63, 2 ** 64, 2 ** 200, -2 ** 64, 1.5, -0.0, 1e308,
    "", "0x", "-0x10", "0x" + "f" * 40, "0xfffff80312345678", "ffff", "12abc", " 0x10 ", "x64", "\u202e",
    "\ud800", [], [None], [1, 2, 3, 4, 5], {}, {"va": "0x0"}, "leakhunt-snapshot",
]
DELETE = object()


def manifest_paths(manifest: object, per_list: int = 3) -> List[Tuple[object, ...]]:
    """Every key path in a manifest (the first ``per_list`` entries of each list)."""
    paths: List[Tuple[object, ...]] = []

    def walk(node: object, prefix: Tuple[object, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append(prefix + (key,))
                walk(value, prefix + (key,))
        elif isinstance(node, list):
            for index, value in enumerate(node[:per_list]):
                paths.append(prefix + (index,))
                walk(value, prefix + (index,))

    walk(manifest, ())
    return paths


def edit_manifest(manifest: dict, path: Tuple[object, ...], value: object) -> dict:
    """A copy of ``manifest`` with the entry at ``path`` replaced by ``value`` (or removed: ``DELETE``)."""
    edited = copy.deepcopy(manifest)
    parent: object = edited
    for key in path[:-1]:
        parent = parent[key]  # type: ignore[index]
    if value is DELETE:
        del parent[path[-1]]  # type: ignore[attr-defined]
    else:
        parent[path[-1]] = copy.deepcopy(value)  # type: ignore[index]
    return edited


def manifest_json(manifest: object) -> bytes:
    """JSON text for a manifest that may hold lone surrogates or infinities (as hostile files do)."""
    return json.dumps(manifest).encode("utf-8", "surrogatepass")


# ZIP records and their fields (offset in the record, width): local file header, central directory
# header, end of central directory (APPNOTE.TXT 4.3.7, 4.3.12, 4.3.16).
ZIP_RECORDS = {
    b"PK\x03\x04": [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
    b"PK\x01\x02": [(6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (34, 2),
                    (42, 4)],
    b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
    b"PK\x06\x06": [(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)],
    b"PK\x06\x07": [(8, 8), (16, 4)],
}
ZIP_FIELD_VALUES = [0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x7FFFFFFF, 8, 9, 12, 14, 99]


def zip_fields(raw: bytes) -> List[Tuple[int, int]]:
    """(file offset, width) of every header field of every ZIP record found in ``raw``."""
    fields = []
    for signature, layout in ZIP_RECORDS.items():
        start = raw.find(signature)
        while start >= 0:
            fields.extend((start + offset, width) for offset, width in layout if start + offset + width <= len(raw))
            start = raw.find(signature, start + 1)
    return sorted(fields)


def set_zip_field(raw: bytes, field: Tuple[int, int], value: int) -> bytes:
    offset, width = field
    damaged = bytearray(raw)
    damaged[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(damaged)


def truncate(raw: bytes, length: int) -> bytes:
    return raw[:max(0, min(length, len(raw)))]


def flip_bytes(raw: bytes, positions: Sequence[Tuple[int, int]]) -> bytes:
    """XOR ``raw[offset % len] ^= mask`` for each (offset, mask)."""
    damaged = bytearray(raw)
    for offset, mask in positions:
        if damaged:
            damaged[offset % len(damaged)] ^= mask & 0xFF or 1
    return bytes(damaged)


# ---- damage plans: lists of plain tuples, drawn by hypothesis or by a seeded loop ------------------

OBJECT_KINDS = ("_MDL", "_IRP", "_DEVICE_OBJECT", "_DRIVER_OBJECT", "_FILE_OBJECT", "_EPROCESS")


def apply_damage(data: SnapshotData, objects: Dict[str, List[int]], alphabet: Sequence[int], op: tuple) -> None:
    """Apply one damage operation (see ``random_damage`` for their shapes); indices wrap around."""
    kind = op[0]
    pages = sorted(data.pages)
    if kind in ("flip", "zero", "drop", "scribble") and not pages:
        return
    if kind == "flip":  # ("flip", page index, offset, bit)
        flip_bit(data, pages[op[1] % len(pages)] + op[2] % PAGE_SIZE, op[3])
    elif kind == "zero":  # ("zero", page index)
        zero_page(data, pages[op[1] % len(pages)])
    elif kind == "drop":  # ("drop", page index): paged out / not in the dump
        drop_page(data, pages[op[1] % len(pages)])
    elif kind == "overwrite":  # ("overwrite", object kind, index, seed): freed and reused
        addresses = objects.get(op[1]) or []
        if addresses:
            overwrite_object(data, addresses[op[2] % len(addresses)], object_size(data, op[1]),
                             random.Random(op[3]), alphabet)
    elif kind == "field":  # ("field", HOSTILE_FIELDS index, object index)
        struct_name, field, value = HOSTILE_FIELDS[op[1] % len(HOSTILE_FIELDS)]
        write_hostile_field(data, objects, struct_name, field, value, op[2])
    elif kind == "string":  # ("string", structure with a UNICODE_STRING, HOSTILE_STRINGS index, object index)
        write_hostile_string(data, objects, op[1], HOSTILE_STRINGS[op[2] % len(HOSTILE_STRINGS)], op[3])
    elif kind == "scribble":  # ("scribble", page index, offset, alphabet index): an aligned word anywhere
        if pages and alphabet:
            offset = (op[2] % PAGE_SIZE) & ~(data.pointer_size - 1)
            value = alphabet[op[3] % len(alphabet)] & ((1 << (8 * data.pointer_size)) - 1)
            poke(data, pages[op[1] % len(pages)] + offset, value.to_bytes(data.pointer_size, "little"))
    elif kind == "word":  # ("word", object kind, index, offset, alphabet index): one aligned word
        addresses = objects.get(op[1]) or []
        if addresses and alphabet:
            offset = (op[3] % object_size(data, op[1])) & ~(data.pointer_size - 1)
            value = alphabet[op[4] % len(alphabet)] & ((1 << (8 * data.pointer_size)) - 1)
            poke(data, addresses[op[2] % len(addresses)] + offset, value.to_bytes(data.pointer_size, "little"))
    else:
        raise ValueError(f"unknown damage {kind!r}")


def random_damage(rng: random.Random, count: int) -> List[tuple]:
    """``count`` damage operations in the shapes ``apply_damage`` takes."""
    plan: List[tuple] = []
    for _ in range(count):
        kind = rng.choice(("flip", "flip", "zero", "drop", "overwrite", "field", "field", "string", "word", "word",
                           "scribble"))
        if kind == "flip":
            plan.append((kind, rng.randrange(1 << 16), rng.randrange(PAGE_SIZE), rng.randrange(8)))
        elif kind in ("zero", "drop"):
            plan.append((kind, rng.randrange(1 << 16)))
        elif kind == "overwrite":
            plan.append((kind, rng.choice(OBJECT_KINDS), rng.randrange(16), rng.randrange(1 << 32)))
        elif kind == "field":
            plan.append((kind, rng.randrange(len(HOSTILE_FIELDS)), rng.randrange(16)))
        elif kind == "string":
            plan.append((kind, rng.choice(sorted(STRING_FIELDS)), rng.randrange(len(HOSTILE_STRINGS)),
                         rng.randrange(16)))
        elif kind == "scribble":
            plan.append((kind, rng.randrange(1 << 16), rng.randrange(PAGE_SIZE), rng.randrange(1 << 16)))
        else:
            plan.append((kind, rng.choice(OBJECT_KINDS), rng.randrange(16), rng.randrange(0x200),
                         rng.randrange(1 << 16)))
    return plan
