"""The 0x76 relatives inside WinDbg: ``!py leakhunt`` over the stand-in pykd (mocks/pykd), with and without
symbols, reaches the same verdict as the replay; with symbols, the layouts say so."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCKS = os.path.join(ROOT, "mocks")
if MOCKS not in sys.path:
    sys.path.insert(0, MOCKS)

from pykd import _control  # noqa: E402  (the stand-in)

from mocks.scenarios_family import case_0x4e, case_0x76_tracked, case_0x153, case_0x162, case_0xcb  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "leakhunt.py")
CASES = {
    "0xcb-current": lambda: case_0xcb("x64", "current", noise_pages=1),
    "0xcb-nothing": lambda: case_0xcb("x64", "nothing", noise_pages=1),
    "tracked-0x76": lambda: case_0x76_tracked("x64", "P4", noise_pages=1),
    "0x4e-9a": lambda: case_0x4e("x64", 0x9A, noise_pages=1),
    "0x153-image-lock": lambda: case_0x153("x64", "image-lock", noise_pages=1),
    "0x153-26100": lambda: case_0x153("x64", "image-lock", 26100, noise_pages=1),
    "0x162-x86": lambda: case_0x162("x86", "image-lock", noise_pages=1),
}


@pytest.fixture(autouse=True)
def no_target():
    yield
    _control.unload()


def bang_py_json(scenario, types):
    _control.load(scenario, types=types)
    out, err = _control.run_script(SCRIPT, ["--format", "json"], via="runpy")
    assert err.written() == ""
    return json.loads(out.written("text"))


@pytest.mark.parametrize("types", [True, False], ids=["symbols", "no-symbols"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_script_reaches_the_scenarios_verdict(case, types):
    scenario = CASES[case]()
    report = bang_py_json(scenario, types)
    found = report["suspects"][0]["image"] if report["suspects"] else None
    assert found == scenario.expected["culprit_image"]


def test_with_symbols_the_tracker_layouts_come_from_them():
    report = bang_py_json(CASES["0xcb-current"](), types=True)
    assert report["layouts"]["_LOCK_TRACKER"] == "debugger symbols" and report["layouts"]["_LOCK_HEADER"] == "debugger symbols"
    assert not any("_LOCK_TRACKER was decoded with a built-in table" in w for w in report["warnings"])
    assert report["trackers"][0]["stack"][2]["symbol"] == "leakyflt+0x1a30"


def test_without_symbols_the_unverified_tables_are_named():
    report = bang_py_json(CASES["0x153-image-lock"](), types=False)
    assert "UNVERIFIED" in report["layouts"]["_KLOCK_ENTRY"]
    assert any(w.startswith("_KLOCK_ENTRY was decoded with a built-in table") for w in report["warnings"])
