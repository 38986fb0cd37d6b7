"""A small memory dump (DumpType 4, a kernel minidump) as a Target.

Its virtual memory is what the triage section copied (``triage.py``) and nothing else: the data blocks,
each at its virtual address, and the copies of the crashing thread, its process and its kernel stack at
the addresses they came from. Every other read raises MemoryReadError, and the search raises
SearchUnavailable saying why: the analyses run unchanged on whatever the dump holds. The loaded-driver
list gives ``modules()`` (with each image's timestamp); the unloaded drivers, the image the kernel blamed,
the crashing thread, process, stack and registers are ``crash_facts()``.

Where each copy came from:

- the thread: ``KPRCB.CurrentThread`` of the processor copy (the pointer after the KPRCB's first
  pointer-sized word on every architecture), confirmed when the thread copy's
  ``DISPATCHER_HEADER.WaitListHead`` (an empty list points at itself) or a data block at that address
  agrees;
- the process: the process copy's own empty ``DISPATCHER_HEADER.WaitListHead``, confirmed when the
  thread copy holds a pointer to it (``KTHREAD.ApcState.Process``);
- the stack: the triage section's TopOfStack.

The KPRCB copy is not mapped on its own: the dump gives no address for it (its data blocks hold the
crashing processor's KPRCB in both real samples). A copy whose address cannot be confirmed is left out
and the report says so.
"""
from __future__ import annotations

import bisect
import os
import struct
from typing import Dict, Iterable, List, Optional, Tuple

from ..kernel.modules import MAX_IMAGE_SIZE, module_name, plausible_image_name
from .base import (CrashFacts, MemoryReadError, Module, PfnRange, ProgressCallback, SearchHit, SearchUnavailable,
                   UnloadedModule, joined)
from .dumpfile import CONFIGURE_KERNEL_DUMP, DumpFileTarget, file_shrank
from .dumpheader import DumpHeader, format_size, truncated_dump
from .triage import TriageDump, TriageError, TriageTruncated, read_triage

# DISPATCHER_HEADER.WaitListHead, the first LIST_ENTRY of a thread or process object.
WAIT_LIST_HEAD = 0x8


class SmallDumpTarget(DumpFileTarget):
    """A small memory dump: the header, plus its triage section when that is intact."""

    def __init__(self, path: str, handle, header: DumpHeader):
        name = os.path.basename(path)
        super().__init__(path, handle, header, None, "")
        self._notes: List[str] = []
        self._segments: List[Tuple[int, int, int]] = []  # (first address, end address, file offset), sorted
        self._starts: List[int] = []
        self._facts: Optional[CrashFacts] = None
        self._drivers: List[Module] = []
        self.triage: Optional[TriageDump] = None
        try:
            self.triage = read_triage(handle, header)
        except TriageTruncated as error:  # never analyzed as if it were whole
            raise truncated_dump(path, error.needed, header.file_size, error.what, header) from None
        except TriageError as error:
            self._notes.append(f"the triage section of {name} is damaged ({error}): only its header is read")
        except OSError as error:
            self._notes.append(f"the triage section of {name} cannot be read ({error.strerror or error}): only its "
                               f"header is read")
        if self.triage is not None:
            self._map_memory(self.triage)
            self._drivers = self._driver_modules(self.triage)
        self.hunt_unavailable = self._why_no_hunt(name)
        self._unreadable = "not in this small dump (it holds only the memory blocks the kernel chose to keep)"

    def _why_no_hunt(self, name: str) -> str:
        if self.triage is None:
            what = "only a damaged triage section"
        else:
            held = sum(end - start for start, end, _ in self._segments)
            what = (f"the driver lists, the crashing thread and its stack and {len(self.triage.blocks)} memory "
                    f"blocks ({format_size(held)})")
        return (f"{name} is a small memory dump, which holds {what} but not the rest of kernel memory, which the "
                f"hunt reads and searches; a kernel or complete memory dump has it: {CONFIGURE_KERNEL_DUMP}.")

    # ---- the memory the dump holds ---------------------------------------------------------------

    def _map_memory(self, triage: TriageDump) -> None:
        intervals = [(block.address, block.address + block.size, block.offset) for block in triage.blocks if block.size]
        copies = self._copy_addresses(triage)
        for name, address in copies.items():
            offset, size = triage.copy(name)
            if address is not None and size:
                intervals.append((address, address + size, offset))
        self._facts = CrashFacts(
            unloaded=tuple(UnloadedModule(d.name, d.start, d.end, d.truncated) for d in triage.unloaded),
            broken_driver=triage.broken_driver or None,
            thread=copies["Thread"], process=copies["Process"],
            stack=(triage.top_of_stack, triage.fields["SizeOfCallStack"]) if copies["CallStack"] else None,
            registers=tuple(triage.registers))
        covered = 0
        for start, end, offset in sorted(intervals):
            if end <= covered:
                continue
            if start < covered:  # overlapping copies hold the same bytes: the first one is kept
                offset, start = offset + covered - start, covered
            self._segments.append((start, end, offset))
            covered = end
        self._starts = [start for start, _, _ in self._segments]

    def _copy_addresses(self, triage: TriageDump) -> Dict[str, Optional[int]]:
        """The address each copy came from, or None when the dump does not confirm one."""
        width = self.pointer_size
        thread_copy = self._copy_bytes(triage, "Thread")
        process_copy = self._copy_bytes(triage, "Process")
        prcb = self._copy_bytes(triage, "Prcb")
        thread = self._unpack(prcb, width) if len(prcb) >= 2 * width else None
        if thread is not None and not (self._points_at_itself(thread_copy, thread)
                                       or self._block_agrees(triage, thread, thread_copy)):
            self._notes.append(f"the small dump's thread copy does not confirm KPRCB.CurrentThread {thread:#x} as its "
                               f"address: it is left out")
            thread = None
        process = self._self_address(process_copy)
        if process is not None and thread_copy and not self._holds_pointer(thread_copy, process):
            self._notes.append(f"the crashing thread does not point to the process copy's address {process:#x}: the "
                               f"process copy is left out")
            process = None
        _, stack_size = triage.copy("CallStack")
        stack = triage.top_of_stack if stack_size and self.is_kernel_address(triage.top_of_stack) else None
        return {"Thread": thread, "Process": process, "CallStack": stack}

    def _copy_bytes(self, triage: TriageDump, name: str) -> bytes:
        offset, size = triage.copy(name)
        return self._file_bytes(offset, size) if size else b""

    def _file_bytes(self, offset: int, size: int) -> bytes:
        self._handle.seek(offset)
        data = self._handle.read(size)
        if len(data) != size:
            raise file_shrank(f"{size:#x} bytes at offset {offset:#x}")
        return data

    def _unpack(self, data: bytes, offset: int) -> int:
        return struct.unpack_from("<Q" if self.pointer_size == 8 else "<I", data, offset)[0]

    def _points_at_itself(self, copy: bytes, address: int) -> bool:
        """True when the copy's WaitListHead is an empty list at ``address`` + WAIT_LIST_HEAD."""
        if len(copy) < WAIT_LIST_HEAD + 2 * self.pointer_size:
            return False
        head = address + WAIT_LIST_HEAD
        return self._unpack(copy, WAIT_LIST_HEAD) == head == self._unpack(copy, WAIT_LIST_HEAD + self.pointer_size)

    def _self_address(self, copy: bytes) -> Optional[int]:
        """The address an object copy came from, read off its empty WaitListHead, or None."""
        if len(copy) < WAIT_LIST_HEAD + 2 * self.pointer_size:
            return None
        address = self._unpack(copy, WAIT_LIST_HEAD) - WAIT_LIST_HEAD
        return address if self.is_kernel_object_address(address) and self._points_at_itself(copy, address) else None

    def _holds_pointer(self, copy: bytes, value: int) -> bool:
        width = self.pointer_size
        return any(self._unpack(copy, offset) == value for offset in range(0, len(copy) - width + 1, width))

    def _block_agrees(self, triage: TriageDump, address: int, copy: bytes) -> bool:
        for block in triage.blocks:
            if block.address == address and 0 < block.size <= len(copy):
                return self._file_bytes(block.offset, block.size) == copy[:block.size]
        return False

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        chunks = []
        position, end = address, address + size
        while position < end:
            index = bisect.bisect_right(self._starts, position) - 1
            if index < 0 or self._segments[index][1] <= position:
                raise MemoryReadError(address, size, reason=self._unreadable)
            start, segment_end, offset = self._segments[index]
            take = min(end, segment_end) - position
            chunks.append(self._file_bytes(offset + position - start, take))
            position += take
        return b"".join(chunks)

    def readable_ranges(self, address: int, size: int) -> List[Tuple[int, int]]:
        ranges: List[Tuple[int, int]] = []
        end = address + size
        index = max(0, bisect.bisect_right(self._starts, address) - 1)
        for start, segment_end, _ in self._segments[index:]:
            if start >= end:
                break
            low, high = max(start, address), min(segment_end, end)
            if low < high:
                ranges.append((low, high))
        return joined(ranges)

    def search_pointers(self, values: Iterable[int], pfn_range: Optional[PfnRange] = None,
                        progress: Optional[ProgressCallback] = None) -> Dict[int, List[SearchHit]]:
        raise SearchUnavailable(self.hunt_unavailable)

    # ---- facts of the triage section -----------------------------------------------------------

    def _driver_modules(self, triage: TriageDump) -> List[Module]:
        modules = []
        for driver in triage.drivers:
            image = driver.image
            if not plausible_image_name(image):
                self._notes.append(f"a driver entry of the small dump has no plausible image name ({image[:40]!r}); "
                                   f"skipped")
            elif not self.is_kernel_address(driver.base) or not 0 < driver.size <= MAX_IMAGE_SIZE:
                self._notes.append(f"the small dump's entry for {image} describes an impossible image range (DllBase "
                                   f"{driver.base:#x}, SizeOfImage {driver.size:#x}); skipped")
            else:
                modules.append(Module(module_name(image), image, driver.base, driver.size, driver.timestamp))
        return modules

    def modules(self) -> List[Module]:
        """The loaded images of the triage driver list (empty when the section is damaged)."""
        return list(self._drivers)

    def crash_facts(self) -> Optional[CrashFacts]:
        return self._facts

    def limitations(self) -> List[str]:
        """A damaged triage section, driver entries skipped, copies whose address is not confirmed."""
        return list(self._notes)
