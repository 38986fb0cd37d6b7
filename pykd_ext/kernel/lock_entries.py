"""AutoBoost lock entries (`_KLOCK_ENTRY`) and where a lock lives (driver image or pool block).

A thread that acquires a lock tracked by AutoBoost gets a lock entry: LockState's first pointer-sized
word is the lock address, with CrossThreadReleasable (bit 0) and Busy (bit 1) in its low bits and InTree
in bit 63. Kernel addresses always have bit 63 set, so the entry keeps InTree there and the address is
restored by setting it again (this reading of the bit layout is leakhunt's inference, UNVERIFIED).
BoostBitmap holds the CPU and I/O boosts the entry still gives. The 19045-era entry (0x60 bytes) and the
24H2 one (0x58 bytes) order these fields differently; the layouts table knows both.

Where the entries of a thread are: KTHREAD.LockEntries points to the ETHREAD.LockEntries array on the
19045-era layout; on 24H2 KTHREAD.KernelAbEntries points to a `_KLOCK_ENTRIES` header (EntryCount, then
the entries).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..layouts import KIND_SIZES, LayoutError, Layouts
from ..targets.base import MemoryReadError, Module, Target
from .images import image_section
from .modules import ModuleMap

if TYPE_CHECKING:  # the report's types import this module, and must load without numpy (pool.py's)
    from .pool import PoolFinder

LOCK_FLAG_BITS = 0x3  # CrossThreadReleasable | Busy
IN_TREE_BIT = 1 << 63
# _KLOCK_ENTRY_BOOST_BITMAP by its width: (CpuBoostsBitmap mask, IoBoost bit, IoQoSBoost bit). The 4-byte
# form of the 19041-19045 kernels holds CpuBoostsBitmap:15, IoBoost:1, IoQoSBoost:1; the 8-byte form of
# later kernels (20348, 22000 and on) CpuBoostsBitmap:30, IoBoost:1, IoQoSBoost:1 (the kernels' PDBs,
# as their volatility3 ISF tables show them).
BOOST_BITS = {4: ((1 << 15) - 1, 1 << 15, 1 << 16), 8: ((1 << 30) - 1, 1 << 30, 1 << 31)}
# The entry arrays are small (6 on the 19045-era ETHREAD; 24H2 tracks them with 16-bit bitmaps).
MAX_THREAD_ENTRIES = 16

# 0x153 P3: what each state code says about the entry, in words.
LEAK_STATES = {
    1: ("the entry still references a lock (its lock pointer is not NULL): the thread ended while AutoBoost "
        "still counted it as owning or waiting for that lock, so a lock it acquired was never released by it"),
    2: ("reserved bits of the entry's thread pointer are set: the entry was overwritten (memory corruption, "
        "or inconsistent flags passed to the lock APIs)"),
    3: "the entry's thread pointer is corrupted: the entry was overwritten or freed while still in use",
    4: ("the entry still carries I/O or CPU boosts: a lock holder was boosted on behalf of waiters and the "
        "boost was never removed, because the lock was not released through the matching API"),
}


@dataclass
class LockEntry:
    address: int
    lock_state: int
    lock: Optional[int]
    in_tree: bool
    cross_thread_releasable: bool
    busy: bool
    acquired: bool
    waiting: bool
    session_id: Optional[int]
    cpu_boosts: int  # BoostBitmap.CpuBoostsBitmap
    io_boost: bool
    io_qos_boost: bool
    problems: List[str] = field(default_factory=list)

    @property
    def residual_boosts(self) -> bool:
        return bool(self.cpu_boosts or self.io_boost or self.io_qos_boost)


@dataclass
class LockLocation:
    address: int
    location: str  # "image", "pool", "kernel memory", "user memory"
    module: Optional[Module] = None
    section: Optional[str] = None
    section_characteristics: Optional[int] = None
    pool_block: Optional[int] = None
    pool_tag: Optional[str] = None
    problems: List[str] = field(default_factory=list)


def decode_lock_pointer(target: Target, lock_state: int) -> Tuple[Optional[int], bool]:
    """(lock address or None, InTree) from a LockState word."""
    if target.pointer_size != 8:
        address = lock_state & ~LOCK_FLAG_BITS & 0xFFFFFFFF
        return (address or None), False
    in_tree = bool(lock_state & IN_TREE_BIT)
    bare = lock_state & ~LOCK_FLAG_BITS & ~IN_TREE_BIT
    if not bare:
        return None, in_tree
    return bare | IN_TREE_BIT, in_tree


def read_lock_entry(target: Target, layouts: Layouts, address: int) -> LockEntry:
    """Decode the `_KLOCK_ENTRY` at ``address``. Raises MemoryReadError, LayoutError."""
    view = layouts.view("_KLOCK_ENTRY", address)
    layout = view.layout
    state = view["LockState"]
    lock, in_tree = decode_lock_pointer(target, state)
    if layout.has("WaitingByte"):
        waiting = bool(view["WaitingByte"] & 1)
    elif layout.has("ThreadLocalFlags"):
        waiting = bool(view["ThreadLocalFlags"] & 1)
    else:
        waiting = False
    boosts = view["BoostBitmap"] if layout.has("BoostBitmap") else 0
    cpu_mask, io_bit, io_qos_bit = BOOST_BITS[8 if KIND_SIZES.get(layout.kinds.get("BoostBitmap")) == 8 else 4]
    entry = LockEntry(
        address=address, lock_state=state, lock=lock, in_tree=in_tree,
        cross_thread_releasable=bool(state & 1), busy=bool(state & 2),
        acquired=bool(view["AcquiredByte"] & 1) if layout.has("AcquiredByte") else False, waiting=waiting,
        session_id=view["SessionId"] if layout.has("SessionId") else None,
        cpu_boosts=boosts & cpu_mask, io_boost=bool(boosts & io_bit), io_qos_boost=bool(boosts & io_qos_bit))
    if lock is not None and not target.is_kernel_address(lock):
        entry.problems.append(f"its lock pointer {lock:#x} is not a kernel address")
    return entry


def thread_lock_entry_addresses(target: Target, layouts: Layouts, thread: int) -> Tuple[List[int], List[str]]:
    """Addresses of the thread's kernel lock entries, and why some could not be listed."""
    kthread = layouts.find("_KTHREAD")
    entry_layout = layouts.find("_KLOCK_ENTRY")
    if kthread is None or entry_layout is None or not entry_layout.size:
        missing = "_KTHREAD" if kthread is None else "_KLOCK_ENTRY"
        return [], [f"the {missing} layout is unknown for build {target.build or 'unknown'} without symbols: "
                    f"the thread's other lock entries are not listed"]
    try:
        if kthread.has("LockEntries"):
            return _entries_from_array(target, layouts, thread, entry_layout.size)
        if kthread.has("KernelAbEntries"):
            return _entries_from_header(target, layouts, thread, entry_layout.size)
    except (MemoryReadError, LayoutError) as error:
        return [], [f"the thread's lock entries are unreadable ({error})"]
    return [], ["this KTHREAD layout has no known list of lock entries"]


def _entries_from_array(target: Target, layouts: Layouts, thread: int, entry_size: int) -> Tuple[List[int], List[str]]:
    """19045-era: KTHREAD.LockEntries -> the ETHREAD.LockEntries[n] array."""
    first = layouts.view("_KTHREAD", thread)["LockEntries"]
    if not first:
        return [], ["KTHREAD.LockEntries is NULL"]
    ethread = layouts.find("_ETHREAD")
    count = ethread.array_length("LockEntries", entry_size) if ethread is not None and ethread.has("LockEntries") \
        else None
    if not count:
        return [], ["the length of the thread's lock entry array is unknown for this build"]
    return [first + index * entry_size for index in range(min(count, MAX_THREAD_ENTRIES))], []


def _entries_from_header(target: Target, layouts: Layouts, thread: int, entry_size: int) -> Tuple[List[int], List[str]]:
    """24H2: KTHREAD.KernelAbEntries -> `_KLOCK_ENTRIES` {Thread, ..., EntryCount, Entries[]}."""
    header_address = layouts.view("_KTHREAD", thread)["KernelAbEntries"]
    if not header_address:
        return [], ["KTHREAD.KernelAbEntries is NULL"]
    header = layouts.view("_KLOCK_ENTRIES", header_address)
    problems = []
    if header["Thread"] != thread:
        problems.append(f"_KLOCK_ENTRIES.Thread {header['Thread']:#x} is not the thread: the entries are not listed")
        return [], problems
    count = header["EntryCount"]
    if count > MAX_THREAD_ENTRIES:
        problems.append(f"_KLOCK_ENTRIES.EntryCount {count} is implausible; only {MAX_THREAD_ENTRIES} are read")
        count = MAX_THREAD_ENTRIES
    first = header.address_of("Entries")
    return [first + index * entry_size for index in range(count)], problems


# ---- where a lock lives ----------------------------------------------------------------------

def locate(target: Target, layouts: Layouts, modules: ModuleMap, address: int,
           pool: Optional["PoolFinder"] = None) -> LockLocation:
    """Say whether ``address`` is inside a loaded image (and which section) or in a pool block
    (``pool``: the analysis's finder, which knows the kernel's symbols)."""
    module = modules.find(address)
    if module is not None:
        where = LockLocation(address, "image", module=module)
        section = image_section(target, layouts, module, address)
        if section is not None:
            where.section, where.section_characteristics = section.name, section.characteristics
            if section.code:
                where.problems.append(f"section {where.section} is code, not writable data: an odd place for a lock")
        return where
    if target.is_user_address(address):
        return LockLocation(address, "user memory", problems=["a kernel lock tracked by AutoBoost in user memory "
                                                               "is a corrupted pointer"])
    where = LockLocation(address, "kernel memory")
    if pool is None:
        from .pool import PoolFinder
        pool = PoolFinder(target, layouts)
    block = pool.block_of(address)
    if block is not None:
        where.location = "pool"
        where.pool_block, where.pool_tag = block.address, block.tag
    return where
