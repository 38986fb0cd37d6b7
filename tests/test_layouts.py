"""Every built-in offset is checked against the tables of the reference notes (windows-kernel.md §4)."""
import os
import re

import pytest

from pykd_ext.layouts import STABLE_LAYOUTS, Layouts, builtin_layout
from pykd_ext.typeinfo import FieldInfo, TypeInfo

from mocks.scenarios import case_0x76
from pykd_ext.targets.snapshot import SnapshotTarget

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "windows-kernel.md")

# Section heading in the reference -> structure name.
SECTIONS = {
    "4.1": "_MDL", "4.2": "_IRP", "4.3": "_IO_STACK_LOCATION", "4.4": "_DEVICE_OBJECT",
    "4.5": "_DRIVER_OBJECT", "4.7": "_KLDR_DATA_TABLE_ENTRY",
}


def reference_tables():
    """{structure: {field: (x64 offset or None, x86 offset or None)}} read from the markdown tables."""
    if not os.path.exists(REFERENCE):
        pytest.skip("the reference notes (../shared/reference) are not beside this checkout")
    text = open(REFERENCE, encoding="utf-8").read()
    tables = {}
    for number, name in SECTIONS.items():
        match = re.search(r"^### %s .*?$(.*?)(?=^### |^## )" % re.escape(number), text, re.S | re.M)
        assert match, f"section {number} missing from the reference"
        rows = {}
        for line in match.group(1).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3 or not cells[1].replace("*", "").startswith("0x") and "—" not in cells[1]:
                continue
            field = re.sub(r"\*|\(.*?\)|\[.*?\]|`", "", cells[0]).strip()
            rows[field] = (_hex(cells[1]), _hex(cells[2]))
        tables[name] = rows
    # §4.6 is two structures in one table: "UNICODE_STRING.Length", "LIST_ENTRY.Flink", "sizeof(...)".
    match = re.search(r"^### 4\.6 .*?$(.*?)(?=^### )", text, re.S | re.M)
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].startswith("0x"):
            key = cells[0]
            if key.startswith("sizeof("):
                structure, field = key[7:-1], "sizeof"
            else:
                structure, field = key.split(".", 1)
            tables.setdefault("_" + structure, {})[field] = (_hex(cells[1]), _hex(cells[2]))
    return tables


def _hex(cell):
    found = re.search(r"0x[0-9A-Fa-f]+", cell)
    return int(found.group(0), 16) if found else None


def _doc_field(rows, field):
    """The reference row for one of our field names (the reference adds notes to some names)."""
    if field in rows:
        return rows[field]
    for name, offsets in rows.items():
        if name.split(" ")[0].split("/")[0].strip() == field:
            return offsets
    return None


@pytest.mark.parametrize("name", sorted(set(STABLE_LAYOUTS) - {"_FILE_OBJECT"}))
@pytest.mark.parametrize("pointer_size", [8, 4])
def test_stable_offsets_match_the_reference(name, pointer_size):
    rows = reference_tables()[name]
    layout = builtin_layout(name, pointer_size)
    column = 0 if pointer_size == 8 else 1
    for field, offset in layout.offsets.items():
        documented = _doc_field(rows, field)
        assert documented is not None, f"{name}.{field} is not in the reference table"
        assert documented[column] == offset, f"{name}.{field} ({pointer_size * 8}-bit)"
    sizes = [v for k, v in rows.items() if k.startswith("sizeof")]
    if layout.size:
        assert sizes and sizes[0][column] == layout.size, f"sizeof({name})"


def test_file_object_offsets_match_the_reference_prose():
    """§4.8: FILE_OBJECT DeviceObject at 0x8 / 0x4 and FileName at 0x58 / 0x30."""
    text = open(REFERENCE, encoding="utf-8").read() if os.path.exists(REFERENCE) else pytest.skip("no reference")
    assert "DeviceObject at 0x8 (x64) / 0x4 (x86); FileName at 0x58 / 0x30" in text
    x64, x86 = builtin_layout("_FILE_OBJECT", 8), builtin_layout("_FILE_OBJECT", 4)
    assert (x64.offset("DeviceObject"), x64.offset("FileName")) == (0x8, 0x58)
    assert (x86.offset("DeviceObject"), x86.offset("FileName")) == (0x4, 0x30)


def test_eprocess_offsets_match_the_reference():
    text = open(REFERENCE, encoding="utf-8").read() if os.path.exists(REFERENCE) else pytest.skip("no reference")
    section = re.search(r"^### 4\.9 .*?$(.*?)\*\*KTHREAD", text, re.S | re.M).group(1)
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and "0x" in cells[1]:
            rows[re.sub(r"\*|\(.*?\)|\[.*?\]", "", cells[0]).strip()] = (_hex(cells[1]), _hex(cells[2]))
    for build, column in ((19045, 0), (26100, 1)):
        layout = builtin_layout("_EPROCESS", 8, build)
        for field, offset in layout.offsets.items():
            assert rows[field][column] == offset, f"_EPROCESS.{field} build {build}"


def test_a_build_without_a_table_gets_the_nearest_builds_table_marked_as_a_guess():
    for build, nearest in ((12345, 19045), (19000, 19045), (22621, 26100), (27000, 26100), (None, 26100)):
        layout = builtin_layout("_EPROCESS", 8, build)
        assert layout.guessed_from == nearest and layout.offsets == builtin_layout("_EPROCESS", 8, nearest).offsets
        assert f"guessed for build {build or 'unknown'}" in layout.source and layout.unverified
    assert builtin_layout("_EPROCESS", 8, 19045).guessed_from is None
    assert builtin_layout("_EPROCESS", 8, 19041).guessed_from is None  # the 19045 offsets, checked for 19041
    assert builtin_layout("_EPROCESS", 8, 22000, "arm64") is None  # ARM64 kernels are laid out differently
    assert builtin_layout("_EPROCESS", 4, 19045) is None
    assert builtin_layout("_NO_SUCH_TYPE", 8) is None


class _SymbolTarget(SnapshotTarget):
    """A target whose symbols describe _MDL differently from the built-in table."""

    def type_info(self, name, field_names):
        if name == "nt!_MDL":
            return TypeInfo("_MDL", 0x40, {"Next": FieldInfo(0, 8), "Size": FieldInfo(8, 2), "Process": FieldInfo(0x18, 8)})
        return None


def test_symbols_override_the_built_in_tables_and_say_so():
    target = _SymbolTarget(case_0x76("x64", "nothing", noise_pages=1).data)
    layouts = Layouts(target)
    mdl = layouts.get("_MDL")
    assert mdl.offset("Process") == 0x18 and mdl.size == 0x40 and mdl.source == "debugger symbols"
    assert mdl.kinds["Size"] == "i16"  # the C type is known even when the offset comes from symbols
    assert layouts.get("_IRP").source == "built-in x64 table"
    assert layouts.sources() == {"_IRP": "built-in x64 table", "_MDL": "debugger symbols"}
    assert not mdl.has("ByteCount")


class _HostileSymbols(SnapshotTarget):
    """Type information that cannot be right: a zero size, a field past the end."""

    def type_info(self, name, field_names):
        if name == "nt!_IO_STACK_LOCATION":
            return TypeInfo("_IO_STACK_LOCATION", 0, {})
        if name == "nt!_IRP":
            return TypeInfo("_IRP", 0x10, {"MdlAddress": FieldInfo(0x40, 8)})
        return None


def test_impossible_symbol_layouts_fall_back_to_the_tables_with_a_warning():
    from pykd_ext.analyses import analyze

    scenario = case_0x76("x64", "irp", noise_pages=1)
    report = analyze(_HostileSymbols(scenario.data))
    assert report.suspects[0].driver == "\\Driver\\leakyflt"
    assert report.layouts["_IRP"] == report.layouts["_IO_STACK_LOCATION"] == "built-in x64 table"
    assert any("symbols' layout of _IO_STACK_LOCATION was ignored (size 0)" in w for w in report.warnings)
    assert any("field MdlAddress at 0x40 lies past the size 0x10" in w for w in report.warnings)
