"""The walk from frame to frame, the same for every architecture: each step is bounded and checked."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from . import arm64, x64
from .model import (CONTEXT, CORRUPT_SP, DEFAULT_MAX_FRAMES, END_OF_STACK, FRAME_CAP, IMAGE_UNAVAILABLE,
                    NO_IMAGE, OUTSIDE_STACK_LIMITS, SP_NOT_GROWING, Frame, ImageProvider, ImageView,
                    ScanEntry, StackReader, Stop, Unwind, UnwindStop, read_exact)


@dataclass(frozen=True)
class Architecture:
    name: str
    ip: str  # register names
    sp: str
    alignment: int  # a stack pointer that is not a multiple of it is corrupt
    pointer_size: int
    # (image or None, registers, exact, read_stack, sp_exact) -> Step; raises UnwindStop
    step: Callable


def _x64_step(image: Optional[ImageView], registers, exact: bool, read_stack: StackReader, sp_exact: bool):
    if image is None or image.read is None:
        raise _no_image_stop(image, registers["rip"])
    return x64.unwind_frame(image, registers, exact, read_stack)


X64 = Architecture("x64", "rip", "rsp", 8, 8, _x64_step)
ARM64 = Architecture("arm64", "pc", "sp", 16, 8, arm64.unwind_frame)
ARCHITECTURES = {"x64": X64, "arm64": ARM64}


def _no_image_stop(image: Optional[ImageView], address: int) -> UnwindStop:
    if image is None:
        return UnwindStop(NO_IMAGE, f"{address:#x} lies in no loaded image")
    why = f": {image.unavailable}" if image.unavailable else ""
    return UnwindStop(IMAGE_UNAVAILABLE, f"the image of {image.name} is not at hand{why}")


def unwind(architecture: str, registers: Mapping[str, int], read_stack: StackReader, images: ImageProvider,
           stack_limits: Optional[Tuple[int, int]] = None, max_frames: int = DEFAULT_MAX_FRAMES) -> Unwind:
    """The call stack from a starting context, innermost frame first, and why it ended.

    ``registers``: by lower-case name (x64: rip, rsp and whatever else is known, rbp, rbx, ..., xmm6;
    ARM64: pc, sp, fp, lr, x19..x28). ``stack_limits``: (lowest, highest) address of the thread's stack
    when known; every frame's stack pointer must lie in it. The unwind never reads outside what
    ``read_stack`` and the images give, and stops at the first frame it cannot unwind, saying why.
    """
    arch = ARCHITECTURES[architecture]
    current: Dict[str, int] = dict(registers)
    method, exact, sp_exact = CONTEXT, True, True
    frames: List[Frame] = []
    notes: List[str] = []
    while True:
        ip, sp = current[arch.ip], current[arch.sp]
        number = len(frames)
        lookup = ip if exact else ip - 1
        image = images(lookup)
        name = image.name if image is not None else None

        def stop(reason: str, message: str, return_address: Optional[int] = None) -> Unwind:
            frames.append(Frame(number, sp, ip, return_address, current, method, name))
            return Unwind(frames, Stop(reason, message, number), arch.name, notes)

        problem = _bad_stack_pointer(arch, sp, stack_limits)
        if problem:
            return stop(*problem)
        if number + 1 >= max_frames:
            return stop(FRAME_CAP, f"the unwind stopped at its cap of {max_frames} frames")
        try:
            step = arch.step(image, current, exact, read_stack, sp_exact)
        except UnwindStop as error:
            return stop(error.reason, error.message)
        if step.note:
            notes.append(f"frame {number}: {step.note}")
        caller = step.registers
        caller_ip, caller_sp = caller[arch.ip], caller[arch.sp]
        if caller_sp <= sp:  # checked first: what was read for the caller is not to be trusted
            return stop(SP_NOT_GROWING, f"the caller's stack pointer {caller_sp:#x} is not above this "
                                        f"frame's {sp:#x}")
        if caller_ip == 0:
            return stop(END_OF_STACK, "the return address is 0: the thread's first frame", 0)
        frames.append(Frame(number, sp, ip, caller_ip, current, method, name, step.machine_frame))
        current, method, exact, sp_exact = caller, step.method, step.exact, sp_exact and step.sp_exact


def _bad_stack_pointer(arch: Architecture, sp: int, limits: Optional[Tuple[int, int]]) -> Optional[Tuple[str, str]]:
    if sp % arch.alignment or not _canonical(sp):
        return CORRUPT_SP, f"the stack pointer {sp:#x} is corrupt (not {arch.alignment}-byte aligned or not canonical)"
    if limits is not None and not limits[0] <= sp <= limits[1]:
        return OUTSIDE_STACK_LIMITS, (f"the stack pointer {sp:#x} is outside the thread's stack "
                                      f"{limits[0]:#x}-{limits[1]:#x}")
    return None


def _canonical(address: int) -> bool:
    top = address >> 47
    return top == 0 or top == 0x1FFFF


def scan_below(result: Unwind, read_stack: StackReader, images: ImageProvider, end: int,
               max_entries: int = 64) -> List[ScanEntry]:
    """The values on the stack from the last unwound frame's stack pointer up to ``end`` that lie in a
    loaded image: candidate return addresses found by a scan (they may be stale), for the part of the
    stack the unwind could not reach. Stops at the first page the source lacks."""
    entries: List[ScanEntry] = []
    width = 8
    address = result.last_sp
    while address + width <= end and len(entries) < max_entries:
        chunk_end = min(end, (address | 0xFFF) + 1)
        data = read_exact(read_stack, address, chunk_end - address)
        if data is None:
            break
        for offset in range(0, len(data) - width + 1, width):
            value = struct.unpack_from("<Q", data, offset)[0]
            image = images(value) if value else None
            if image is not None:
                entries.append(ScanEntry(address + offset, value, image.name))
                if len(entries) >= max_entries:
                    break
        address = chunk_end
    return entries
