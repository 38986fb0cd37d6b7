"""Corrupt input never escapes the unwinder as an exception: random images, unwind data and stacks give
frames and a stop reason, within the frame cap."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pykd_ext.targets.base import MemoryReadError
from pykd_ext.unwind import Stop, Unwind, unwind
from pykd_ext.unwind.model import ImageView

IMAGE_BASE = 0xFFFFF80000000000
STACK_BASE = 0xFFFF800000000000


def source(image_bytes: bytes, table_entries: bytes, stack: bytes):
    image = bytearray(image_bytes.ljust(0x2000, b"\0"))
    table_at = 0x1800
    image[table_at:table_at + len(table_entries)] = table_entries

    def read_image(rva, size):
        if rva < 0 or rva + size > len(image):
            raise MemoryReadError(IMAGE_BASE + rva, size)
        return bytes(image[rva:rva + size])

    view = ImageView("fuzz", IMAGE_BASE, len(image), read_image, (table_at, len(table_entries)))

    def read_stack(address, size):
        offset = address - STACK_BASE
        if offset < 0 or offset + size > len(stack):
            raise MemoryReadError(address, size)
        return stack[offset:offset + size]

    return (lambda address: view if view.contains(address) else None), read_stack


entries = st.lists(st.tuples(st.integers(0, 0x17FF), st.integers(1, 0x400), st.integers(0, 0x1FFF),
                             st.integers(0, 0xFFFFFFFF)), max_size=12)


def table_of(architecture: str, rows) -> bytes:
    """A sorted .pdata over the generated rows: x64 {begin, end, unwind info}, ARM64 {begin, word}."""
    rows = sorted(rows)
    if architecture == "x64":
        return b"".join(struct.pack("<III", begin, begin + length, info) for begin, length, info, _ in rows)
    return b"".join(struct.pack("<II", begin, word if word & 3 else info & ~3) for begin, _, info, word in rows)


@settings(max_examples=300, deadline=None)
@given(image=st.binary(min_size=0, max_size=0x1800), rows=entries, stack=st.binary(min_size=0, max_size=0x400),
       pc=st.integers(0, 0x1FFF), sp=st.integers(0, 0x3FF), architecture=st.sampled_from(["x64", "arm64"]))
def test_random_unwind_data_and_stacks_end_with_a_stop(image, rows, stack, pc, sp, architecture):
    images, read_stack = source(image, table_of(architecture, rows), stack)
    if architecture == "x64":
        registers = {"rip": IMAGE_BASE + pc, "rsp": STACK_BASE + sp, "rbp": STACK_BASE + sp}
    else:
        registers = {"pc": IMAGE_BASE + pc, "sp": STACK_BASE + (sp & ~15), "fp": STACK_BASE + (sp & ~15),
                     "lr": IMAGE_BASE + struct.unpack("<H", (image + b"\0\0")[:2])[0]}
    result = unwind(architecture, registers, read_stack, images, max_frames=32)
    assert isinstance(result, Unwind) and isinstance(result.stop, Stop)
    assert 1 <= len(result.frames) <= 32 and result.stop.message
