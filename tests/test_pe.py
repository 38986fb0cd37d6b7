"""The CodeView identity of PE images built here byte by byte (PE32 and PE32+), and of broken ones."""
from __future__ import annotations

import struct

import pytest

from pykd_ext.symbols.base import PdbIdentity
from pykd_ext.symbols.pe import NotAPeImage, read_image_identity
from pykd_ext.targets.base import MemoryReadError

BASE = 0xFFFFF8047BA00000
# GUID {5278AFF8-6C34-1677-D7D7-835C85B7B844} as the RSDS record stores it (first three fields little-endian).
GUID_BYTES = bytes.fromhex("F8AF785234 6C 77 16 D7D7835C85B7B844".replace(" ", ""))
GUID_TEXT = "5278AFF86C341677D7D7835C85B7B844"
E_LFANEW = 0xF0
DEBUG_DIRECTORY_RVA = 0x1000
CODEVIEW_RVA = 0x1100
SIZE_OF_IMAGE = 0x3000


def rsds(path=b"ntkrnlmp.pdb", age=1):
    return b"RSDS" + GUID_BYTES + struct.pack("<I", age) + path + b"\x00"


def debug_entry(debug_type, size, rva):
    """IMAGE_DEBUG_DIRECTORY: Characteristics, TimeDateStamp, Major/MinorVersion, Type, SizeOfData,
    AddressOfRawData, PointerToRawData."""
    return struct.pack("<IIHHIIII", 0, 0x5F8E4A2B, 0, 0, debug_type, size, rva, 0x400)


def make_image(pe32_plus=True, codeview=None, entries=None, directories=16, debug_size=None,
               machine=None, magic=None, size_of_optional_header=None, size_of_image=SIZE_OF_IMAGE):
    """A loaded image: DOS header, NT headers, a debug directory at 0x1000 and its CodeView record at 0x1100."""
    image = bytearray(SIZE_OF_IMAGE)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, E_LFANEW)
    optional_size = (0xF0 if pe32_plus else 0xE0) if size_of_optional_header is None else size_of_optional_header
    machine = machine if machine is not None else (0x8664 if pe32_plus else 0x14C)
    nt = E_LFANEW
    image[nt:nt + 4] = b"PE\x00\x00"
    # IMAGE_FILE_HEADER: Machine, NumberOfSections, TimeDateStamp, PointerToSymbolTable, NumberOfSymbols,
    # SizeOfOptionalHeader, Characteristics.
    struct.pack_into("<HHIIIHH", image, nt + 4, machine, 1, 0x5F8E4A2B, 0, 0, optional_size, 0x22)
    optional = nt + 24
    struct.pack_into("<H", image, optional, magic if magic is not None else (0x20B if pe32_plus else 0x10B))
    struct.pack_into("<I", image, optional + 56, size_of_image)  # SizeOfImage
    struct.pack_into("<I", image, optional + (108 if pe32_plus else 92), directories)  # NumberOfRvaAndSizes
    record = rsds() if codeview is None else codeview
    entries = [debug_entry(2, len(record), CODEVIEW_RVA)] if entries is None else entries
    size = len(entries) * 28 if debug_size is None else debug_size
    struct.pack_into("<II", image, optional + (160 if pe32_plus else 144), DEBUG_DIRECTORY_RVA, size)
    image[DEBUG_DIRECTORY_RVA:DEBUG_DIRECTORY_RVA + 28 * len(entries)] = b"".join(entries)
    image[CODEVIEW_RVA:CODEVIEW_RVA + len(record)] = record
    return bytes(image)


def patched(image, offset, value):
    """``image`` with the 32-bit ``value`` written at ``offset``."""
    changed = bytearray(image)
    struct.pack_into("<I", changed, offset, value)
    return bytes(changed)


def reader(image, base=BASE, readable=None):
    """read(address, size) over ``image`` at ``base``; MemoryReadError outside ``readable`` bytes."""
    readable = len(image) if readable is None else readable

    def read(address, size):
        offset = address - base
        if offset < 0 or offset + size > readable:
            raise MemoryReadError(address, size)
        return image[offset:offset + size]
    return read


@pytest.mark.parametrize("pe32_plus", [True, False], ids=["PE32+", "PE32"])
def test_the_codeview_identity_of_an_image(pe32_plus):
    image = make_image(pe32_plus, codeview=rsds(b"d:\\os\\obj\\amd64fre\\minkernel\\ntos\\ntkrnlmp.pdb", age=3))
    identity = read_image_identity(reader(image), BASE)
    assert identity.pdb == PdbIdentity("ntkrnlmp.pdb", GUID_TEXT, 3)
    assert identity.pdb.store_key == GUID_TEXT + "3"
    assert identity.pdb_path == "d:\\os\\obj\\amd64fre\\minkernel\\ntos\\ntkrnlmp.pdb"
    assert identity.pe32_plus is pe32_plus and identity.machine == (0x8664 if pe32_plus else 0x14C)
    assert identity.time_date_stamp == 0x5F8E4A2B and identity.size_of_image == SIZE_OF_IMAGE
    assert identity.base == BASE and identity.no_pdb_reason == ""


def test_the_codeview_entry_is_found_among_others():
    record = rsds(b"/build/ntoskrnl/ntkrnlmp.pdb")
    entries = [debug_entry(13, 0x10, 0x1200), debug_entry(2, len(record), CODEVIEW_RVA), debug_entry(16, 0, 0)]
    identity = read_image_identity(reader(make_image(entries=entries)), BASE)
    assert identity.pdb == PdbIdentity("ntkrnlmp.pdb", GUID_TEXT, 1)


@pytest.mark.parametrize("changes, reason", [
    (dict(directories=6), "no debug data directory"),
    (dict(entries=[], debug_size=0), "debug data directory is empty"),
    (dict(entries=[debug_entry(13, 0x10, 0x1200)]), "no CodeView entry"),
    (dict(entries=[debug_entry(2, 0x20, 0)]), "not mapped"),
    (dict(codeview=b"NB10" + b"\x00" * 12 + b"old.pdb\x00"), "'NB10', not an RSDS"),
], ids=["no-debug-directory", "empty-debug-directory", "no-codeview-entry", "codeview-not-mapped", "nb10"])
def test_an_image_without_an_rsds_record_says_why(changes, reason):
    identity = read_image_identity(reader(make_image(**changes)), BASE)
    assert identity.pdb is None and reason in identity.no_pdb_reason
    assert identity.size_of_image == SIZE_OF_IMAGE  # the image's own facts are still given


def test_a_page_not_in_the_source_is_the_sources_read_error():
    image = make_image()
    with pytest.raises(MemoryReadError):
        read_image_identity(reader(image, readable=0), BASE)
    with pytest.raises(MemoryReadError):  # headers there, debug directory page missing
        read_image_identity(reader(image, readable=DEBUG_DIRECTORY_RVA), BASE)


def test_a_short_read_is_a_cut_short_image():
    image = make_image()
    with pytest.raises(NotAPeImage, match="cut short"):
        read_image_identity(lambda address, size: image[address - BASE:address - BASE + size][:size // 2], BASE)


@pytest.mark.parametrize("image, message", [
    (b"\x00" * 0x1000, "does not start with MZ"),
    (patched(make_image(), 0x3C, 0x20), "e_lfanew 0x20 is out of range"),
    (patched(make_image(), 0x3C, 0x7FFFFFF0), "e_lfanew 0x7ffffff0 is out of range"),
    (make_image()[:E_LFANEW] + b"NE\x00\x00" + make_image()[E_LFANEW + 4:], "no PE signature"),
    (make_image(magic=0x107), "neither PE32 nor PE32+"),
    (make_image(size_of_optional_header=0x40), "too short for its own fields"),
    (make_image(size_of_image=0x100), "SizeOfImage 0x100 is smaller than its headers"),
    (make_image(entries=[debug_entry(2, 0x20, 0x1100)], debug_size=0x10000), "debug directory"),
    (make_image(entries=[debug_entry(2, 0x100000, CODEVIEW_RVA)]), "CodeView record"),
    (make_image(entries=[debug_entry(2, 8, CODEVIEW_RVA)]), "too short for RSDS"),
    (make_image(entries=[debug_entry(2, 2, CODEVIEW_RVA)]), "too short for a signature"),
    (make_image(codeview=b"RSDS" + GUID_BYTES + b"\x01\x00\x00\x00" + b"\x00"), "names no PDB file"),
], ids=["no-mz", "e_lfanew-inside-dos-header", "e_lfanew-huge", "no-pe-signature", "bad-magic",
        "optional-header-too-short", "size-of-image-too-small", "debug-directory-outside", "codeview-outside",
        "codeview-too-short", "codeview-without-signature", "no-pdb-name"])
def test_what_is_not_a_pe_image_is_one_line(image, message):
    with pytest.raises(NotAPeImage, match=message) as caught:
        read_image_identity(reader(image), BASE)
    assert "\n" not in str(caught.value)
