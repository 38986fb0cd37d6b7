"""The thread, lock-entry and lock-tracker tables of layouts.py, checked offset by offset.

Offsets the reference notes give (windows-kernel.md §4.9, §4.10) are read from its tables; the few
that the notes do not give were read from the headers they cite and are transcribed in SOURCES below,
each with its origin. Every field of every table below must be covered by one or the other.
"""
import os
import re

import pytest

from pykd_ext.layouts import (BUILD_LAYOUTS_X64, BUILD_LAYOUTS_X86, OTHER_STABLE_LAYOUTS, UNVERIFIED_BUILD_TABLES,
                              Layouts, builtin_layout)
from pykd_ext.typeinfo import FieldInfo, TypeInfo
from pykd_ext.targets.snapshot import SnapshotTarget

from mocks.scenarios import case_0x76

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "windows-kernel.md")
FAMILY = ("_KTHREAD", "_ETHREAD", "_KLOCK_ENTRY", "_KLOCK_ENTRIES", "_LOCK_HEADER", "_LOCK_TRACKER")

# (structure, pointer size, build) -> {field: offset, "sizeof": size}: facts the notes do not spell out.
SOURCES = {
    # NTDIFF Win10_21H1_20180 and Win11_2409_24H2 x64 _KTHREAD.h: ApcState at 0x98, KAPC_STATE.Process
    # at +0x20; KTHREAD.Process at 0x220. StackLimit and StackBase: the 19041.804 kernel PDB (and 17763,
    # 20348, 22000: the same offsets), checked by tests/test_layouts_real_symbols.py.
    ("_KTHREAD", 8, 19045): {"ApcState.Process": 0xB8, "Process": 0x220, "StackLimit": 0x30, "StackBase": 0x38},
    ("_KTHREAD", 8, 26100): {"ApcState.Process": 0xB8, "Process": 0x220},
    # NTDIFF Win10_21H1_20180 x64 _ETHREAD.h; sizeof from the 19041.804 kernel PDB (NTDIFF 20180 says 0x8A0),
    # checked by tests/test_layouts_real_symbols.py.
    ("_ETHREAD", 8, 19045): {"StartAddress": 0x450, "Cid.UniqueProcess": 0x478, "Cid.UniqueThread": 0x480,
                             "LockEntries": 0x650, "sizeof": 0x898},
    # NTKLIB _ETHREAD.g.cs (Size 1944).
    ("_ETHREAD", 8, 26100): {"StartAddress": 0x4E0, "Cid.UniqueProcess": 0x508, "Cid.UniqueThread": 0x510,
                             "Win32StartAddress": 0x560},
    # NTKLIB _KLOCK_ENTRIES.g.cs (header before Entries[]).
    ("_KLOCK_ENTRIES", 8, 26100): {"Thread": 0x0, "AvailableEntryBitmap": 0x8, "OrphanedEntryBitmap": 0xA,
                                   "EntryCount": 0xC, "Entries": 0x10, "sizeof": 0x10},
}

# Stable layouts outside §4.1-4.8: (x64 offset, x86 offset) per field, with their sources.
OTHER_SOURCES = {
    # NTDIFF _ETHREAD.h: DISPATCHER_HEADER.Type at 0; KOBJECTS ThreadObject 6, ProcessObject 3.
    "_DISPATCHER_HEADER": {"Type": (0x0, 0x0), "sizeof": (0x18, 0x10)},
    # NTDIFF _ETHREAD.h RTL_BALANCED_NODE: Left, Right, ParentValue (x86: pointer-sized words).
    "_RTL_BALANCED_NODE": {"Left": (0x0, 0x0), "Right": (0x8, 0x4), "ParentValue": (0x10, 0x8),
                           "sizeof": (0x18, 0xC)},
    # NTDIFF x64 and x86 _POOL_HEADER.h: the bit fields in Ulong1 at 0, PoolTag at 4; size 0x10 and 0x8.
    "_POOL_HEADER": {"Ulong1": (0x0, 0x0), "PoolTag": (0x4, 0x4), "sizeof": (0x10, 0x8)},
    # Microsoft PE format: IMAGE_DOS_HEADER.e_lfanew at 0x3C; IMAGE_NT_HEADERS = Signature + FILE_HEADER
    # (NumberOfSections +2, SizeOfOptionalHeader +0x10) + optional header; IMAGE_SECTION_HEADER 0x28 bytes.
    "_IMAGE_DOS_HEADER": {"e_magic": (0x0, 0x0), "e_lfanew": (0x3C, 0x3C), "sizeof": (0x40, 0x40)},
    "_IMAGE_NT_HEADERS": {"Signature": (0x0, 0x0), "FileHeader.NumberOfSections": (0x6, 0x6),
                          "FileHeader.SizeOfOptionalHeader": (0x14, 0x14), "OptionalHeader": (0x18, 0x18),
                          "sizeof": (0, 0)},
    "_IMAGE_SECTION_HEADER": {"Name": (0x0, 0x0), "Misc.VirtualSize": (0x8, 0x8), "VirtualAddress": (0xC, 0xC),
                              "Characteristics": (0x24, 0x24), "sizeof": (0x28, 0x28)},
}


def _text():
    if not os.path.exists(REFERENCE):
        pytest.skip("the reference notes (../shared/reference) are not beside this checkout")
    return open(REFERENCE, encoding="utf-8").read()


def _hexes(cell):
    return [int(h, 16) for h in re.findall(r"0x[0-9A-Fa-f]+", cell)]


def _rows(block):
    rows = []
    for line in block.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _name(cell):
    return re.sub(r"\*|`|\(.*?\)", "", cell).strip()


def reference():
    """(structure, pointer size, build) -> {field: offset or None (absent), "sizeof": size}."""
    text = _text()
    section = text.split("### 4.9")[1].split("## 5.")[0]
    facts = {key: {} for key in [("_KTHREAD", 8, 19045), ("_KTHREAD", 8, 26100), ("_ETHREAD", 8, 19045),
                                 ("_ETHREAD", 8, 26100), ("_KLOCK_ENTRY", 8, 19045), ("_KLOCK_ENTRY", 8, 26100),
                                 ("_LOCK_HEADER", 8, 19045), ("_LOCK_HEADER", 8, 26100), ("_LOCK_HEADER", 4, 19045),
                                 ("_LOCK_TRACKER", 8, 19045), ("_LOCK_TRACKER", 8, 26100),
                                 ("_LOCK_TRACKER", 4, 19045)]}
    kthread = section.split("**KTHREAD / AutoBoost (x64):**")[1].split("- Another dump")[0]
    for row in _rows(kthread)[1:]:
        names = [n.strip() for n in _name(row[0]).split("/")]
        for column, build in ((1, 19045), (2, 26100)):
            values = _hexes(row[column])
            for index, name in enumerate(names):
                key = "sizeof" if name.startswith("sizeof") else name
                facts[("_KTHREAD", 8, build)][key] = values[index] if len(values) > index else None
    ethread = section.split("**ETHREAD (Win10 0x430-KTHREAD layout, NTDIFF):**")[1].split("**`_KLOCK_ENTRY`")[0]
    for row in _rows(ethread)[1:]:
        facts[("_ETHREAD", 8, 19045)][_name(row[0])] = _hexes(row[1])[0]
    later = re.search(r"24H2 \(NTKLIB\): (.*?)\.\n", ethread).group(1)
    for name, value in re.findall(r"(\w+) (0x[0-9A-Fa-f]+)", later):
        facts[("_ETHREAD", 8, 26100)]["sizeof" if name == "sizeof" else name] = int(value, 16)
    entry = section.split("**`_KLOCK_ENTRY`")[1].split("### 4.10")[0]
    for row in _rows(entry)[1:]:
        if "sizeof" in row[1]:
            facts[("_KLOCK_ENTRY", 8, 19045)]["sizeof"] = _hexes(row[1])[0]
            continue
        facts[("_KLOCK_ENTRY", 8, 19045)][_name(row[1]).split("/")[0].strip()] = _hexes(row[0])[0]
        for name, value in re.findall(r"(\w+)(?: at)? (0x[0-9A-Fa-f]+)", row[2]):
            facts[("_KLOCK_ENTRY", 8, 19045)][name] = int(value, 16)  # e.g. "SessionId at 0x28"
    prose = entry.split("24H2 (NTKLIB) reordered the entry:")[1].split("- These fields")[0]
    for name, value in re.findall(r"(\w+)(?: at)? (0x[0-9A-Fa-f]+)", prose):
        facts[("_KLOCK_ENTRY", 8, 26100)].setdefault("sizeof" if name == "probably" else name, int(value, 16))
    for name in re.findall(r"(\w+)/(\w+) 0x08", prose)[0]:
        facts[("_KLOCK_ENTRY", 8, 26100)][name] = 0x08
    trackers = text.split("### 4.10")[1].split("## 5.")[0]
    header_rows = _rows(trackers.split("**`_LOCK_TRACKER`:**")[0])
    columns = [_name(c).split(" ")[0] for c in header_rows[0][1:-1]]
    for row in header_rows[1:]:
        key = {"x86 later": ("_LOCK_HEADER", 4, 19045), "x64 some": ("_LOCK_HEADER", 8, 19045),
               "x64/ARM64 24H2": ("_LOCK_HEADER", 8, 26100)}.get(" ".join(row[0].split(" ")[:2]))
        if key is None:
            continue
        for name, cell in zip(columns, row[1:-1]):
            values = _hexes(cell)
            facts[key][name] = values[0] if values else None
        facts[key]["sizeof"] = _hexes(row[-1])[0]
    tracker_rows = _rows(trackers.split("**`_LOCK_TRACKER`:**")[1])
    sizes = [_hexes(c)[-1] for c in tracker_rows[0][1:]]
    variants = {("_LOCK_TRACKER", 8, 19045): 1, ("_LOCK_TRACKER", 8, 26100): 2, ("_LOCK_TRACKER", 4, 19045): 4}
    for key, column in variants.items():
        facts[key]["sizeof"] = sizes[column]
        for row in tracker_rows[1:]:
            name = _name(row[0]).replace("[]", "")
            cell = row[column + 1]
            values = _hexes(cell)
            facts[key][name] = values[0] if values else None
            count = re.search(r"\[(\d+)\]", cell)
            if count:
                facts[key][name + "[]"] = int(count.group(1))
    return facts


def _tables():
    for name in FAMILY:
        for pointer_size, tables in ((8, BUILD_LAYOUTS_X64), (4, BUILD_LAYOUTS_X86)):
            for build in tables.get(name, {}):
                yield name, pointer_size, build


@pytest.mark.parametrize("name,pointer_size,build", list(_tables()))
def test_every_offset_matches_the_reference_or_its_cited_source(name, pointer_size, build):
    documented = reference().get((name, pointer_size, build), {})
    transcribed = SOURCES.get((name, pointer_size, build), {})
    layout = builtin_layout(name, pointer_size, build)
    for field, offset in layout.offsets.items():
        key = field.split(".")[0] if field.startswith(("Cid.",)) and field not in transcribed else field
        if key in transcribed:
            assert transcribed[key] == offset, f"{name}.{field} ({pointer_size * 8}-bit build {build})"
        else:
            assert key in documented, f"{name}.{field} is neither in the reference nor in SOURCES"
            assert documented[key] == offset, f"{name}.{field} ({pointer_size * 8}-bit build {build})"
        count = re.search(r"\[(\d+)\]$", layout.kinds[field])
        if count and field + "[]" in documented:
            assert int(count.group(1)) == documented[field + "[]"], f"{name}.{field} array length"
    size = transcribed.get("sizeof", documented.get("sizeof"))
    assert size == layout.size, f"sizeof({name}) build {build}"


def test_fields_the_reference_marks_absent_are_absent():
    facts = reference()
    for key, fields in facts.items():
        layout = builtin_layout(*key)
        for field, offset in fields.items():
            if offset is None and not field.endswith("[]"):
                assert not layout.has(field), f"{key}: {field} is absent on this build but in the table"


@pytest.mark.parametrize("name", sorted(OTHER_SOURCES))
@pytest.mark.parametrize("pointer_size", [8, 4])
def test_other_stable_layouts_match_their_sources(name, pointer_size):
    column = 0 if pointer_size == 8 else 1
    expected = {f: v[column] for f, v in OTHER_SOURCES[name].items() if v[column] is not None}
    layout = builtin_layout(name, pointer_size)
    if not expected or set(expected) == {"sizeof"} and not expected["sizeof"]:
        assert layout is None  # a layout not verified for an architecture is not built in
        return
    assert dict(layout.offsets, sizeof=layout.size) == expected
    assert set(OTHER_STABLE_LAYOUTS) == set(OTHER_SOURCES)


def test_unverified_build_tables_say_so_in_their_source():
    for (name, pointer_size, build), why in UNVERIFIED_BUILD_TABLES.items():
        layout = builtin_layout(name, pointer_size, build)
        assert layout.unverified == why and "UNVERIFIED" in layout.source
    assert not builtin_layout("_KTHREAD", 8, 26100).unverified  # NTDIFF 24H2 is the build itself
    assert not builtin_layout("_EPROCESS", 8, 19045).unverified


def test_array_length_comes_from_the_kind_or_the_symbols_size():
    assert builtin_layout("_LOCK_TRACKER", 8, 19045).array_length("StackTrace", 8) == 8
    assert builtin_layout("_LOCK_TRACKER", 8, 26100).array_length("StackTrace", 8) == 14
    assert builtin_layout("_ETHREAD", 8, 19045).array_length("LockEntries", 0x60) == 6
    assert builtin_layout("_LOCK_TRACKER", 8, 19045).array_length("Mdl", 8) is None


class _TrackerSymbols(SnapshotTarget):
    """Symbols that describe _LOCK_TRACKER with 12 saved frames at 0x40."""

    def type_info(self, name, field_names):
        if name == "nt!_LOCK_TRACKER":
            assert "StackTrace" in field_names and "Process" in field_names
            return TypeInfo("_LOCK_TRACKER", 0xA8, {"Mdl": FieldInfo(0x18, 8), "StackTrace": FieldInfo(0x40, 0x60),
                                                   "Process": FieldInfo(0xA0, 8)})
        return None


def test_symbols_override_the_tracker_table_and_its_array_length():
    layouts = Layouts(_TrackerSymbols(case_0x76("x64", "nothing", noise_pages=1).data))
    tracker = layouts.get("_LOCK_TRACKER")
    assert tracker.source == "debugger symbols" and not tracker.unverified
    assert tracker.offset("Process") == 0xA0 and tracker.array_length("StackTrace", 8) == 12
    assert tracker.kinds["StackTrace"] == "ptr[8]"  # the kind says "array of pointers"; the size says how many
    assert layouts.unverified() == {}
    assert layouts.get("_LOCK_HEADER").unverified  # no symbols for it: the 19045 table, flagged
    assert "_LOCK_HEADER" in layouts.unverified()


def test_unknown_builds_get_the_nearest_thread_tables_and_unknown_architectures_none():
    for name in FAMILY:
        layout = builtin_layout(name, 8, 22621)
        assert layout.guessed_from == 26100 and "guessed for build 22621" in layout.source
    assert builtin_layout("_KTHREAD", 4, 19045) is None and builtin_layout("_KLOCK_ENTRY", 4, 19045) is None


# NTDIFF _POOL_HEADER.h, x64 (Win10_1903_19H1_18282) and x86: the bit fields of Ulong1 as (first bit, bits).
POOL_HEADER_BITS_SOURCE = {
    8: {"PreviousSize": (0, 8), "PoolIndex": (8, 8), "BlockSize": (16, 8), "PoolType": (24, 8)},
    4: {"PreviousSize": (0, 9), "PoolIndex": (9, 7), "BlockSize": (16, 9), "PoolType": (25, 7)},
}


def test_the_pool_header_bit_fields_match_their_source():
    from pykd_ext.layouts import POOL_HEADER_BITS

    assert POOL_HEADER_BITS == POOL_HEADER_BITS_SOURCE
