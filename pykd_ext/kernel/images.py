"""Loaded images as memory holds them: which PE section an address is in, and which images hold a pool
tag as a 32-bit constant (the way engineers match a tag to a driver by hand: ``findstr /m /l TAG *.sys``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..layouts import LayoutError, Layouts
from ..targets.base import PAGE_SIZE, MemoryReadError, Module, Target

# PE section characteristics (Microsoft PE format).
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_WRITE = 0x80000000
IMAGE_DOS_SIGNATURE = 0x5A4D  # "MZ"
IMAGE_NT_SIGNATURE = 0x00004550  # "PE\0\0"
MAX_SECTIONS = 96

# The tag search reads the parts of images that are in memory (Target.readable_ranges) this many bytes
# at a time, and at most this many bytes in all (the kernel and a few hundred drivers are a few hundred
# MiB at most).
TAG_SEARCH_CHUNK = 1 << 20
MAX_TAG_SEARCH_BYTES = 1 << 30
# Tags looked for in one search at most (the blocks of one hunt level share a handful).
MAX_TAGS_SEARCHED = 256


@dataclass(frozen=True)
class Section:
    name: str
    characteristics: int

    @property
    def code(self) -> bool:
        """Executable and not writable: code, where a driver keeps no variables."""
        return bool(self.characteristics & IMAGE_SCN_MEM_EXECUTE) and not self.characteristics & IMAGE_SCN_MEM_WRITE

    @property
    def writable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_WRITE)


def image_section(target: Target, layouts: Layouts, module: Module, address: int) -> Optional[Section]:
    """The PE section of ``module`` holding ``address``, when the image's headers are readable."""
    try:
        dos = layouts.view("_IMAGE_DOS_HEADER", module.base)
        if dos["e_magic"] != IMAGE_DOS_SIGNATURE or not 0 < dos["e_lfanew"] < PAGE_SIZE:
            return None
        nt = layouts.view("_IMAGE_NT_HEADERS", module.base + dos["e_lfanew"])
        if nt["Signature"] != IMAGE_NT_SIGNATURE:
            return None
        count = min(nt["FileHeader.NumberOfSections"], MAX_SECTIONS)
        table = nt.address_of("OptionalHeader") + nt["FileHeader.SizeOfOptionalHeader"]
        section_size = layouts.get("_IMAGE_SECTION_HEADER").size
        rva = address - module.base
        for index in range(count):
            section = layouts.view("_IMAGE_SECTION_HEADER", table + index * section_size)
            start, size = section["VirtualAddress"], section["Misc.VirtualSize"]
            if start <= rva < start + size:
                name = section.bytes_of("Name", 8).split(b"\0", 1)[0].decode("ascii", errors="replace")
                return Section(name, section["Characteristics"])
    except (MemoryReadError, LayoutError):
        return None
    return None


@dataclass
class TagSearch:
    """Which loaded images hold each tag's four bytes, and how much of the images could be read."""

    images: Dict[str, List[Module]] = field(default_factory=dict)  # tag -> images holding it, by address
    unread: Dict[str, int] = field(default_factory=dict)  # image -> bytes of it that are not in memory
    truncated: bool = False  # the search stopped at MAX_TAG_SEARCH_BYTES or MAX_TAGS_SEARCHED

    def holders(self, tag: str) -> List[Module]:
        return self.images.get(tag, [])


def find_tags_in_images(target: Target, modules: Sequence[Module], tags: Iterable[str]) -> TagSearch:
    """Search every loaded image for each tag as it is stored in memory (a tag ``'ShmC'`` is the bytes
    53 68 6D 43, which is also how a ``mov r8d, 'CmhS'`` holding it as a constant encodes it), one read of
    each image for all the tags. Bounded: MAX_TAG_SEARCH_BYTES of images, MAX_TAGS_SEARCHED tags."""
    wanted = sorted(set(tags))
    result = TagSearch(images={tag: [] for tag in wanted})
    if len(wanted) > MAX_TAGS_SEARCHED:
        wanted, result.truncated = wanted[:MAX_TAGS_SEARCHED], True
    patterns = [(tag, tag.encode("ascii")) for tag in wanted]
    budget = MAX_TAG_SEARCH_BYTES
    for module in sorted(modules, key=lambda m: m.base):
        if not patterns:
            break
        if budget <= 0:
            result.truncated = True
            break
        size = min(module.size, budget)
        budget -= size
        found, unread = _search_image(target, module.base, size, [p for _, p in patterns])
        for (tag, _), hit in zip(patterns, found):
            if hit:
                result.images[tag].append(module)
        if unread:
            result.unread[module.image] = unread
    return result


def _search_image(target: Target, base: int, size: int, patterns: List[bytes]) -> Tuple[List[bool], int]:
    """Which patterns occur in ``[base, base + size)``, and the bytes of it that could not be read."""
    found = [False] * len(patterns)
    unread = 0
    carry = b""  # the last bytes read: a constant may straddle two reads

    def look(data: bytes) -> None:
        for index, pattern in enumerate(patterns):
            if not found[index] and pattern in data:
                found[index] = True

    position, end = base, base + size
    read_up_to = base  # where the last piece read ended
    while position < end and not all(found):
        length = min(TAG_SEARCH_CHUNK, end - position)
        unread += length
        for start, stop in target.readable_ranges(position, length):
            piece = target.read(start, stop - start)
            look((carry if start == read_up_to else b"") + piece)  # no constant is matched across a gap
            carry, read_up_to = piece[-3:], stop
            unread -= stop - start
        position += length
    return found, unread
