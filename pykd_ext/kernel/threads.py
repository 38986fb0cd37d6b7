"""Threads and processes: `_KTHREAD` / `_ETHREAD` -> `_EPROCESS` (image name), start address -> module.

The process of a thread is read from KTHREAD.ApcState.Process (the process whose address space the
thread runs in); KTHREAD.Process (the owner) is compared with it when the layout has both. Every field
comes from the layouts (symbols first), so a build leakhunt has no table for still yields what does not
depend on the missing structure, and says what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..layouts import IMAGE_FILE_NAME_LENGTH, LayoutError, Layouts
from ..targets.base import MemoryReadError, Target

# DISPATCHER_HEADER.Type of a KTHREAD and a KPROCESS (KOBJECTS ThreadObject and ProcessObject).
THREAD_OBJECT = 6
PROCESS_OBJECT = 3


@dataclass
class ProcessInfo:
    address: int
    name: Optional[str] = None
    process_id: Optional[int] = None
    problems: List[str] = field(default_factory=list)


@dataclass
class ThreadInfo:
    address: int
    process: Optional[int] = None  # KTHREAD.ApcState.Process
    owner_process: Optional[int] = None  # KTHREAD.Process, when it differs (the thread was attached)
    process_id: Optional[int] = None
    thread_id: Optional[int] = None
    start_address: Optional[int] = None  # ETHREAD.StartAddress
    win32_start_address: Optional[int] = None  # ETHREAD.Win32StartAddress
    problems: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # structures whose layout is unknown


def object_type(target: Target, layouts: Layouts, address: int) -> int:
    """DISPATCHER_HEADER.Type of a dispatcher object. Raises MemoryReadError."""
    return layouts.view("_DISPATCHER_HEADER", address)["Type"]


def read_process_info(target: Target, layouts: Layouts, address: int) -> ProcessInfo:
    """Name and PID of the EPROCESS at ``address`` (ImageFileName, UniqueProcessId)."""
    info = ProcessInfo(address)
    try:
        kind = object_type(target, layouts, address)
    except MemoryReadError:
        info.problems.append("the process object is unreadable")
        return info
    if kind != PROCESS_OBJECT:
        info.problems.append(f"Header.Type {kind} is not ProcessObject ({PROCESS_OBJECT})")
    layout = layouts.find("_EPROCESS")
    if layout is None:
        info.problems.append(f"the _EPROCESS layout is unknown for build {target.build or 'unknown'} without "
                             f"symbols: the process is shown by address only")
        return info
    try:
        if layout.has("ImageFileName"):
            raw = target.read(address + layout.offset("ImageFileName"), IMAGE_FILE_NAME_LENGTH)
            info.name = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
        if layout.has("UniqueProcessId"):
            info.process_id = target.read_pointer(address + layout.offset("UniqueProcessId"))
    except MemoryReadError as error:
        info.problems.append(f"the process fields are unreadable ({error})")
    return info


def read_cid(target: Target, layouts: Layouts, address: int) -> Optional[Tuple[int, int]]:
    """ETHREAD.Cid (UniqueProcess, UniqueThread) of the thread at ``address``; None when it is not a
    readable thread object or the build's _ETHREAD layout is unknown."""
    ethread = layouts.find("_ETHREAD")
    if ethread is None or not (ethread.has("Cid.UniqueProcess") and ethread.has("Cid.UniqueThread")):
        return None
    try:
        if object_type(target, layouts, address) != THREAD_OBJECT:
            return None
        view = layouts.view("_ETHREAD", address)
        return view["Cid.UniqueProcess"], view["Cid.UniqueThread"]
    except (MemoryReadError, LayoutError):
        return None


def read_thread(target: Target, layouts: Layouts, address: int) -> ThreadInfo:
    """Decode the ETHREAD at ``address`` as far as the known layouts allow."""
    info = ThreadInfo(address)
    try:
        kind = object_type(target, layouts, address)
    except MemoryReadError:
        info.problems.append("the thread object is unreadable")
        return info
    if kind != THREAD_OBJECT:
        # Freed or overwritten memory: its "start address" would name whatever driver the garbage points into.
        info.problems.append(f"Header.Type {kind} is not ThreadObject ({THREAD_OBJECT}): not a thread (freed or "
                             f"overwritten memory), so nothing is read from it")
        return info
    kthread = layouts.find("_KTHREAD")
    if kthread is None:
        info.missing.append("_KTHREAD")
    else:
        try:
            view = layouts.view("_KTHREAD", address)
            owner = view["Process"] if kthread.has("Process") else None
            info.process = view["ApcState.Process"] if kthread.has("ApcState.Process") else owner
            if owner is not None and owner != info.process:
                info.owner_process = owner
        except (MemoryReadError, LayoutError) as error:
            info.problems.append(f"the KTHREAD fields are unreadable ({error})")
        if info.process is not None and not target.is_kernel_address(info.process):
            info.problems.append(f"its process pointer {info.process:#x} is not a kernel address")
            info.process = None
    ethread = layouts.find("_ETHREAD")
    if ethread is None:
        info.missing.append("_ETHREAD")
        return info
    try:
        view = layouts.view("_ETHREAD", address)
        if ethread.has("StartAddress"):
            info.start_address = view["StartAddress"] or None
        if ethread.has("Win32StartAddress"):
            info.win32_start_address = view["Win32StartAddress"] or None
        if ethread.has("Cid.UniqueProcess"):
            info.process_id = view["Cid.UniqueProcess"]
        if ethread.has("Cid.UniqueThread"):
            info.thread_id = view["Cid.UniqueThread"]
    except (MemoryReadError, LayoutError) as error:
        info.problems.append(f"the ETHREAD fields are unreadable ({error})")
    return info


# A process with more threads than this, or a thread list that does not come back to its head within
# it, is corrupt.
MAX_PROCESS_THREADS = 4096
# x64 and x86 kernel stacks are a few pages (12-24 KiB; larger while a thread runs on a GUI or an
# expanded stack): a range beyond this is not a stack.
MAX_KERNEL_STACK = 1 << 20


@dataclass(frozen=True)
class KernelStack:
    thread: int
    limit: int  # KTHREAD.StackLimit: the lowest address of the stack
    base: int  # KTHREAD.StackBase: one past its highest address

    def contains(self, address: int) -> bool:
        return self.limit <= address < self.base


def kernel_stacks(target: Target, layouts: Layouts, process: int) -> Tuple[List[KernelStack], List[str]]:
    """The kernel stacks of the process's threads (EPROCESS.ThreadListHead -> ETHREAD.ThreadListEntry,
    KTHREAD.StackLimit and StackBase), bounded and cycle-safe; and what stopped the walk, if anything.

    None without the layouts of this build (symbols, or a built-in table for the build itself: a stack
    placed through another build's offsets would be anywhere), nor when the list head is empty (NULL)."""
    needed = (("_EPROCESS", ("ThreadListHead",)), ("_ETHREAD", ("ThreadListEntry",)),
              ("_KTHREAD", ("StackLimit", "StackBase")))
    found = [layouts.peek_certain(name) for name, _ in needed]
    if any(layout is None or not all(layout.has(f) for f in fields) for layout, (_, fields) in zip(found, needed)):
        return [], []
    eprocess, ethread, kthread = found
    head = process + eprocess.offset("ThreadListHead")
    link_offset = ethread.offset("ThreadListEntry")
    stacks: List[KernelStack] = []
    seen = {head}
    try:
        link = target.read_pointer(head)
        if not link:
            return [], []
        while link != head:
            if not target.is_kernel_object_address(link):
                return stacks, [f"the thread list of process {process:#x} holds {link:#x}, not a kernel address: "
                                f"only {len(stacks)} thread(s) were read"]
            if link in seen or len(seen) > MAX_PROCESS_THREADS:
                return stacks, [f"the thread list of process {process:#x} loops or is implausibly long; only "
                                f"{len(stacks)} thread(s) were read"]
            seen.add(link)
            thread = link - link_offset
            limit = target.read_pointer(thread + kthread.offset("StackLimit"))
            base = target.read_pointer(thread + kthread.offset("StackBase"))
            if target.is_kernel_address(limit) and limit < base <= limit + MAX_KERNEL_STACK:
                stacks.append(KernelStack(thread, limit, base))
            link = target.read_pointer(link)
    except (MemoryReadError, LayoutError) as error:
        return stacks, [f"the thread list of process {process:#x} is cut short ({error})"]
    return stacks, []
