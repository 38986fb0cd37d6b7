"""Scenario builders: synthesized kernel memory for bug check cases, with the decoys real memory holds.

Each builder returns a ``Scenario``: the memory as ``SnapshotData`` plus what a correct analysis must
conclude (``expected``), so tests compare leakhunt's findings with the truth that was built.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from pykd_ext.kernel.io import IO_TYPE_DEVICE, IO_TYPE_DRIVER, IO_TYPE_FILE, IO_TYPE_IRP, SL_INVOKE_ON_CANCEL, \
    SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED
from pykd_ext.kernel.mdl import MDL_PAGES_LOCKED, MDL_WRITE_OPERATION, spanned_pages
from pykd_ext.kernel.threads import THREAD_OBJECT
from pykd_ext.targets.base import PAGE_SIZE, BugCheck, Module
from pykd_ext.targets.snapshot import SnapshotData

from .memory import KernelMemory, SymbolFit, image_file_name

ARCHES = {"x64": (8, 19045), "x86": (4, 19045), "arm64": (8, 26100)}
IRP_MJ_READ = 0x03
IRP_MJ_WRITE = 0x04
IRP_MJ_DEVICE_CONTROL = 0x0E


@dataclass
class Scenario:
    name: str
    arch: str
    data: SnapshotData
    expected: Dict[str, object] = field(default_factory=dict)


@dataclass
class Driver:
    name: str  # "\Driver\leakyflt"
    module: Module
    driver_object: int
    devices: List[int]


class KernelScene(KernelMemory):
    """KernelMemory plus builders for the objects of the locked-pages hunt."""

    def __init__(self, arch: str, seed: int = 1, fit: Optional[SymbolFit] = None):
        """``fit``: make nt the kernel a symbol file describes (its globals' RVAs, its CodeView record)."""
        pointer_size, build = ARCHES[arch]
        super().__init__(pointer_size, seed, build, fit.rvas if fit else None, arch)
        self.fit = fit
        self.kernel = self.add_image("ntoskrnl.exe", 0x1000000)
        self.hal = self.add_image("hal.dll", 0x100000)
        self._process_ids: Dict[int, int] = {}  # EPROCESS -> UniqueProcessId
        self._next_process_id = 0x3A8
        self._next_thread_id = 0x61C

    # ---- processes and threads ------------------------------------------------------------------

    def process(self, name: str) -> int:
        """An EPROCESS; named through the build's layout where leakhunt knows it."""
        layout = None
        try:
            layout = self.layout("_EPROCESS")
        except KeyError:
            pass
        size = layout.size if layout is not None and layout.size else 0x400
        address = self.alloc(size + 0x40)
        self._process_ids[address] = self._next_process_id
        self._next_process_id += 0x100
        if layout is not None:
            self.write(address + layout.offset("ImageFileName"), image_file_name(name))
            self.write_fields("_EPROCESS", address, UniqueProcessId=self._process_ids[address])
        return address

    def thread(self, process: int) -> int:
        """An ETHREAD-sized blob that points at its process, as KTHREAD.ApcState.Process does, with its
        Cid where the build's _ETHREAD layout is known."""
        address = self.alloc(0x500 if self.pointer_size == 8 else 0x300)
        if self.arch == "arm64":  # its KTHREAD is laid out unlike x64's (mocks/arm64_layouts.py)
            self.write_fields("_KTHREAD", address, Process=process, ApcState__Process=process)
        else:
            self.write_pointer(address + (0x220 if self.pointer_size == 8 else 0x150), process)
        self.write_fields("_DISPATCHER_HEADER", address, Type=THREAD_OBJECT)
        try:
            self.layout("_ETHREAD")
        except KeyError:
            return address
        self.write_fields("_ETHREAD", address, Cid__UniqueProcess=self._process_ids.get(process, 4),
                          Cid__UniqueThread=self._next_thread_id)
        self._next_thread_id += 4
        return address

    # ---- drivers and devices --------------------------------------------------------------------

    def driver(self, short_name: str, prefix: str = "\\Driver\\", devices: int = 1) -> Driver:
        module = self.add_image(short_name + ".sys")
        layout = self.layout("_DRIVER_OBJECT")
        driver_object = self.new("_DRIVER_OBJECT", Type=IO_TYPE_DRIVER, Size=layout.size,
                                 DriverStart=module.base, DriverSize=module.size)
        name = prefix + short_name
        self.unicode_string(driver_object + layout.offset("DriverName"), name)
        device_layout = self.layout("_DEVICE_OBJECT")
        device_objects = []
        for _ in range(devices):
            device = self.new("_DEVICE_OBJECT", extra=0x40, Type=IO_TYPE_DEVICE, Size=device_layout.size + 0x40,
                              DriverObject=driver_object, StackSize=2)
            device_objects.append(device)
        self.write_fields("_DRIVER_OBJECT", driver_object, DeviceObject=device_objects[0])
        return Driver(name, module, driver_object, device_objects)

    def file_object(self, device: int, name: str) -> int:
        layout = self.layout("_FILE_OBJECT")
        address = self.new("_FILE_OBJECT", Type=IO_TYPE_FILE, Size=self.footprint("_FILE_OBJECT"), DeviceObject=device)
        self.unicode_string(address + layout.offset("FileName"), name)
        return address

    # ---- MDLs and IRPs --------------------------------------------------------------------------

    def mdl(self, process: int, pages: int, locked: bool = True, byte_offset: int = 0x40, next_mdl: int = 0,
            extra_flags: int = 0) -> int:
        """An MDL for a user buffer of ``process``, as MmProbeAndLockPages leaves it."""
        byte_count = pages * PAGE_SIZE - byte_offset - 0x10
        spanned = spanned_pages(byte_offset, byte_count)
        layout = self.layout("_MDL")
        flags = (MDL_PAGES_LOCKED if locked else 0) | MDL_WRITE_OPERATION | extra_flags
        address = self.alloc(layout.size + spanned * self.pointer_size)
        self.write_fields("_MDL", address, Next=next_mdl, Size=layout.size + spanned * self.pointer_size,
                          MdlFlags=flags, Process=process, StartVa=self.user_buffer(spanned),
                          ByteCount=byte_count, ByteOffset=byte_offset)
        for index in range(spanned):
            self.write_pointer(address + layout.size + index * self.pointer_size, self.fresh_pfn())
        return address

    def irp(self, mdl: int, stack: Sequence[Tuple[int, int, int]], current_location: int, thread: int = 0,
            file_object: int = 0, allocated_locations: Optional[int] = None, cancel_routine: int = 0) -> int:
        """An IRP with ``stack`` = [(device, major, completion routine)] for locations 1..n (1 = lowest).

        ``allocated_locations`` > len(stack) mimics a lookaside IRP whose Size has room for more;
        ``cancel_routine`` is the CancelRoutine of a driver that queued the IRP cancelable.
        """
        irp_layout = self.layout("_IRP")
        stack_layout = self.layout("_IO_STACK_LOCATION")
        stack_count = len(stack)
        allocated = allocated_locations or stack_count
        size = irp_layout.size + allocated * stack_layout.size
        address = self.alloc(size)
        current_pointer = address + irp_layout.size + (current_location - 1) * stack_layout.size
        self.write_fields("_IRP", address, Type=IO_TYPE_IRP, Size=size, MdlAddress=mdl, StackCount=stack_count,
                          CurrentLocation=current_location, Flags=0x40, PendingReturned=1, CancelRoutine=cancel_routine,
                          Tail__Overlay__Thread=thread, Tail__Overlay__OriginalFileObject=file_object,
                          Tail__Overlay__CurrentStackLocation=current_pointer)
        for number, (device, major, routine) in enumerate(stack, 1):
            location = address + irp_layout.size + (number - 1) * stack_layout.size
            if number < current_location:
                continue  # not yet used by the lower drivers
            control = SL_PENDING_RETURNED
            if routine:
                control |= SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL
            self.write_fields("_IO_STACK_LOCATION", location, MajorFunction=major, DeviceObject=device,
                              FileObject=file_object, CompletionRoutine=routine, Control=control)
        return address

    # ---- decoys ---------------------------------------------------------------------------------

    def pointer_decoys(self, value: int, count: int = 6) -> None:
        """The value inside non-MDL structures, one bit away from itself, and at unaligned offsets."""
        for _ in range(count):
            blob = self.alloc(0x100)
            offset = self.rng.randrange(0, 0x100 - self.pointer_size, self.pointer_size)
            self.write_pointer(blob + offset, value)
            # Surround it with data that does not form a valid MDL header.
            self.write(blob, bytes(self.rng.getrandbits(8) for _ in range(min(offset, 16))))
        for bit in (0, 3, 12, 31, 40 if self.pointer_size == 8 else 17):
            self.write_pointer(self.alloc(0x20), value ^ (1 << bit))
        blob = self.alloc(0x40)
        self.write(blob + 4 + (1 if self.pointer_size == 8 else 0), self.pack_pointer(value))

    def noise(self, pages: int) -> None:
        """Pointer-rich pages: pool-like pointers, small integers, zeros and random words."""
        pool = self._pool_next
        for _ in range(pages):
            address = self.alloc(PAGE_SIZE, align=PAGE_SIZE)
            words = []
            for _ in range(PAGE_SIZE // self.pointer_size):
                roll = self.rng.random()
                if roll < 0.35:
                    words.append((pool - self.rng.randrange(0, 0x400000)) & ~0xF)
                elif roll < 0.55:
                    words.append(self.rng.randrange(0, 0x10000))
                elif roll < 0.8:
                    words.append(0)
                else:
                    words.append(self.rng.getrandbits(8 * self.pointer_size))
            fmt = ("<%dQ" if self.pointer_size == 8 else "<%dI") % len(words)
            self.write(address, struct.pack(fmt, *words))

    def finish(self, bugcheck: BugCheck, description: str, ki_bugcheck_driver: str = "") -> SnapshotData:
        """Add the kernel globals leakhunt reads and return the memory as a complete snapshot."""
        variable = self.global_variable(self.kernel, self.kernel_globals["KiBugCheckDriver"], self.pointer_size)
        if ki_bugcheck_driver:
            string = self.alloc(2 * self.pointer_size)
            self.unicode_string(string, ki_bugcheck_driver)
            self.write_pointer(variable, string)
        self.symbols["nt!KiBugCheckDriver"] = variable
        self.build_loaded_module_list(self.kernel)
        self.place_other_kernel_globals(self.kernel)
        if self.fit is not None:
            self.write_codeview(self.kernel, self.fit.pdb_name, self.fit.guid, self.fit.age)
        return self.snapshot(self.arch, bugcheck, description)


# ---- the 0x76 cases -----------------------------------------------------------------------------

KINDS_0x76 = ("irp", "orphan", "unlock", "nothing")


def case_0x76(arch: str = "x64", kind: str = "irp", seed: int = 7, noise_pages: int = 48, leaked: int = 1,
              ki_bugcheck_driver: str = "", fit: Optional[SymbolFit] = None) -> Scenario:
    """A process dies with locked pages (P1=0) or a driver unlocks unlocked pages (P1=1).

    kind:
      irp      leakyflt pends IOCTL IRPs whose MDLs lock the process's pages (one through an MDL chain)
      orphan   leakyflt locked pages in MDLs it keeps privately: no IRP holds them
      unlock   P1=1: leakyflt unlocks an MDL already unlocked; the IRP it pends still holds the MDL
      nothing  every MDL is gone: only stale references and decoys remain
    ``leaked`` is the number of locked MDLs (for kind irp: one IRP each), for benchmarks; ``fit`` makes
    the kernel the one a symbol file describes.
    """
    if kind not in KINDS_0x76:
        raise ValueError(f"unknown 0x76 case kind {kind!r}")
    scene = KernelScene(arch, seed, fit)
    victim = scene.process("leakapp.exe")
    bystander = scene.process("svchost.exe")
    culprit = scene.driver("leakyflt")
    upper = scene.driver("ufilter")
    innocent = scene.driver("innocent")
    routine = upper.module.base + 0x1A30
    cancel_routine = culprit.module.base + 0x1B00
    thread = scene.thread(victim)
    file_object = scene.file_object(culprit.devices[0], "\\Device\\LeakyDevice\\queue")
    expected: Dict[str, object] = {"kind": kind, "process": victim, "culprit": None, "culprit_image": None,
                                   "locked_mdls": [], "irps": [], "decoy_mdls": []}
    locked_pages = 0

    # Decoys present in every case.
    scene.pointer_decoys(victim)
    stale = scene.mdl(victim, pages=2, locked=False)  # an unlocked (stale) MDL of the victim
    other_mdl = scene.mdl(bystander, pages=3)  # a locked MDL of another process...
    innocent_irp = scene.irp(other_mdl, [(innocent.devices[0], IRP_MJ_READ, 0)], 1,  # ...held by an innocent IRP
                             thread=scene.thread(bystander))
    unrelated = scene.irp(scene.mdl(bystander, pages=1), [(culprit.devices[0], IRP_MJ_WRITE, 0)], 1)
    expected["decoy_mdls"] = [stale, other_mdl]
    expected["stale_mdls"] = [stale]

    if kind == "irp":
        for index in range(leaked):
            pages = 1 + index % 4
            if index == 0 and leaked >= 1:
                # A chained request: the IRP's first MDL is followed by a second one (MDL.Next).
                second = scene.mdl(victim, pages=2)
                first = scene.mdl(victim, pages=1, next_mdl=second)
                irp = scene.irp(first, [(culprit.devices[0], IRP_MJ_WRITE, 0), (upper.devices[0], IRP_MJ_WRITE, routine)],
                                1, thread=thread, file_object=file_object, allocated_locations=4,
                                cancel_routine=cancel_routine)
                expected["locked_mdls"] += [first, second]
                expected["irps"].append(irp)
                locked_pages += 3
                continue
            mdl = scene.mdl(victim, pages=pages)
            irp = scene.irp(mdl, [(culprit.devices[0], IRP_MJ_DEVICE_CONTROL, 0)], 1, thread=thread,
                            file_object=file_object, cancel_routine=cancel_routine)
            expected["locked_mdls"].append(mdl)
            expected["irps"].append(irp)
            locked_pages += pages
        expected["culprit"], expected["culprit_image"] = culprit.name, "leakyflt.sys"
        bugcheck = BugCheck(0x76, (0, victim, locked_pages, 0))
    elif kind == "orphan":
        for index in range(leaked):
            pages = 1 + index % 3
            expected["locked_mdls"].append(scene.mdl(victim, pages=pages))
            locked_pages += pages
        bugcheck = BugCheck(0x76, (0, victim, locked_pages, 0))
    elif kind == "unlock":
        unlocked = scene.mdl(victim, pages=2, locked=False)
        irp = scene.irp(unlocked, [(culprit.devices[0], IRP_MJ_READ, 0), (upper.devices[0], IRP_MJ_READ, routine)], 1,
                        thread=thread, file_object=file_object)
        expected["unlock_mdl"] = unlocked
        expected["irps"].append(irp)
        expected["culprit"], expected["culprit_image"] = culprit.name, "leakyflt.sys"
        bugcheck = BugCheck(0x76, (1, unlocked, 5, 0))
    else:
        bugcheck = BugCheck(0x76, (0, victim, 4, 0))
    expected["locked_pages"] = locked_pages
    eprocess = scene.layout("_EPROCESS") if scene.arch in ("x64", "arm64") else None
    if eprocess is not None:
        scene.write(victim + eprocess.offset("NumberOfLockedPages"), struct.pack("<Q", bugcheck.parameters[2]))
    expected["unrelated_irps"] = [innocent_irp, unrelated]
    scene.noise(noise_pages)
    description = f"synthesized 0x76 case '{kind}' ({arch})"
    data = scene.finish(bugcheck, description, ki_bugcheck_driver)
    return Scenario(f"0x76-{kind}-{arch}", arch, data, expected)
