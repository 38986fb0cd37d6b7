"""The 0x76 case of a private leak: locked MDLs that no IRP holds, kept in a driver's own structures.

shmdrv, a shared-memory driver, probed and locked an application's buffers and keeps the MDLs itself:

  MDL 1  in the extension of one of its devices (the device object inside a 'Devi' pool block, after room
         for the object manager's header, laid out as IoCreateDevice does);
  MDL 2  in a global of its .data section;
  MDL 3  in a pool block tagged 'ShmC', a 32-bit constant in shmdrv.sys's code and nowhere else (x64: a
         block of the segment heap's VS allocator, between two others; x86: a plain pool block);
  MDL 4  in a pool block tagged 'ShmQ', which no image holds: followed one level up, its address is in
         another global of shmdrv.sys (x64: an allocation of two pages, which only the big pool table
         places).

The decoys: a one-bit neighbour of MDL 1's address in an innocent driver's tagged block; MDL 1's address
on the kernel stack of the process's thread (x64: found through the process's thread list; x86, whose
thread layouts leakhunt does not have, it is memory leakhunt cannot place); a stale unlocked MDL of the
process in another driver's tagged block; MDL 2's address also in a block of the kernel's own tag
'Irp '; and the decoys of every 0x76 case (the process pointer inside other structures, an MDL of
another process held by an innocent IRP...). ``placements`` chooses which of the four places the first
MDLs go to (the benchmarks use device extensions and tagged blocks only); further MDLs (``leaked`` more
than the placements) go alternately to device extensions (16 per device) and to more 'ShmC' blocks.

Pool headers, device objects, the VS chunk header, the big pool table and the thread list are laid out
with real_layouts (the real kernel's symbols, the reference notes), not with leakhunt's tables.
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence, Tuple

from pykd_ext.targets.base import PAGE_SIZE, BugCheck, Module

from . import real_layouts
from .arm64_layouts import arm64_layout
from .memory import SymbolFit
from .scenarios import IRP_MJ_READ, Driver, Scenario
from .scenarios_family import DRIVER_DATA, FamilyScene

IO_TYPE_DEVICE = 3  # windows-kernel.md §4.8
# Room left before a device object for the object manager's header (its size is not needed: leakhunt
# looks for the device object wherever it lies in its block).
OBJECT_HEADER_ROOM = {8: 0x30, 4: 0x18}
DEVOBJ_EXTENSION_ROOM = {8: 0x70, 4: 0x40}
MDLS_PER_DEVICE = 16
BIG_POOL_ENTRIES = 64
PLACEMENTS = ("device extension", "global", "tagged block", "followed block")
CODE = 0x1000  # .text starts here in every image write_pe_headers lays out


class PrivateScene(FamilyScene):
    """FamilyScene plus tagged pool blocks on both architectures, device extensions, the segment heap's VS
    blocks, the big pool table and kernel stacks."""

    def __init__(self, arch: str, seed: int = 1, fit: Optional[SymbolFit] = None):
        super().__init__(arch, seed, fit=fit)
        self.big_pool: List[Tuple[int, int, str]] = []  # (Va, NumberOfBytes, tag)
        self._code_offsets: Dict[int, int] = {}

    def tagged_block(self, size: int, tag: str) -> int:
        """A pool allocation of ``size`` bytes with its POOL_HEADER, never crossing a page."""
        unit = real_layouts.pool_header(self.pointer_size).size
        units = (unit + size + unit - 1) // unit
        base = self.alloc(units * unit, align=unit)
        if base % PAGE_SIZE + units * unit > PAGE_SIZE:
            base = self.alloc(units * unit, align=PAGE_SIZE)
        self.write_pool_header(base, units, tag)
        return base + unit

    def vs_blocks(self, blocks: List[Tuple[int, str]]) -> List[int]:
        """Blocks of the segment heap's VS allocator, back to back in one page: each a _HEAP_VS_CHUNK_HEADER
        (its sizes encoded with a key leakhunt does not know: noise here), then a POOL_HEADER, then data."""
        unit = real_layouts.pool_header(self.pointer_size).size
        chunk_header = real_layouts.vs_chunk_header_size()
        sized = [(size, tag, (unit + size + unit - 1) // unit) for size, tag in blocks]
        total = sum(chunk_header + units * unit for _, _, units in sized)
        position = self.alloc(total, align=PAGE_SIZE)
        allocations = []
        for _, tag, units in sized:
            encoded = bytes(self.rng.getrandbits(8) for _ in range(9))
            self.write(position, encoded + bytes([0x00]) + bytes(chunk_header - 10))  # Spare bits clear
            self.write_pool_header(position + chunk_header, units, tag)
            allocations.append(position + chunk_header + unit)
            position += chunk_header + units * unit
        return allocations

    def big_allocation(self, size: int, tag: str) -> int:
        """Pages of pool with no header, known only to the big pool table (finish_private writes it)."""
        address = self.alloc(size, align=PAGE_SIZE)
        self.big_pool.append((address, size, tag))
        return address

    def device_with_extension(self, driver: Driver, extension_size: int) -> Tuple[int, int]:
        """A device object of ``driver`` with an extension, in a 'Devi' pool block; (device, extension)."""
        facts = real_layouts.device_object(self.pointer_size)
        extension_room = (extension_size + 7) & ~7
        header = OBJECT_HEADER_ROOM[self.pointer_size]
        block = self.tagged_block(header + facts.size + extension_room + DEVOBJ_EXTENSION_ROOM[self.pointer_size],
                                  "Devi")
        device = block + header
        extension = device + facts.size
        self.write(device + facts.type, struct.pack("<h", IO_TYPE_DEVICE))
        self.write(device + facts.size_field, struct.pack("<H", facts.size + extension_size))
        self.write_pointer(device + facts.driver_object, driver.driver_object)
        self.write_pointer(device + facts.device_extension, extension)
        self.write_pointer(device + facts.device_object_extension, extension + extension_room)
        return device, extension

    def code_constant(self, module: Module, tag: str) -> None:
        """``mov r8d, <tag>`` (41 B8 imm32) in the image's code: how a driver passes its tag to the allocator."""
        offset = self._code_offsets.get(module.base, 0x100)
        self.write(module.base + CODE + offset, b"\x41\xB8" + tag.encode("ascii"))
        self._code_offsets[module.base] = offset + 0x40

    def thread_with_stack(self, process: int, thread: int, stack_size: int = 0x6000) -> Tuple[int, int]:
        """Link ``thread`` into the process's thread list and give it a kernel stack (x64: build 19041's
        offsets from real_layouts; ARM64: the test kernel's, mocks/arm64_layouts.py); returns the stack's
        (limit, base). x86: the stack only."""
        limit = self.alloc(stack_size, align=PAGE_SIZE)
        base = limit + stack_size
        if self.pointer_size == 8:
            if self.arch == "arm64":
                offsets = {"StackLimit": arm64_layout("_KTHREAD").offset("StackLimit"),
                           "StackBase": arm64_layout("_KTHREAD").offset("StackBase"),
                           "ThreadListHead": arm64_layout("_EPROCESS").offset("ThreadListHead"),
                           "ThreadListEntry": arm64_layout("_ETHREAD").offset("ThreadListEntry")}
            else:
                offsets = real_layouts.thread_stack_and_list_offsets()
            head, link = process + offsets["ThreadListHead"], thread + offsets["ThreadListEntry"]
            for entry, following in ((head, link), (link, head)):  # LIST_ENTRY: Flink, then Blink (§4.6)
                self.write_pointer(entry, following)
                self.write_pointer(entry + self.pointer_size, following)
            self.write_pointer(thread + offsets["StackLimit"], limit)
            self.write_pointer(thread + offsets["StackBase"], base)
        return limit, base

    def finish_private(self, bugcheck: BugCheck, description: str):
        """The scene as a snapshot; with the big pool table, the symbols and the type that give it (x64)."""
        symbols = {}
        if self.big_pool:
            size, offsets = real_layouts.big_pool_entry()
            table = self.alloc(BIG_POOL_ENTRIES * size, align=PAGE_SIZE)
            entries = list(self.big_pool)
            for index in range(BIG_POOL_ENTRIES - len(entries)):  # free entries (Va bit 0) and other blocks
                va = 0xFFFFA58A30000000 + index * 0x3000
                entries.append((va | 1, 0x2000, "Free") if index % 2 else (va, 0x3000, "Othr"))
            for index, (va, number_of_bytes, tag) in enumerate(entries):
                entry = table + index * size
                self.write_pointer(entry + offsets["Va"], va)
                self.write(entry + offsets["Key"], tag.encode("ascii"))
                self.write_pointer(entry + offsets["NumberOfBytes"], number_of_bytes)
            rvas = real_layouts.big_pool_rvas()  # where the real 19041 kernel keeps them
            pointer = self.global_variable(self.kernel, rvas["PoolBigPageTable"], 8)
            count = self.global_variable(self.kernel, rvas["PoolBigPageTableSize"], 8)
            self.write_pointer(pointer, table)
            self.write_pointer(count, BIG_POOL_ENTRIES)
            symbols = {"nt!PoolBigPageTable": pointer, "nt!PoolBigPageTableSize": count}
        data = self.finish_family(bugcheck, description)
        data.symbols.update(symbols)
        if symbols:
            data.types["nt!_POOL_TRACKER_BIG_PAGES"] = real_layouts.big_pool_type_info()
        return data


def case_0x76_private(arch: str = "x64", seed: int = 7, noise_pages: int = 48, leaked: int = 4,
                      fit: Optional[SymbolFit] = None, placements: Sequence[str] = PLACEMENTS) -> Scenario:
    """The private leak described in the module docstring; ``leaked`` locked MDLs (at least 1), the first
    ones in ``placements`` (some of PLACEMENTS, the first of them a device extension), in that order;
    ``fit`` makes the kernel the one a symbol file describes."""
    if not placements or placements[0] != PLACEMENTS[0] or not set(placements) <= set(PLACEMENTS):
        raise ValueError(f"placements must be some of {PLACEMENTS}, the device extension first")
    scene = PrivateScene(arch, seed, fit)
    x64 = arch == "x64"
    victim = scene.process("shmapp.exe")
    bystander = scene.process("svchost.exe")
    culprit = scene.driver_with_headers("shmdrv")
    innocent = scene.driver_with_headers("innocent")
    older = scene.driver_with_headers("oldflt")
    for module, tag in ((culprit.module, "ShmC"), (innocent.module, "Innc"), (older.module, "OldF"),
                        (scene.kernel, "Irp ")):
        scene.code_constant(module, tag)
    thread = scene.thread(victim)
    stack_limit, stack_base = scene.thread_with_stack(victim, thread)
    expected: Dict[str, object] = {"process": victim, "culprit": culprit.name, "culprit_image": "shmdrv.sys",
                                   "locked_mdls": [], "holders": {}, "irps": []}
    holders: Dict[int, List[str]] = expected["holders"]

    # The decoys of every 0x76 case.
    scene.pointer_decoys(victim)
    stale = scene.mdl(victim, pages=2, locked=False)
    other_mdl = scene.mdl(bystander, pages=3)
    innocent_irp = scene.irp(other_mdl, [(innocent.devices[0], IRP_MJ_READ, 0)], 1, thread=scene.thread(bystander))
    expected["stale_mdls"] = [stale]
    expected["unrelated_irps"] = [innocent_irp]

    mdls = [scene.mdl(victim, pages=1 + index % 3) for index in range(leaked)]
    expected["locked_mdls"] = mdls
    locked_pages = sum(1 + index % 3 for index in range(leaked))
    placed = dict(zip(placements, mdls))
    extras = mdls[len(placements):]

    # MDL 1 (and every other extra MDL): device extensions of shmdrv, 16 MDLs each.
    in_devices = [mdls[0]] + [m for index, m in enumerate(extras) if index % 2 == 0]
    devices: List[int] = []
    for start in range(0, len(in_devices), MDLS_PER_DEVICE):
        device, extension = scene.device_with_extension(culprit, 0x28 + MDLS_PER_DEVICE * scene.pointer_size)
        devices.append(device)
        for slot, mdl in enumerate(in_devices[start:start + MDLS_PER_DEVICE]):
            scene.write_pointer(extension + 0x28 + slot * scene.pointer_size, mdl)
            holders[mdl] = ["device_extension"]
    expected["devices"] = devices
    # ... and on the kernel stack of the process's thread.
    scene.write_pointer(stack_base - 0x2F8, mdls[0])
    # (ARM64's thread and stack fields come from the kernel's symbols only; x86's list is not linked.)
    holders[mdls[0]].append("kernel_stack" if x64 or (arch == "arm64" and fit) else "unknown")
    expected["stack"] = (stack_limit, stack_base)

    extras_in_blocks = [m for index, m in enumerate(extras) if index % 2 == 1]
    if "global" in placed:  # a global of shmdrv.sys, also in a block of the kernel's own tag
        mdl = placed["global"]
        scene.write_pointer(scene.global_variable(culprit.module, DRIVER_DATA + 0x40, 8), mdl)
        scene.write_pointer(scene.tagged_block(0x40, "Irp ") + 0x18, mdl)
        holders[mdl] = ["image", "pool_block"]
        expected["global"] = culprit.module.base + DRIVER_DATA + 0x40
    if "tagged block" in placed or extras_in_blocks:  # blocks tagged 'ShmC'
        in_shmc = [placed[p] for p in ("tagged block",) if p in placed] + extras_in_blocks
        if x64:
            blocks = []
            for start in range(0, len(in_shmc), 8):
                group = in_shmc[start:start + 8]
                run = scene.vs_blocks([(0x60, "ShmC")] * len(group) + [(0x40, "Othr")])
                blocks.extend(run[:len(group)])
        else:
            blocks = [scene.tagged_block(0x60, "ShmC") for _ in in_shmc]
        for block, mdl in zip(blocks, in_shmc):
            scene.write_pointer(block + 0x18, mdl)
            holders[mdl] = ["pool_block"]
        expected["shmc_blocks"] = blocks
    if "followed block" in placed:  # a block tagged 'ShmQ' that no image holds, held by another global
        block = scene.big_allocation(0x2000, "ShmQ") if x64 else scene.tagged_block(0x80, "ShmQ")
        scene.write_pointer(block + 0x28, placed["followed block"])
        scene.write_pointer(scene.global_variable(culprit.module, DRIVER_DATA + 0x48, 8), block)
        holders[placed["followed block"]] = ["pool_block"]
        expected["followed_block"] = block

    # The private decoys.
    near = scene.tagged_block(0x40, "Innc")
    scene.write_pointer(near + 0x10, mdls[0] ^ 0x10)  # one bit away from MDL 1's address
    expected["near_miss"] = near + 0x10
    stale_block = scene.tagged_block(0x40, "OldF")
    scene.write_pointer(stale_block + 0x10, stale)
    expected["stale_holder"] = stale_block + 0x10

    if scene.pointer_size == 8:
        scene.write(victim + scene.layout("_EPROCESS").offset("NumberOfLockedPages"), struct.pack("<Q", locked_pages))
    expected["locked_pages"] = locked_pages
    scene.noise(noise_pages)
    bugcheck = BugCheck(0x76, (0, victim, locked_pages, 0))
    data = scene.finish_private(bugcheck, f"synthesized 0x76 case 'private' ({arch})")
    return Scenario(f"0x76-private-{arch}", arch, data, expected)

