"""The stand-in pykd (mocks/pykd) keeps the real 0.3.4.15 API's names, types and failure modes, and
leakhunt uses no pykd name the real module lacks."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCKS = os.path.join(ROOT, "mocks")
if MOCKS not in sys.path:
    sys.path.insert(0, MOCKS)

import pykd  # noqa: E402  (the stand-in)
from pykd import _control  # noqa: E402

from mocks.scenarios import case_0x76  # noqa: E402
from pykd_ext.search_output import parse_search_output  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
NAMES_FILE = os.path.join(SHARED, "reference", "pykd-0.3.4.15-names.txt")
CHECKER = os.path.join(SHARED, "tools", "check_pykd_names.py")


@pytest.fixture(autouse=True)
def no_target():
    yield
    _control.unload()


def test_the_stand_in_is_what_tests_import():
    assert os.path.dirname(pykd.__file__) == os.path.join(MOCKS, "pykd")


@pytest.mark.skipif(not os.path.isfile(NAMES_FILE), reason="the shared pykd reference is not next to this checkout")
def test_every_public_name_of_the_stand_in_exists_in_real_pykd():
    with open(NAMES_FILE, encoding="utf-8") as handle:
        real = {line.strip() for line in handle if line.strip() and not line.startswith("#")}
    public = {name for name in dir(pykd) if not name.startswith("_")}
    assert public <= real, sorted(public - real)
    with pytest.raises(AttributeError):
        pykd.getBugCheckData  # a 0.2-era name, not in 0.3.4.15  # noqa: B018


@pytest.mark.skipif(not os.path.isfile(CHECKER), reason="the shared pykd name checker is not next to this checkout")
def test_leakhunt_calls_no_pykd_name_the_real_module_lacks():
    result = subprocess.run([sys.executable, CHECKER, "pykd_ext", "scripts"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert "0 unknown pykd names" in result.stdout, result.stdout
    assert result.returncode == 0


def test_exception_hierarchy():
    assert issubclass(pykd.DbgException, Exception)
    for name in ("MemoryException", "SymbolException", "CallException", "CPUException"):
        assert getattr(pykd, name).__bases__ == (pykd.DbgException,)
    assert pykd.TypeException.__bases__ == (pykd.SymbolException,)


def test_memory_comes_back_as_lists_and_bulk_reads_fail_as_a_whole():
    scenario = case_0x76("x64", "irp")
    _control.load(scenario)
    process = scenario.expected["process"]
    data = pykd.loadBytes(process, 16)
    assert isinstance(data, list) and all(isinstance(b, int) and 0 <= b < 256 for b in data)
    assert bytes(data) == scenario.data.pages[process & ~0xFFF][process & 0xFFF:(process & 0xFFF) + 16]
    assert pykd.loadQWords(process, 2) == [int.from_bytes(bytes(data[i:i + 8]), "little") for i in (0, 8)]
    last_page = max(scenario.data.pages)
    assert (last_page + 0x1000) not in scenario.data.pages
    with pytest.raises(pykd.MemoryException, match="target virtual address"):
        pykd.loadBytes(last_page + 0xFF0, 0x20)  # 16 readable bytes, then a missing page: no partial result
    va = min(scenario.data.physical)
    assert pykd.loadBytes(scenario.data.physical[va], 8, True) == list(scenario.data.pages[va][:8])
    with pytest.raises(pykd.MemoryException, match="target physical address"):
        pykd.loadBytes(0, 8, True)


def test_a_32_bit_target_returns_sign_extended_addresses():
    scenario = case_0x76("x86", "irp")
    _control.load(scenario)
    address = pykd.getOffset("nt!KiBugCheckDriver")
    assert address == scenario.data.symbols["nt!KiBugCheckDriver"] | 0xFFFFFFFF00000000
    assert pykd.bugCheckData()[2] == scenario.data.bugcheck.parameters[1] | 0xFFFFFFFF00000000
    assert pykd.loadBytes(address, 4) == pykd.loadBytes(address & 0xFFFFFFFF, 4)  # both forms are accepted
    assert pykd.ptrSize() == 4 and not pykd.is64bitSystem() and pykd.getCPUType() == pykd.CPUType.I386


def test_symbols_types_and_modules():
    _control.load(case_0x76("x64", "irp"))
    with pytest.raises(pykd.SymbolException):
        pykd.getOffset("nt!NoSuchSymbol")
    with pytest.raises(pykd.DbgException, match="Failed to find module"):
        pykd.getOffset("nosuchmodule!Anything")
    irp = pykd.typeInfo("nt!_IRP")
    assert irp.fieldOffset("MdlAddress") == 8
    tail = irp.field("Tail")
    assert irp.fieldOffset("Tail") + tail.fieldOffset("Overlay") + tail.field("Overlay").fieldOffset("Thread") == 0x98
    with pytest.raises(pykd.TypeException):
        irp.fieldOffset("Tail.Overlay.Thread")  # nested members are reached through field()
    with pytest.raises(pykd.TypeException):
        pykd.typeInfo("nt!_NO_SUCH_TYPE")
    names = [(m.name(), m.image()) for m in pykd.getModulesList()]
    assert ("nt", "ntoskrnl.exe") in names and ("leakyflt", "leakyflt.sys") in names
    _control.load(case_0x76("x64", "irp"), types=False)
    with pytest.raises(pykd.TypeException):
        pykd.typeInfo("nt!_MDL")


def test_search_command_prints_the_documented_format():
    scenario = case_0x76("x86", "irp")
    _control.load(scenario)
    process = scenario.expected["process"]
    text = pykd.dbgCommand(f"!search {process:x} 0")
    lines = text.splitlines()
    assert lines[0].startswith("Searching PFNs in range ") and lines[0].endswith(
        f"for [{process | 0xFFFFFFFF00000000:X} - {process | 0xFFFFFFFF00000000:X}]")
    assert lines[2].split() == ["Pfn", "Offset", "Hit", "Va", "Pte"] and set(lines[3]) == {"-", " "}
    assert lines[-1] == "Search done."
    hits = [row.hit for row in parse_search_output(text).rows]
    assert process in hits and any(hit != process and bin(hit ^ process).count("1") == 1 for hit in hits)


def test_commands_with_no_output_return_none():
    _control.load(case_0x76("x64", "irp"), search_extension=False)
    assert pykd.dbgCommand("!search 0x1234 0") is None
    assert "No export search found" in pykd.dbgCommand("!search 0x1234 0", True, pykd.outputFlag.Error)
    with pytest.raises(pykd.DbgException):
        pykd.dbgCommand("!no_such_extension_command")


def test_bugcheck_sources():
    scenario = case_0x76("x64", "unlock")
    _control.load(scenario)
    assert pykd.bugCheckData() == (0x76,) + scenario.data.bugcheck.parameters
    assert pykd.dbgCommand(".bugcheck").startswith("Bugcheck code 00000076\nArguments 00000000`00000001 ")
    _control.load(scenario, kernel=False)
    with pytest.raises(pykd.DbgException):
        pykd.bugCheckData()
    assert pykd.dbgCommand(".bugcheck") is None


def test_output_and_windbg_detection(capsys):
    class DbgOut:
        def __init__(self):
            self.calls = []

        def write(self, text):
            self.calls.append(("write", text))

        def writedml(self, text):
            self.calls.append(("writedml", text))

    assert not pykd.isWindbgExt()
    pykd.dprint("<b>x</b>", True)  # no writedml: the markup is written as text
    assert capsys.readouterr().out == "<b>x</b>"
    out = DbgOut()
    saved, sys.stdout = sys.stdout, out
    try:
        assert pykd.isWindbgExt()
        pykd.dprintln("<b>x</b>", True)
        pykd.dprint("plain")
    finally:
        sys.stdout = saved
    assert out.calls == [("writedml", "<b>x</b>\n"), ("write", "plain")]


def test_already_initialised_and_ctrl_break():
    _control.load(case_0x76("x64", "irp"))
    with pytest.raises(pykd.DbgException, match="already initialized"):
        pykd.initialize()
    _control.interrupt("ptrSize", call=2)
    assert pykd.ptrSize() == 8
    with pytest.raises(SystemExit, match="CTRL\\+BREAK"):
        pykd.ptrSize()
    assert _control.calls()["ptrSize"] == 2

