"""Corrupt input never escapes the unwinder as an exception: random images, unwind data and stacks give
frames and a stop reason, within the frame cap."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pykd_ext.symbols.pe import PeImage
from pykd_ext.targets.base import MemoryReadError, RecordedImage
from pykd_ext.unwind import Stop, Unwind, unwind
from pykd_ext.session import open_session
from pykd_ext.sources import open_source
from pykd_ext.unwind.model import ImageView, pdata_entry

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


# ---- the function table of an image file, read once, and what a recording keeps of it ----------

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
SMALL_DUMP = os.path.join(SHARED, "samples", "triage_x64.dmp")
SYMBOL_STORE = os.path.join(SHARED, "symstore")


@pytest.mark.skipif(not os.path.isdir(SYMBOL_STORE), reason="../shared (the real symbol store) is absent")
def test_a_function_table_read_at_once_finds_what_the_entry_by_entry_search_finds_and_replays():
    """The session searches an image file's .pdata read in one piece; the answers, and what a recording
    keeps of them, are those of the search that reads the table entry by entry (Wdf01000.sys, the real
    image of the real small dump's module, 3796 entries)."""
    target = open_source(SMALL_DUMP)
    try:
        session = open_session(target, SYMBOL_STORE)
        module = next(module for module in session.modules() if module.name == "Wdf01000")
        fast = session.image_view(module)
        table, size = fast.exception_directory
        image = PeImage.from_file(os.path.join(SYMBOL_STORE, "Wdf01000.sys", "a9a9d36ed1000", "Wdf01000.sys"))
        begins = [struct.unpack_from("<I", image.read(table + 12 * index, 4))[0] for index in range(size // 12)]
        rvas = sorted({begins[index] + delta for index in range(0, len(begins), 37) for delta in (-1, 0, 5)}
                      | {begins[0] - 1, begins[-1] + 0x40})
        by_entry = RecordedImage(module.name, module.base, module.size, (table, size))
        slow = ImageView(module.name, module.base, module.size, by_entry.recorder(image.read), (table, size))
        expected = {rva: pdata_entry(slow, 12, rva) for rva in rvas}
        assert fast.find_entry is not None and {rva: pdata_entry(fast, 12, rva) for rva in rvas} == expected
        assert expected[begins[0] - 1] is None and expected[begins[37] - 1][:4] == struct.pack("<I", begins[36])
        recorded = session.file_image_reads[(module.name, module.base)]
        assert recorded.reads == by_entry.reads  # the same recording: a replay finds the same entries
        replayed = ImageView(module.name, module.base, module.size, recorded.replay, recorded.exception_directory)
        assert {rva: pdata_entry(replayed, 12, rva) for rva in rvas} == expected  # as a replay reads it
    finally:
        target.close()
