"""Structure facts for the scenario builders that do not come from leakhunt's own tables.

What the builders write for the pool, device objects, the segment heap, the big pool table and kernel
stacks must not be laid out with ``pykd_ext.layouts`` and read back with it (a wrong offset would then
pass unseen). So these facts come from elsewhere:

* x64: the real kernel symbol table of Windows 10 build 19041 (Microsoft's ntkrnlmp.pdb as a
  volatility3 ISF file, tests/data/symbols), read here with ``json`` and ``lzma`` directly;
* x86: literals from the reference notes (windows-kernel.md §4.4, ``_DEVICE_OBJECT``) and NTDIFF's x86
  ``_POOL_HEADER.h`` (PreviousSize:9 and PoolIndex:7 in the USHORT at 0, BlockSize:9 and PoolType:7 in
  the USHORT at 2, PoolTag at 4, 8 bytes); the segment heap and the big pool table are x64 only here.
"""
from __future__ import annotations

import functools
import json
import lzma
import os
from dataclasses import dataclass
from typing import Dict, Tuple

from pykd_ext.typeinfo import FieldInfo, TypeInfo

ISF_19041 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "symbols",
                         "windows", "ntkrnlmp.pdb", "5278AFF86C341677D7D7835C85B7B844-1.json.xz")


@dataclass(frozen=True)
class Bits:
    """A bit field: byte offset of its storage unit, first bit in that unit, bits."""

    offset: int
    first: int
    width: int


@dataclass(frozen=True)
class PoolHeaderFacts:
    size: int
    tag: int  # PoolTag's byte offset
    previous_size: Bits
    block_size: Bits
    pool_type: Bits

    def pack(self, block_units: int, pool_type: int, previous_units: int = 0) -> bytes:
        """The first ``tag`` bytes of a header (the bit fields), little-endian."""
        value = 0
        for bits, number in ((self.previous_size, previous_units), (self.block_size, block_units),
                             (self.pool_type, pool_type)):
            assert 0 <= number < 1 << bits.width, "does not fit the bit field"
            value |= number << (8 * bits.offset + bits.first)
        return value.to_bytes(self.tag, "little")


@dataclass(frozen=True)
class DeviceObjectFacts:
    size: int
    type: int
    size_field: int
    driver_object: int
    device_extension: int
    device_object_extension: int


@functools.lru_cache(maxsize=None)
def _isf() -> dict:
    with lzma.open(ISF_19041) as handle:
        return json.load(handle)


def _fields(name: str) -> Dict[str, dict]:
    return _isf()["user_types"][name]["fields"]


def _size(name: str) -> int:
    return _isf()["user_types"][name]["size"]


def _bits(name: str, field: str) -> Bits:
    entry = _fields(name)[field]
    kind = entry["type"]
    return Bits(entry["offset"], kind.get("bit_position", 0), kind.get("bit_length", 8 * 4))


@functools.lru_cache(maxsize=None)
def pool_header(pointer_size: int) -> PoolHeaderFacts:
    if pointer_size == 8:
        return PoolHeaderFacts(_size("_POOL_HEADER"), _fields("_POOL_HEADER")["PoolTag"]["offset"],
                               _bits("_POOL_HEADER", "PreviousSize"), _bits("_POOL_HEADER", "BlockSize"),
                               _bits("_POOL_HEADER", "PoolType"))
    return PoolHeaderFacts(8, 4, Bits(0, 0, 9), Bits(2, 0, 9), Bits(2, 9, 7))


@functools.lru_cache(maxsize=None)
def device_object(pointer_size: int) -> DeviceObjectFacts:
    if pointer_size == 8:
        fields = _fields("_DEVICE_OBJECT")
        return DeviceObjectFacts(_size("_DEVICE_OBJECT"), fields["Type"]["offset"], fields["Size"]["offset"],
                                 fields["DriverObject"]["offset"], fields["DeviceExtension"]["offset"],
                                 fields["DeviceObjectExtension"]["offset"])
    return DeviceObjectFacts(0xB8, 0x0, 0x2, 0x8, 0x28, 0xB0)  # windows-kernel.md §4.4, x86 column


def vs_chunk_header_size() -> int:
    """sizeof(_HEAP_VS_CHUNK_HEADER) on x64."""
    return _size("_HEAP_VS_CHUNK_HEADER")


def big_pool_entry() -> Tuple[int, Dict[str, int]]:
    """sizeof(_POOL_TRACKER_BIG_PAGES) and the offsets of Va, Key and NumberOfBytes (x64)."""
    fields = _fields("_POOL_TRACKER_BIG_PAGES")
    return _size("_POOL_TRACKER_BIG_PAGES"), {name: fields[name]["offset"] for name in ("Va", "Key", "NumberOfBytes")}


def big_pool_rvas() -> Dict[str, int]:
    """Where build 19041's kernel keeps PoolBigPageTable and PoolBigPageTableSize (RVAs in nt)."""
    symbols = _isf()["symbols"]
    return {name: symbols[name]["address"] for name in ("PoolBigPageTable", "PoolBigPageTableSize")}


def big_pool_type_info() -> TypeInfo:
    """_POOL_TRACKER_BIG_PAGES as a debugger's symbols describe it, for a snapshot to carry (x64)."""
    size, offsets = big_pool_entry()
    widths = {"Va": 8, "Key": 4, "NumberOfBytes": 8}
    return TypeInfo("nt!_POOL_TRACKER_BIG_PAGES", size,
                    {name: FieldInfo(offset, widths[name]) for name, offset in offsets.items()},
                    "isf ntkrnlmp.pdb 5278AFF86C341677D7D7835C85B7B844-1")


def thread_stack_and_list_offsets() -> Dict[str, int]:
    """x64 build 19041: KTHREAD.StackLimit and StackBase, EPROCESS.ThreadListHead, ETHREAD.ThreadListEntry."""
    return {"StackLimit": _fields("_KTHREAD")["StackLimit"]["offset"],
            "StackBase": _fields("_KTHREAD")["StackBase"]["offset"],
            "ThreadListHead": _fields("_EPROCESS")["ThreadListHead"]["offset"],
            "ThreadListEntry": _fields("_ETHREAD")["ThreadListEntry"]["offset"]}
