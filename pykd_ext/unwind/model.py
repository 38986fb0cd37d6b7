"""What the unwinder takes (images, stack reads) and gives (frames, the reason it stopped)."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..targets.base import MemoryReadError

# How a frame was found: its registers come from the starting context, from the unwind data of the
# function below it (its prologue's codes or its epilogue's instructions), from the return address at
# [rsp] of a leaf function below it, from a machine frame (an interrupt or trap) below it, or from an
# ARM64 frame record (fp, lr) below it.
CONTEXT = "context"
UNWIND_DATA = "unwind data"
EPILOGUE = "epilogue"
LEAF = "leaf function"
MACHINE_FRAME = "machine frame"
FRAME_POINTER = "frame pointer chain"
SCAN = "scan"

# Why an unwind ended.
END_OF_STACK = "end of stack"  # a return address of 0: the thread's first frame
NO_IMAGE = "no image"  # the address lies in no loaded image
IMAGE_UNAVAILABLE = "image not at hand"  # the image is known, its bytes (unwind data) are not
UNWIND_DATA_UNAVAILABLE = "unwind data not available"  # a page of the image's unwind data is missing
BAD_UNWIND_DATA = "bad unwind data"  # unwind data that cannot be right (unknown code, a cycle, out of bounds)
UNSUPPORTED = "unsupported unwind data"  # valid unwind data this unwinder does not handle (ARM64 custom stacks, SVE)
STACK_UNAVAILABLE = "stack not available"  # a page of the stack that the unwind must read is missing
CORRUPT_SP = "corrupt stack pointer"  # misaligned or non-canonical
SP_NOT_GROWING = "stack pointer not growing"
OUTSIDE_STACK_LIMITS = "outside the stack limits"
FRAME_CAP = "frame cap"

DEFAULT_MAX_FRAMES = 256

StackReader = Callable[[int, int], bytes]


class UnwindStop(Exception):
    """Raised inside one step: the frame cannot be unwound, for ``reason`` (one of the reasons above)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Step:
    """One frame unwound: the caller's registers, how they were found, and whether the caller's ip is
    exact (an interrupted instruction, not a return address: it is looked up as it is, and may be in
    a prologue or an epilogue)."""

    registers: Dict[str, int]
    method: str
    exact: bool = False
    note: str = ""
    sp_exact: bool = True  # False after a frame record: the caller's stack pointer is a lower bound
    machine_frame: Optional[int] = None  # where the interrupted rip was read, when the step popped a machine frame


@dataclass(frozen=True)
class ImageView:
    """One loaded image as the unwinder needs it.

    ``read(rva, size)`` returns the bytes of the image as loaded (by RVA, not by file offset) and raises
    MemoryReadError for bytes the source lacks; it is None when the image's bytes are not at hand, and
    ``unavailable`` then says why. ``exception_directory`` is the (RVA, size) of its exception directory
    (``.pdata``: data directory entry 3 of the PE optional header); (0, 0) when it has none.
    ``find_entry(entry_size, rva)``, where the source has a faster way than reading the table entry by
    entry (an image file's table, read once), gives what ``search_function_table`` gives of it (the index
    of the entry with the last begin at or before ``rva``, None when every function begins after it) and
    raises MemoryReadError when it cannot tell (the table is then searched entry by entry); a recording
    made meanwhile must keep the entries the search looked at, as reading them one by one would have.
    """

    name: str
    base: int
    size: int
    read: Optional[Callable[[int, int], bytes]] = None
    exception_directory: Tuple[int, int] = (0, 0)
    unavailable: str = ""
    find_entry: Optional[Callable[[int, int], Optional[int]]] = None

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


# For an address, the image it lies in, or None when it lies in none.
ImageProvider = Callable[[int], Optional[ImageView]]


@dataclass(frozen=True)
class Frame:
    """One frame of an unwound stack, as ``k`` shows it.

    ``child_sp`` is the stack pointer while the frame's function ran at ``ip``; ``return_address``
    is where it returns to (the next frame's ip), None where the unwind stopped at this frame.
    ``registers`` are the registers known in this frame (volatile registers only in the first frame),
    by lower-case name; ``method`` says how the frame was found (CONTEXT for the first frame). A frame
    found by FRAME_POINTER has no recorded stack pointer: its child_sp is the address just above the
    frame record it came from, the lowest its stack pointer can be. ``machine_frame``: where this
    frame's function (an interrupt or trap handler) has the machine frame the CPU pushed, the address of
    its interrupted rip, when the unwind popped one here.
    """

    number: int
    child_sp: int
    ip: int
    return_address: Optional[int]
    registers: Dict[str, int]
    method: str
    image: Optional[str] = None
    machine_frame: Optional[int] = None


@dataclass(frozen=True)
class Stop:
    """Why the unwind ended, at which frame, in one line."""

    reason: str
    message: str
    frame: int


@dataclass
class Unwind:
    """The unwound frames, innermost first, and why the unwind ended."""

    frames: List[Frame]
    stop: Stop
    architecture: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the unwind reached the thread's first frame (a return address of 0)."""
        return self.stop.reason == END_OF_STACK

    @property
    def last_sp(self) -> int:
        """The stack pointer of the last frame: where a scan of the rest of the stack starts."""
        return self.frames[-1].child_sp


@dataclass(frozen=True)
class ScanEntry:
    """A value on the stack, below the unwound frames, that lies in a loaded image: a candidate
    return address found by scanning, not by unwinding (it may be stale)."""

    stack_address: int
    value: int
    image: str
    method: str = SCAN


def image_bytes(image: ImageView, rva: int, size: int, what: str) -> bytes:
    """``size`` bytes of ``image``'s unwind data or code at ``rva`` (``what`` they are); UnwindStop
    (unwind data not available, with the source's reason) where the image does not have them all."""
    reason = ""
    try:
        data = image.read(rva, size)
    except MemoryReadError as error:
        data, reason = b"", error.reason
    if len(data) < size:
        raise UnwindStop(UNWIND_DATA_UNAVAILABLE, f"the {what} of {image.name} at RVA {rva:#x} is not available"
                                                  + (f": {reason}" if reason else ""))
    return bytes(data)


def search_function_table(begin_of: Callable[[int], int], count: int, rva: int) -> Tuple[Optional[int], List[int]]:
    """The binary search of a ``.pdata`` table of ``count`` entries sorted by their function's begin RVA
    (``begin_of(index)``): (the index of the entry with the last begin at or before ``rva``, None when
    every function begins after it; the indexes looked at, in order). Whatever the table holds, the
    same entries are looked at: a recording that keeps them replays the same answer."""
    low, high = 0, count - 1
    found: Optional[int] = None
    looked_at: List[int] = []
    while low <= high:
        middle = (low + high) // 2
        looked_at.append(middle)
        if begin_of(middle) <= rva:
            found, low = middle, middle + 1
        else:
            high = middle - 1
    return found, looked_at


def pdata_entry(image: ImageView, entry_size: int, rva: int) -> Optional[bytes]:
    """The ``.pdata`` entry (``entry_size`` bytes, each starting with its function's begin RVA, sorted)
    with the last begin at or before ``rva``, by binary search of the exception directory (read entry
    by entry, or through the image's ``find_entry``); None when every function begins after it.
    Whether the function covers ``rva`` is for the caller to check."""
    table, table_size = image.exception_directory
    if image.find_entry is not None:
        try:
            index = image.find_entry(entry_size, rva)
        except MemoryReadError:  # it cannot tell: the table is searched entry by entry below
            pass
        else:
            return None if index is None else \
                image_bytes(image, table + index * entry_size, entry_size, "exception directory")
    entries: Dict[int, bytes] = {}

    def begin_of(index: int) -> int:
        entries[index] = image_bytes(image, table + index * entry_size, entry_size, "exception directory")
        return struct.unpack_from("<I", entries[index])[0]

    found, _ = search_function_table(begin_of, table_size // entry_size, rva)
    return None if found is None else entries[found]


def read_exact(read: StackReader, address: int, size: int) -> Optional[bytes]:
    """``size`` bytes at ``address``, or None when the source does not hold all of them."""
    try:
        data = read(address, size)
    except MemoryReadError:
        return None
    return bytes(data) if len(data) >= size else None
