"""A thread's call stack as WinDbg's ``k`` shows it, from a starting context and the images' own unwind data.

The unwinder does not know where bytes come from. A caller gives it:

- ``architecture``: ``"x64"`` or ``"arm64"``;
- ``registers``: the starting context by lower-case name. x64: ``rip``, ``rsp``, and every other
  register it knows (``rbp``, ``rbx``, ``rsi``, ``rdi``, ``r12``-``r15``; ``xmm6``-``xmm15`` as 128-bit
  integers; volatile ones are shown in the first frame only). ARM64: ``pc``, ``sp``, ``fp``, ``lr`` and
  ``x19``-``x28`` when known (``d8``-``d15`` as integers);
- ``read_stack(address, size) -> bytes``: the thread's memory, raising
  ``pykd_ext.targets.base.MemoryReadError`` (or returning fewer bytes) where the source lacks it;
- ``images(address) -> ImageView | None``: the loaded image an address lies in, or None when it lies
  in none. An ``ImageView`` carries the image's name, base and size and, when its bytes are at hand,
  ``read(rva, size) -> bytes`` (the image as loaded, by RVA; MemoryReadError where missing) and
  ``exception_directory`` (RVA, size of ``.pdata``, PE data directory entry 3). When the bytes are not
  at hand, ``read`` is None and ``unavailable`` says why in a few words;
- ``stack_limits``: (lowest, highest) address of the thread's stack, when known; ``max_frames``.

``unwind(...)`` returns an ``Unwind``: ``frames`` (``Frame``: number, child_sp, ip, return_address,
registers, method, image), and ``stop`` (reason, one-line message, frame number): the unwind stops at
the first frame it cannot unwind and never makes frames up. ``scan_below(result, read_stack, images,
end)`` then lists the values in images further up the stack, labelled as a scan.

Adapters (each a few lines):

- a kernel dump or pykd: ``read_stack`` is the target's virtual ``read``; an image's ``read`` is
  ``lambda rva, size: target.read(module.base + rva, size)``, its exception directory read from its
  PE header in memory (``MemoryReadError`` where the dump lacks a page: that frame stops with the
  reason, the others go on);
- a small dump: ``read_stack`` reads the triage section's copy of the stack; the images come from
  the symbol path (name, TimeDateStamp, SizeOfImage), their sections laid out at their RVAs; an image
  that the path lacks is an ``ImageView`` with ``read=None`` and ``unavailable`` saying so;
- a snapshot: the stack pages and the unwind data it recorded (the ``.pdata`` entries, UNWIND_INFO and
  the code bytes at each frame's instruction pointer), read back the same way.
"""
from __future__ import annotations

from .model import (BAD_UNWIND_DATA, CONTEXT, CORRUPT_SP, END_OF_STACK, EPILOGUE, FRAME_CAP, FRAME_POINTER,
                    IMAGE_UNAVAILABLE, LEAF, MACHINE_FRAME, NO_IMAGE, OUTSIDE_STACK_LIMITS, SCAN, SP_NOT_GROWING,
                    STACK_UNAVAILABLE, UNSUPPORTED, UNWIND_DATA, UNWIND_DATA_UNAVAILABLE, Frame, ImageProvider,
                    ImageView, ScanEntry, Stop, Unwind)
from .walk import scan_below, unwind

__all__ = [
    "unwind", "scan_below", "Frame", "ImageView", "ImageProvider", "ScanEntry", "Stop", "Unwind",
    "CONTEXT", "UNWIND_DATA", "EPILOGUE", "LEAF", "MACHINE_FRAME", "FRAME_POINTER", "SCAN",
    "END_OF_STACK", "NO_IMAGE", "IMAGE_UNAVAILABLE", "UNWIND_DATA_UNAVAILABLE", "BAD_UNWIND_DATA",
    "STACK_UNAVAILABLE", "UNSUPPORTED", "CORRUPT_SP", "SP_NOT_GROWING", "OUTSIDE_STACK_LIMITS", "FRAME_CAP",
]
