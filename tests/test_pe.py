"""PE images: the CodeView identity of images built here byte by byte (PE32 and PE32+) and of broken
ones; image files on disk (sections, directories, version resource) and damaged version resources."""
from __future__ import annotations

import os
import struct

import pytest

from pykd_ext.symbols.base import PdbIdentity
from pykd_ext.symbols.pe import ImageVersion, NotAPeImage, PeImage, read_image_identity
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


# ---- image files on disk (the test driver built with clang and lld-link, tests/data/testdriver) ----

DRIVER_SYS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "testdriver", "lockdrv.sys")
AMDPPM_SYS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "symstore", "amdppm.sys",
                          "c9c030003b000", "amdppm.sys")


def test_an_image_file_its_sections_and_directories():
    # llvm-readobj --file-headers --sections --coff-debug-directory lockdrv.sys
    image = PeImage.from_file(DRIVER_SYS)
    assert (image.machine, image.pe32_plus, image.time_date_stamp, image.size_of_image, image.size_of_headers) == \
        (0x8664, True, 0xBC411168, 0x5000, 0x400)
    assert [(s.name, s.virtual_address, s.virtual_size, s.raw_size, s.raw_pointer) for s in image.sections] == [
        (".text", 0x1000, 0x1E9, 0x200, 0x400), (".rdata", 0x2000, 0x74, 0x200, 0x600),
        (".data", 0x3000, 0x74, 0x200, 0x800), (".pdata", 0x4000, 0x24, 0x200, 0xA00)]
    assert image.exception_directory == (0x4000, 0x24)
    assert [(entry.type, entry.size, entry.rva, entry.file_pointer) for entry in image.debug_entries()] == [
        (2, 0x24, 0x2038, 0x638), (16, 0, 0, 0)]
    pdb, path, why = image.codeview()
    assert (pdb.name, pdb.guid, pdb.age, path, why) == ("lockdrv.pdb", "26D1BF035A58F97B4C4C44205044422E", 1,
                                                        "lockdrv.pdb", "")
    assert image.read(0x2038, 4) == b"RSDS"  # mapped through .rdata's raw data at 0x600
    assert image.read(0x3070, 0x20)[4:] == bytes(0x1C)  # past .data's initialised bytes: zeros
    assert image.version() is None  # no resources
    with open(DRIVER_SYS, "rb") as handle:
        assert image.read(0x1000, 0x1E9) == handle.read()[0x400:0x400 + 0x1E9]


@pytest.mark.skipif(not os.path.isfile(AMDPPM_SYS), reason="../shared (the real symbol store) is absent")
def test_the_version_resource_of_a_real_driver():
    # llvm-readobj --coff-resources amdppm.sys: VERSIONINFO, FileVersionMS 0x000A0000, LS 0x4A610456, and the
    # FileVersion string "10.0.19041.1110 (WinBuild.160101.0800)".
    version = PeImage.from_file(AMDPPM_SYS).version()
    assert version == ImageVersion("10.0.19041.1110", "10.0.19041.1110", "10.0.19041.1110 (WinBuild.160101.0800)")


def _with_resources(resources, rva=0x2000, size=None):
    """A PE32+ image (as make_image) whose resource directory at ``rva`` holds ``resources``."""
    image = bytearray(make_image())
    optional = E_LFANEW + 24
    struct.pack_into("<II", image, optional + 112 + 2 * 8, rva, len(resources) if size is None else size)
    image[rva:rva + len(resources)] = resources
    return bytes(image)


def _version_tree(version_info, entry_rva=0x2000 + 0x60):
    """type 16 -> name 1 -> language 1033 -> a data entry whose data is ``version_info`` at 0x2100."""
    def table(entry_id, offset):
        return struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", entry_id, offset)
    tree = table(16, 0x80000018) + table(1, 0x80000030) + table(1033, 0x48)
    tree += struct.pack("<IIII", 0x2100, len(version_info), 0, 0)
    return tree.ljust(0x100, b"\x00") + version_info


def _block(key, value=b"", children=b"", text=False):
    head = struct.pack("<HHH", 0, len(value) // 2 if text else len(value), 1 if text else 0) + \
        (key + "\x00").encode("utf-16-le")
    head += bytes(-len(head) % 4)
    body = head + value + bytes(-len(value) % 4) + children
    return struct.pack("<H", len(body)) + body[2:]


def test_a_version_resource_built_by_hand():
    fixed = struct.pack("<13I", 0xFEEF04BD, 0x10000, 0x000A0000, 0x4A610456, 0x000A0000, 0x4A610001, 0x3F, 0, 4, 3, 0,
                        0, 0)
    strings = _block("StringFileInfo", children=_block("040904B0", children=_block(
        "FileVersion", "10.0.19041.1110 (test)\x00".encode("utf-16-le"), text=True)))
    info = _block("VS_VERSION_INFO", fixed, strings)
    version = PeImage(lambda rva, size: _with_resources(_version_tree(info))[rva:rva + size], "here").version()
    assert version == ImageVersion("10.0.19041.1110", "10.0.19041.1", "10.0.19041.1110 (test)")


@pytest.mark.parametrize("resources, message", [
    (_version_tree(b"\xff\xff" + bytes(10)), "runs past its parent"),
    (struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", 16, 0x80000F00), "outside the resource data"),
], ids=["block-too-long", "subdirectory-outside"])
def test_a_damaged_version_resource_is_one_line(resources, message):
    image = _with_resources(resources)
    with pytest.raises(NotAPeImage, match=message) as caught:
        PeImage(lambda rva, size: image[rva:rva + size], "here").version()
    assert "\n" not in str(caught.value)


def test_a_section_table_the_loader_would_refuse():
    image = bytearray(make_image())
    struct.pack_into("<H", image, E_LFANEW + 6, 200)  # NumberOfSections
    with pytest.raises(NotAPeImage, match="claims 200 sections"):
        read_image_identity(reader(bytes(image)), BASE)
