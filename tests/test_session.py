"""The kernel session: symbols in priority order, layouts labelled with their source, symbol files
checked against the dump before use, and damaged symbol files that never stop an analysis."""
import pytest

from mocks.scenarios import case_0x76
from pykd_ext.analyses import analyze
from pykd_ext.layouts import builtin_layout, known_field_names
from pykd_ext.session import USER_GIVEN, KernelSession, open_session
from pykd_ext.symbols.base import PdbIdentity, SymbolFile, SymbolFileError
from pykd_ext.targets.snapshot import SnapshotTarget
from pykd_ext.typeinfo import FieldInfo, TypeInfo


class FakeSymbols(SymbolFile):
    """A symbol file made in memory: the built-in 19045 tables as types, and the given RVAs."""

    kind = "isf"

    def __init__(self, rvas, identity=None, damaged=False):
        self.path = "fake.json"
        self.identity = identity
        self.rvas = rvas
        self.damaged = damaged

    def rva(self, name):
        return self.rvas.get(name)

    def type_info(self, name, field_names):
        if self.damaged:
            raise SymbolFileError("the type record is cut short")
        layout = builtin_layout(name, 8, 19045)
        if layout is None:
            return None
        return TypeInfo(name, layout.size, {f: FieldInfo(o, 1) for f, o in layout.offsets.items() if f in field_names})


@pytest.fixture(scope="module")
def scenario():
    return case_0x76("x64", "irp", noise_pages=1, ki_bugcheck_driver="leakyflt.sys")


def test_symbols_come_from_the_source_then_the_files_then_the_user(scenario):
    target = SnapshotTarget(scenario.data)
    kernel = next(m for m in scenario.data.modules if m.name == "nt")
    ki = scenario.data.symbols["nt!KiBugCheckDriver"]
    del scenario.data.symbols["nt!KiBugCheckDriver"]
    try:
        files = [FakeSymbols({"KiBugCheckDriver": ki - kernel.base, "PsLoadedModuleList": 0x10})]
        session = KernelSession(target, files, {"nt!KiBugCheckDriver": 1, "nt!MmUser": 2}, kernel.base)
        assert session.symbol("nt!PsLoadedModuleList") == scenario.data.symbols["nt!PsLoadedModuleList"]
        assert session.symbol_sources["nt!PsLoadedModuleList"] == "recording"  # the source first
        assert session.symbol("nt!KiBugCheckDriver") == ki and session.symbol_sources["nt!KiBugCheckDriver"] == "isf fake.json"
        assert session.symbol("nt!MmUser") == 2 and session.symbol_sources["nt!MmUser"] == USER_GIVEN
        assert session.symbol("nt!Nowhere") is None and "nt!Nowhere" not in session.resolved_symbols()
        report = analyze(session)
        assert report.symbols["nt!KiBugCheckDriver"] == (ki, "isf fake.json")
        assert report.layouts["_MDL"] == "isf fake.json" and report.suspects[0].image == "leakyflt.sys"
    finally:
        scenario.data.symbols["nt!KiBugCheckDriver"] = ki


def test_a_damaged_symbol_file_is_a_warning_and_the_built_in_table_is_used(scenario):
    kernel = next(m for m in scenario.data.modules if m.name == "nt")
    session = KernelSession(SnapshotTarget(scenario.data), [FakeSymbols({}, damaged=True)], kernel_base=kernel.base)
    report = analyze(session)
    assert report.layouts["_MDL"] == "built-in x64 table" and report.suspects[0].image == "leakyflt.sys"
    assert any("could not give the type _MDL (the type record is cut short)" in w for w in report.warnings)


def test_without_the_image_header_a_file_is_used_only_if_the_recorded_globals_agree(scenario):
    """The scene's nt has no CodeView record (its header page is not a PE image), as in a small dump."""
    target = SnapshotTarget(scenario.data)
    kernel = next(m for m in scenario.data.modules if m.name == "nt")
    rva = scenario.data.symbols["nt!PsLoadedModuleList"] - kernel.base
    fits = FakeSymbols({"PsLoadedModuleList": rva}, PdbIdentity("ntkrnlmp.pdb", "AB" * 16, 1))
    session = open_session(target, symbol_files=[fits])
    assert session.symbol_files == [fits] and session.kernel_base == kernel.base and session.notes == []
    wrong = FakeSymbols({"PsLoadedModuleList": rva + 0x40})
    session = open_session(target, symbol_files=[wrong])
    assert session.symbol_files == []
    assert "PsLoadedModuleList is at RVA" in session.notes[0] and "not used" in session.notes[0]
    unknowable = FakeSymbols({})
    session = open_session(target, symbol_files=[unknowable])
    assert session.symbol_files == [] and "can be checked against it" in session.notes[0]


def test_a_session_asks_the_symbol_files_only_for_fields_leakhunt_knows(scenario):
    asked = {}

    class Recording(FakeSymbols):
        def type_info(self, name, field_names):
            asked[name] = list(field_names)
            return super().type_info(name, field_names)

    kernel = next(m for m in scenario.data.modules if m.name == "nt")
    session = KernelSession(SnapshotTarget(scenario.data), [Recording({})], kernel_base=kernel.base)
    session.layouts.get("_IRP")
    assert asked["_IRP"] == known_field_names("_IRP")
