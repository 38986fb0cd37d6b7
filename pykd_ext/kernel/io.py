"""I/O manager objects: `_IRP` with its `_IO_STACK_LOCATION`s, `_DEVICE_OBJECT`, `_DRIVER_OBJECT`,
`_FILE_OBJECT`. Each reader validates the object's Type and size fields before trusting it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from ..layouts import Layouts, LayoutError, StructView
from ..targets.base import MemoryReadError, Module, ObjectHeaders, Target, TargetError
from . import FLAG_NAMES_CACHED
from .modules import ModuleMap
from .threads import read_cid

IO_TYPE_DEVICE = 3
IO_TYPE_DRIVER = 4
IO_TYPE_FILE = 5
IO_TYPE_IRP = 6

# IO_STACK_LOCATION.Control bits (wdm.h), as !irp shows them.
SL_PENDING_RETURNED = 0x01
SL_INVOKE_ON_CANCEL = 0x20
SL_INVOKE_ON_SUCCESS = 0x40
SL_INVOKE_ON_ERROR = 0x80

# IRP.Flags bits (wdm.h; windows-kernel.md §4.2), in bit order.
IRP_FLAG_NAMES = (
    (0x1, "NOCACHE"), (0x2, "PAGING_IO"), (0x4, "SYNCHRONOUS_API"), (0x8, "ASSOCIATED_IRP"),
    (0x10, "BUFFERED_IO"), (0x20, "DEALLOCATE_BUFFER"), (0x40, "INPUT_OPERATION"), (0x80, "CREATE_OPERATION"),
    (0x100, "READ_OPERATION"), (0x200, "WRITE_OPERATION"), (0x400, "CLOSE_OPERATION"),
    (0x800, "DEFER_IO_COMPLETION"), (0x1000, "OB_QUERY_NAME"), (0x2000, "HOLD_DEVICE_QUEUE"),
)


def irp_flag_names(flags: int) -> List[str]:
    """The IRP_* names of the set bits of IRP.Flags; an unnamed bit as its hex value."""
    return list(_irp_flag_names(flags))


@lru_cache(maxsize=FLAG_NAMES_CACHED)
def _irp_flag_names(flags: int) -> Tuple[str, ...]:
    names = [f"IRP_{name}" for bit, name in IRP_FLAG_NAMES if flags & bit]
    unnamed = flags & ~sum(bit for bit, _ in IRP_FLAG_NAMES)
    return tuple(names + ([f"{unnamed:#x}"] if unnamed else []))


# DRIVER_OBJECT.DriverName is an object manager path such as \Driver\leakyflt or \FileSystem\Ntfs.
MAX_DRIVER_NAME_CHARACTERS = 256


def plausible_driver_name(name: str) -> bool:
    """True for a name that can be a driver object's: a printable object path starting with a backslash
    (memory that is not a name, decoded as UTF-16, holds NULs, control and replacement characters)."""
    return (name.startswith("\\") and 1 < len(name) <= MAX_DRIVER_NAME_CHARACTERS and name.isprintable()
            and "\ufffd" not in name)


# An IRP's StackCount comes from DEVICE_OBJECT.StackSize, a handful in practice; anything past this
# is garbage (and would make the stack walk read kilobytes of noise).
MAX_IRP_STACK_COUNT = 64
# IoAllocateIrp's StackSize is a CCHAR, so an IRP has room for at most 127 stack locations: its Size is
# IoSizeOfIrp(k) = sizeof(IRP) + k * sizeof(IO_STACK_LOCATION) with 1 <= k <= 127 (wdm.h).
MAX_IRP_ALLOCATED_LOCATIONS = 127
# DEVICE_OBJECT.Size (a USHORT) covers the object and its extension: an extension ends within 64 KiB.
# Where no pool block bounds the look, it goes back one page: a copy in kernel memory leakhunt cannot
# place costs little, and a device object more than a page below it is not found.
MAX_DEVICE_OBJECT_AND_EXTENSION = 0x10000
MAX_DEVICE_LOOK_OUTSIDE_BLOCKS = 0x1000

IRP_MJ_NAMES = [
    "CREATE", "CREATE_NAMED_PIPE", "CLOSE", "READ", "WRITE", "QUERY_INFORMATION", "SET_INFORMATION",
    "QUERY_EA", "SET_EA", "FLUSH_BUFFERS", "QUERY_VOLUME_INFORMATION", "SET_VOLUME_INFORMATION",
    "DIRECTORY_CONTROL", "FILE_SYSTEM_CONTROL", "DEVICE_CONTROL", "INTERNAL_DEVICE_CONTROL", "SHUTDOWN",
    "LOCK_CONTROL", "CLEANUP", "CREATE_MAILSLOT", "QUERY_SECURITY", "SET_SECURITY", "POWER",
    "SYSTEM_CONTROL", "DEVICE_CHANGE", "QUERY_QUOTA", "SET_QUOTA", "PNP",
]


def irp_headers(layouts: Layouts) -> ObjectHeaders:
    """The headers of every IRP there can be (Type 6, Size IoSizeOfIrp(k)), for a search to collect."""
    irp_size, stack_size = layouts.get("_IRP").size, layouts.get("_IO_STACK_LOCATION").size
    return ObjectHeaders(IO_TYPE_IRP, tuple(irp_size + k * stack_size
                                            for k in range(1, MAX_IRP_ALLOCATED_LOCATIONS + 1)))


def major_function_name(code: int) -> str:
    if 0 <= code < len(IRP_MJ_NAMES):
        return f"IRP_MJ_{IRP_MJ_NAMES[code]}"
    return f"invalid major function {code:#x}"


def completion_conditions(control: int) -> List[str]:
    names = []
    if control & SL_INVOKE_ON_SUCCESS:
        names.append("Success")
    if control & SL_INVOKE_ON_ERROR:
        names.append("Error")
    if control & SL_INVOKE_ON_CANCEL:
        names.append("Cancel")
    if control & SL_PENDING_RETURNED:
        names.append("pending")
    return names


@dataclass
class DriverObject:
    address: int
    name: str = ""
    driver_start: int = 0
    driver_size: int = 0
    image: Optional[Module] = None
    problems: List[str] = field(default_factory=list)


@dataclass
class DeviceObject:
    address: int
    driver: Optional[DriverObject] = None
    problems: List[str] = field(default_factory=list)


@dataclass
class FileObject:
    address: int
    name: str = ""
    problems: List[str] = field(default_factory=list)


@dataclass
class StackLocation:
    number: int  # 1-based, as !irp counts them
    address: int
    major: int
    minor: int
    flags: int
    control: int
    device: Optional[DeviceObject]
    file_object: int
    completion_routine: int
    context: int
    completion_module: Optional[Module] = None
    current: bool = False
    # Below the current location: the lower drivers have not been called with it yet; its device is
    # what memory holds (left by an earlier use of the IRP or set up ahead), not a driver that saw it.
    unused: bool = False

    @property
    def driver(self) -> Optional[DriverObject]:
        return self.device.driver if self.device else None


@dataclass
class Irp:
    address: int
    size: int
    stack_count: int
    current_location: int
    mdl_address: int
    flags: int
    thread: int
    original_file_object: int
    current_stack_pointer: int
    cancel: int = 0  # IRP.Cancel: IoCancelIrp was called
    cancel_routine: int = 0  # IRP.CancelRoutine: set while a driver holds the IRP cancelable
    thread_cid: Optional[Tuple[int, int]] = None  # Tail.Overlay.Thread's ETHREAD.Cid, when readable
    stack: List[StackLocation] = field(default_factory=list)
    file_object: Optional[FileObject] = None
    problems: List[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def current(self) -> Optional[StackLocation]:
        for location in self.stack:
            if location.current:
                return location
        return None


class IoReader:
    """Reads I/O objects with validation; device, driver and file objects are cached per address."""

    def __init__(self, target: Target, layouts: Layouts, modules: ModuleMap):
        self.target = target
        self.layouts = layouts
        self.modules = modules
        self._devices: Dict[int, DeviceObject] = {}
        self._drivers: Dict[int, DriverObject] = {}
        self._file_objects: Dict[int, FileObject] = {}
        # Thread -> its Cid (or None): the IRPs one thread pended all name it.
        self._thread_cids: Dict[int, Optional[Tuple[int, int]]] = {}

    # ---- IRP ---------------------------------------------------------------------------------

    def _header_problems(self, view) -> List[str]:
        irp_size = view.layout.size
        stack_size = self.layouts.get("_IO_STACK_LOCATION").size
        problems = []
        if view["Type"] != IO_TYPE_IRP:
            problems.append(f"Type {view['Type'] & 0xFFFF:#x} is not IO_TYPE_IRP (6)")
            return problems
        stack_count = view["StackCount"]
        if not 1 <= stack_count <= MAX_IRP_STACK_COUNT:
            problems.append(f"StackCount {stack_count} is outside 1..{MAX_IRP_STACK_COUNT}")
            return problems
        size = view["Size"]
        # IoInitializeIrp stores the allocation size: lookaside IRPs may have room for more stack
        # locations than StackCount, so Size is sizeof(IRP) + k * sizeof(IO_STACK_LOCATION), k >= StackCount.
        needed = irp_size + stack_count * stack_size
        if size < needed or (size - irp_size) % stack_size:
            problems.append(f"Size {size:#x} is not sizeof(IRP) {irp_size:#x} + k * {stack_size:#x} "
                            f"with k >= StackCount {stack_count}")
        elif (size - irp_size) // stack_size > MAX_IRP_ALLOCATED_LOCATIONS:
            problems.append(f"Size {size:#x} has room for more than {MAX_IRP_ALLOCATED_LOCATIONS} stack locations")
        current = view["CurrentLocation"]
        if not 1 <= current <= stack_count + 1:
            problems.append(f"CurrentLocation {current} is outside 1..StackCount+1 ({stack_count + 1})")
        return problems

    def read_irp(self, address: int) -> Irp:
        """Read the IRP at ``address`` with its whole stack. Raises MemoryReadError if unreadable."""
        view = self.layouts.view("_IRP", address)
        return self._irp_from_view(view, self._header_problems(view))

    def plausible_irp(self, address: int) -> Tuple[Optional[Irp], List[str]]:
        """(the IRP at ``address`` read as read_irp does, []), or (None, what is wrong with its header:
        ["unreadable"], or the checks it fails) when it is not an IRP's: one read of the header serves
        the check, the IRP and the reason it is not one."""
        try:
            view = self.layouts.view("_IRP", address)
        except MemoryReadError:
            return None, ["unreadable"]
        problems = self._header_problems(view)
        return (None, problems) if problems else (self._irp_from_view(view, problems), [])

    def _irp_from_view(self, view, header_problems: List[str]) -> Irp:
        address = view.address
        irp = Irp(
            address=address,
            size=view["Size"],
            stack_count=view["StackCount"],
            current_location=view["CurrentLocation"],
            mdl_address=view["MdlAddress"],
            flags=view["Flags"],
            thread=view["Tail.Overlay.Thread"],
            original_file_object=view["Tail.Overlay.OriginalFileObject"],
            current_stack_pointer=view["Tail.Overlay.CurrentStackLocation"],
            cancel=view["Cancel"],
            cancel_routine=view["CancelRoutine"],
        )
        irp.problems = header_problems
        if irp.problems:
            return irp
        stack_layout = self.layouts.get("_IO_STACK_LOCATION")
        first = address + view.layout.size
        expected_current = first + (irp.current_location - 1) * stack_layout.size
        if irp.current_location <= irp.stack_count and irp.current_stack_pointer != expected_current:
            irp.problems.append(f"Tail.Overlay.CurrentStackLocation {irp.current_stack_pointer:#x} is not the "
                                f"current location {expected_current:#x}")
            return irp
        try:  # the whole stack in one read; location by location only where part of it is unreadable
            stack_bytes: Optional[bytes] = self.target.read(first, irp.stack_count * stack_layout.size)
        except MemoryReadError:
            stack_bytes = None
        for number in range(1, irp.stack_count + 1):
            location_address = first + (number - 1) * stack_layout.size
            try:
                if stack_bytes is None:
                    location = self.layouts.view("_IO_STACK_LOCATION", location_address)
                else:
                    start = (number - 1) * stack_layout.size
                    location = StructView(stack_layout, location_address,
                                          stack_bytes[start:start + stack_layout.size], self.target.pointer_size)
                irp.stack.append(self._stack_location(number, location, irp.current_location))
            except MemoryReadError:
                irp.problems.append(f"stack location {number} at {location_address:#x} is unreadable")
                break
        if irp.original_file_object:
            irp.file_object = self.read_file_object(irp.original_file_object)
        if irp.thread and self.target.is_kernel_address(irp.thread):
            irp.thread_cid = self._thread_cid(irp.thread)
        return irp

    def _thread_cid(self, thread: int) -> Optional[Tuple[int, int]]:
        if thread not in self._thread_cids:
            self._thread_cids[thread] = read_cid(self.target, self.layouts, thread)
        return self._thread_cids[thread]

    def _stack_location(self, number: int, view, current_location: int) -> StackLocation:
        device_address = view["DeviceObject"]
        routine = view["CompletionRoutine"]
        unused = number < current_location
        return StackLocation(
            number=number,
            address=view.address,
            major=view["MajorFunction"],
            minor=view["MinorFunction"],
            flags=view["Flags"],
            control=view["Control"],
            device=self.read_device(device_address) if device_address else None,
            file_object=view["FileObject"],
            completion_routine=routine,
            context=view["Context"],
            completion_module=self.modules.find(routine) if routine else None,
            current=number == current_location,
            unused=unused,
        )

    # ---- device, driver, file -----------------------------------------------------------------

    def read_device(self, address: int) -> DeviceObject:
        if address in self._devices:
            return self._devices[address]
        device = DeviceObject(address)
        self._devices[address] = device
        try:
            view = self.layouts.view("_DEVICE_OBJECT", address)
            if view["Type"] != IO_TYPE_DEVICE:
                device.problems.append(f"Type {view['Type'] & 0xFFFF:#x} is not IO_TYPE_DEVICE (3)")
            elif view["Size"] < view.layout.size:
                device.problems.append(f"Size {view['Size']:#x} is smaller than sizeof(DEVICE_OBJECT)")
            elif view["DriverObject"]:
                device.driver = self.read_driver(view["DriverObject"])
            else:
                device.problems.append("DriverObject is NULL")
        except MemoryReadError as error:
            device.problems.append(f"unreadable ({error})")
        return device

    def device_with_extension_at(self, address: int, lowest: Optional[int]) -> Optional[Tuple[DeviceObject, int]]:
        """The valid device object whose extension holds ``address``, and where its extension starts.

        IoCreateDevice lays out one allocation: the DEVICE_OBJECT, its extension right after it
        (DeviceExtension), then the DEVOBJ_EXTENSION (DeviceObjectExtension). A candidate is looked for
        from ``address`` down to ``lowest`` (the start of the pool block holding it; None when unknown),
        at most MAX_DEVICE_OBJECT_AND_EXTENSION below (MAX_DEVICE_LOOK_OUTSIDE_BLOCKS without a block):
        Type IO_TYPE_DEVICE, DeviceExtension right after it and DeviceObjectExtension past ``address``,
        and a valid driver object. None when there is none.
        """
        layout = self.layouts.get("_DEVICE_OBJECT")
        if not layout.size or not (layout.has("DeviceExtension") and layout.has("DeviceObjectExtension")):
            return None
        align = 2 * self.target.pointer_size  # objects from pool are aligned to two pointers
        start = max(lowest, address - MAX_DEVICE_OBJECT_AND_EXTENSION, 0) if lowest is not None else \
            max(address - layout.size - MAX_DEVICE_LOOK_OUTSIDE_BLOCKS, 0)
        start += -start % align
        last = address - layout.size  # the object ends at or before the extension, so before ``address``
        if last < start:
            return None
        data = self._readable_before(start, address)
        if data is None:
            return None
        base = address - len(data)
        type_at = layout.offset("Type")
        extension_at, end_at = layout.offset("DeviceExtension"), layout.offset("DeviceObjectExtension")
        pointer = "<Q" if self.target.pointer_size == 8 else "<I"
        device_type = struct.pack("<h", IO_TYPE_DEVICE)
        found = data.rfind(device_type, 0, last - base + type_at + 2)  # nearest first, in C
        while found >= 0:
            offset, found = found - type_at, data.rfind(device_type, 0, found + 1)
            candidate = base + offset
            if offset < 0 or candidate % align or candidate > last:
                continue
            extension = struct.unpack_from(pointer, data, offset + extension_at)[0]
            extension_end = struct.unpack_from(pointer, data, offset + end_at)[0]
            if extension != candidate + layout.size or not extension <= address < extension_end:
                continue
            device = self.read_device(candidate)
            if not device.problems and device.driver is not None and not device.driver.problems:
                return device, extension
        return None

    def extension_end(self, device: DeviceObject) -> int:
        """Where the extension of a device device_with_extension_at found ends: its DeviceObjectExtension."""
        return self.layouts.view("_DEVICE_OBJECT", device.address)["DeviceObjectExtension"]

    def _readable_before(self, start: int, end: int) -> Optional[bytes]:
        """The bytes ``[start, end)``, or the longest readable run of whole pages ending at ``end``."""
        try:
            return self.target.read(start, end - start)
        except MemoryReadError:
            pass
        first = max(start, (end - 1) & ~0xFFF)
        data = b""
        while first >= start:
            try:
                data = self.target.read(first, end - first)
            except MemoryReadError:
                break
            first -= 0x1000
        return data or None

    def read_driver(self, address: int) -> DriverObject:
        if address in self._drivers:
            return self._drivers[address]
        driver = DriverObject(address)
        self._drivers[address] = driver
        try:
            view = self.layouts.view("_DRIVER_OBJECT", address)
            if view["Type"] != IO_TYPE_DRIVER:
                driver.problems.append(f"Type {view['Type'] & 0xFFFF:#x} is not IO_TYPE_DRIVER (4)")
                return driver
            if view["Size"] != view.layout.size:
                driver.problems.append(f"Size {view['Size']:#x} is not sizeof(DRIVER_OBJECT) {view.layout.size:#x}")
                return driver
            driver.driver_start = view["DriverStart"]
            driver.driver_size = view["DriverSize"]
            name = self.target.read_unicode_string(view["DriverName"])
            if not plausible_driver_name(name):
                driver.problems.append(f"DriverName {name[:40]!r} is not a plausible driver object name")
                return driver
            driver.name = name
            # DriverStart is where the driver's image was loaded, its DllBase: an address that is not the
            # base of a loaded image names no image.
            image = self.modules.find(driver.driver_start) if driver.driver_start else None
            driver.image = image if image is not None and image.base == driver.driver_start else None
        except (MemoryReadError, TargetError, LayoutError) as error:
            driver.problems.append(f"unreadable ({error})")
        return driver

    def read_file_object(self, address: int) -> FileObject:
        if address in self._file_objects:
            return self._file_objects[address]
        file_object = FileObject(address)
        self._file_objects[address] = file_object
        try:
            view = self.layouts.view("_FILE_OBJECT", address)
            if view["Type"] != IO_TYPE_FILE:
                file_object.problems.append(f"Type {view['Type'] & 0xFFFF:#x} is not IO_TYPE_FILE (5)")
            else:
                file_object.name = self.target.read_unicode_string(view["FileName"])
        except (MemoryReadError, TargetError, LayoutError) as error:
            file_object.problems.append(f"unreadable ({error})")
        return file_object
