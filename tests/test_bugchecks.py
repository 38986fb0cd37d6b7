from __future__ import annotations

import re

import pytest

from pykd_ext import bugchecks
from pykd_ext.bugchecks import (
    TRACK_LOCKED_PAGES_STEPS,
    BugCheckEntry,
    DecodedBugCheck,
    Variant,
    decode,
    lookup,
    name_of,
)

REGISTRY_KEY = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management"

# (code, P1) -> one key word per parameter that the documented meaning must contain.
# "=0" means the documented meaning is the literal value 0.
DOCUMENTED_MEANINGS = {
    (0x76, 0x0): ("locked", "process", "locked pages", "driver stacks"),
    (0x76, 0x1): ("not locked", "mdl", "locked pages", "driver stacks"),
    (0xD9, 0x1): ("per-process", "lock-tracking structure", "mdl", "pages locked"),
    (0xD9, 0x2): ("system-wide", "lock-tracking structure", "mdl", "pages locked"),
    (0xD9, 0x3): ("twice", "first tracking structure", "lock-tracking structure", "mdl"),
    (0xD9, 0x4): ("system-wide", "lock-tracking structure", "mdl", "=0"),
    (0x4E, 0x01): ("list head", "listhead", "available pages", "=0"),
    (0x4E, 0x02): ("list entry", "entry being removed", "highest physical page", "reference count"),
    (0x4E, 0x06): ("prototype pte", "page frame number", "prototype pte", "pte"),
    (0x4E, 0x07): ("unlocked", "page frame number", "share count", "=0"),
    (0x4E, 0x8D): ("free-page list", "state is inconsistent", "=0", "=0"),
    (0x4E, 0x8F): ("zeroed", "new page number", "old page number", "=0"),
    (0x4E, 0x99): ("pte or pfn", "page frame number", "page state", "=0"),
    (0x4E, 0x9A): ("locked for i/o", "page frame number", "page state", "reference count"),
    (0xC4, 0x6F): ("pfn database", "mdl", "physical page being locked", "highest physical page"),
    (0xC4, 0x78): ("mmunlockpages", "irql", "mdl", "=0"),
    (0xC4, 0x7C): ("never locked", "mdl", "mdl flags", "=0"),
    (0xC4, 0x7D): ("nonpaged pool", "mdl", "mdl flags", "=0"),
    (0xC4, 0xB0): ("mmprobeandlockpages", "mdl", "mdl flags", "incorrect flags"),
    (0xC4, 0xB1): ("mmprobeandlockprocesspages", "mdl", "mdl flags", "incorrect flags"),
    (0xC4, 0xB4): ("partial mdl", "mdl", "mdl flags", "partial"),
    (0xC4, 0xB8): ("still mapped", "mdl", "mdl flags", "reserved"),
}

SINGLE_FORM_MEANINGS = {
    0x153: ("thread", "entry that was not freed", "lock pointer", "reserved"),
    0x162: ("thread", "lock", "session id", "reserved"),
    0x192: ("thread", "lock", "irql", "reserved"),
    0x157: ("thread", "target priority", "overflow", "reserved"),
    0x152: ("flags", "push lock", "reserved", "reserved"),
    0x13C: ("thread", "boost state", "reserved", "reserved"),
}

CB_MEANINGS = {
    "current": ("lock tracker", "0 (reserved)", "mdl", "number of locked pages"),
    "legacy": ("calling address", "caller", "mdl", "number of locked pages"),
}


def assert_meanings(decoded: DecodedBugCheck, keywords) -> None:
    assert len(decoded.parameters) == 4
    for parameter, keyword in zip(decoded.parameters, keywords):
        meaning = parameter.meaning.lower()
        if keyword == "=0":
            assert meaning == "0", (parameter.index, meaning)
        else:
            assert keyword in meaning, (parameter.index, keyword, meaning)


@pytest.mark.parametrize("code,p1", sorted(DOCUMENTED_MEANINGS))
def test_variant_selected_by_p1_and_its_meanings(code, p1):
    decoded = decode(code, [p1, 0x11, 0x22, 0x33])
    assert decoded.known
    assert decoded.variant is not None
    assert decoded.variant.key == f"P1={p1:#x}"
    assert [p.value for p in decoded.parameters] == [p1, 0x11, 0x22, 0x33]
    assert [p.index for p in decoded.parameters] == [1, 2, 3, 4]
    assert_meanings(decoded, DOCUMENTED_MEANINGS[(code, p1)])


@pytest.mark.parametrize("code", sorted(SINGLE_FORM_MEANINGS))
def test_lock_entry_codes_meanings(code):
    decoded = decode(code, [1, 2, 3, 4])
    assert decoded.known
    assert decoded.variant is None
    assert_meanings(decoded, SINGLE_FORM_MEANINGS[code])


def test_0x153_state_codes_are_all_described():
    p3 = decode(0x153, [0, 0, 4, 0]).parameters[2].meaning.lower()
    for phrase in ("lock pointer", "reserved bits", "corrupted", "residual"):
        assert phrase in p3


def test_names_of_locked_pages_family():
    assert name_of(0x76) == "PROCESS_HAS_LOCKED_PAGES"
    assert name_of(0xCB) == "DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS"
    assert name_of(0xD9) == "LOCKED_PAGES_TRACKER_CORRUPTION"
    assert name_of(0x4E) == "PFN_LIST_CORRUPT"
    assert name_of(0x153) == "KERNEL_LOCK_ENTRY_LEAKED_ON_THREAD_TERMINATION"
    assert name_of(0x162) == "KERNEL_AUTO_BOOST_INVALID_LOCK_RELEASE"
    assert name_of(0x192) == "KERNEL_AUTO_BOOST_LOCK_ACQUISITION_WITH_RAISED_IRQL"
    assert name_of(0xC4) == "DRIVER_VERIFIER_DETECTED_VIOLATION"


@pytest.mark.parametrize(
    "code,name",
    [
        (0x0A, "IRQL_NOT_LESS_OR_EQUAL"),
        (0x1E, "KMODE_EXCEPTION_NOT_HANDLED"),
        (0x3B, "SYSTEM_SERVICE_EXCEPTION"),
        (0x50, "PAGE_FAULT_IN_NONPAGED_AREA"),
        (0x7E, "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"),
        (0x7F, "UNEXPECTED_KERNEL_MODE_TRAP"),
        (0x9F, "DRIVER_POWER_STATE_FAILURE"),
        (0xC2, "BAD_POOL_CALLER"),
        (0xD1, "DRIVER_IRQL_NOT_LESS_OR_EQUAL"),
        (0xD5, "DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL"),
        (0xEF, "CRITICAL_PROCESS_DIED"),
        (0x133, "DPC_WATCHDOG_VIOLATION"),
        (0x139, "KERNEL_SECURITY_CHECK_FAILURE"),
        (0x1A, "MEMORY_MANAGEMENT"),
        (0x19, "BAD_POOL_HEADER"),
        (0xE2, "MANUALLY_INITIATED_CRASH"),
        (0x1C8, "MANUALLY_INITIATED_POWER_BUTTON_HOLD"),
        (0x124, "WHEA_UNCORRECTABLE_ERROR"),
        (0xC5, "DRIVER_CORRUPTED_EXPOOL"),
        (0xD8, "DRIVER_USED_EXCESSIVE_PTES"),
        (0xCE, "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS"),
        (0xEA, "THREAD_STUCK_IN_DEVICE_DRIVER"),
        (0x101, "CLOCK_WATCHDOG_TIMEOUT"),
        (0x9C, "MACHINE_CHECK_EXCEPTION"),
        (0xA0, "INTERNAL_POWER_ERROR"),
    ],
)
def test_well_known_names(code, name):
    assert name_of(code) == name
    assert lookup(code).name == name


def test_0x76_next_steps_cover_search_unlock_review_and_tracking():
    zero = decode(0x76, [0, 0xFFFF800012345080, 3, 0])
    steps = " ".join(zero.next_steps)
    assert "!search" in steps
    assert "IRP" in steps
    for step in TRACK_LOCKED_PAGES_STEPS:
        assert step in zero.next_steps
    # variant steps come first, the code's general steps last
    assert zero.next_steps[: len(zero.variant.next_steps)] == zero.variant.next_steps
    assert zero.next_steps[-len(lookup(0x76).next_steps):] == lookup(0x76).next_steps

    one = decode(0x76, [1, 0xFFFF800012345000, 3, 0])
    assert one.variant.key == "P1=0x1"
    assert "unlock" in " ".join(one.variant.next_steps).lower()
    assert "!search" not in " ".join(one.next_steps)


def test_0xcb_format_is_chosen_from_p2():
    current = decode(0xCB, [0xFFFFA00011112220, 0, 0xFFFFA00033334440, 0x26])
    assert current.variant.key == "current"
    assert_meanings(current, CB_MEANINGS["current"])
    assert any("!lockedpages" in step for step in current.next_steps)

    legacy = decode(0xCB, [0xF90C6AE0, 0xF9949215, 0x81861788, 0x26])
    assert legacy.variant.key == "legacy"
    assert_meanings(legacy, CB_MEANINGS["legacy"])
    assert "dispatch routine" in legacy.parameters[0].meaning
    assert "device object" in legacy.parameters[1].meaning
    assert not any("!lockedpages" in step for step in legacy.next_steps)


def test_0xcb_explicit_key_overrides_the_heuristic():
    assert decode(0xCB, [1, 0, 2, 3], variant_key="legacy").variant.key == "legacy"
    assert decode(0xCB, [1, 5, 2, 3], variant_key="current").variant.key == "current"
    # an unknown key falls back to the automatic choice
    assert decode(0xCB, [1, 5, 2, 3], variant_key="bogus").variant.key == "legacy"


def test_variant_key_selects_variant_for_p1_codes():
    decoded = decode(0x4E, [0x99, 1, 2, 3], variant_key="P1=0x9a")
    assert decoded.variant.key == "P1=0x9a"
    assert "reference count" in decoded.parameters[3].meaning


def test_variant_key_ignored_for_codes_without_variants():
    decoded = decode(0x153, [1, 2, 3, 0], variant_key="P1=0x1")
    assert decoded.variant is None
    assert decoded.parameters[0].meaning == lookup(0x153).parameters[0]


def test_unknown_subcode_falls_back_to_generic_meanings():
    entry = lookup(0x4E)
    decoded = decode(0x4E, [0x55, 1, 2, 3])
    assert decoded.known
    assert decoded.variant is None
    assert "0x55" in decoded.parameters[0].meaning
    assert "not documented" in decoded.parameters[0].meaning
    assert [p.meaning for p in decoded.parameters[1:]] == list(entry.parameters[1:])
    assert decoded.next_steps == entry.next_steps


def test_c4_locked_page_subcodes_use_lowercase_keys():
    keys = {variant.key for variant in lookup(0xC4).variants}
    assert {"P1=0x6f", "P1=0x78", "P1=0x7c", "P1=0x7d", "P1=0xb0", "P1=0xb1", "P1=0xb4",
            "P1=0xb8"} <= keys
    assert decode(0xC4, [0x7C, 0xFFFF0000, 0x2, 0]).variant.key == "P1=0x7c"
    assert decode(0xC4, [0x3F, 0, 0, 0]).variant is None


def test_m_form_decodes_as_base_code():
    base = decode(0x7E, [0xC0000005, 0xFFFFF80012345678, 0x1000, 0x2000])
    m_form = decode(0x1000007E, [0xC0000005, 0xFFFFF80012345678, 0x1000, 0x2000])
    assert m_form.known
    assert m_form.code == 0x7E
    assert m_form.name == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert m_form.parameters == base.parameters
    assert "_M" in m_form.summary and "0x1000007E" in m_form.summary
    assert name_of(0x1000008E) == "KERNEL_MODE_EXCEPTION_NOT_HANDLED_M"
    assert name_of(0x100000EA) == "THREAD_STUCK_IN_DEVICE_DRIVER_M"
    assert lookup(0x1000007F) is lookup(0x7F)


def test_code_listed_as_itself_is_not_read_as_m_form():
    decoded = decode(0xDEADDEAD, [0, 0, 0, 0])
    assert decoded.name == "MANUALLY_INITIATED_CRASH1"
    assert decoded.code == 0xDEADDEAD


def test_unknown_code():
    decoded = decode(0x1234, [1, 2, 3, 4])
    assert not decoded.known
    assert decoded.name == "UNKNOWN_BUGCHECK_0x1234"
    assert decoded.code == 0x1234
    assert decoded.variant is None
    assert "not in" in decoded.summary and "Microsoft" in decoded.summary
    assert [p.index for p in decoded.parameters] == [1, 2, 3, 4]
    for parameter in decoded.parameters:
        assert f"parameter {parameter.index}" in parameter.meaning
        assert "no documented meaning" in parameter.meaning
    assert lookup(0x1234) is None
    assert name_of(0x1234) == "UNKNOWN_BUGCHECK_0x1234"
    assert name_of(0x1000ABCD) == "UNKNOWN_BUGCHECK_0x1000ABCD"


def test_largest_code_is_accepted():
    assert not decode(0xFFFFFFFF, [0, 0, 0, 0]).known


@pytest.mark.parametrize("code", [-1, -0x76, 0x100000000, 1 << 40])
def test_out_of_range_codes_raise(code):
    with pytest.raises(ValueError):
        decode(code, [0, 0, 0, 0])
    with pytest.raises(ValueError):
        name_of(code)
    with pytest.raises(ValueError):
        lookup(code)


def test_parameters_are_masked_to_64_bits():
    decoded = decode(0x76, [0, -1, (1 << 70) | 5, 0x1_0000_0000_0000_0000])
    assert [p.value for p in decoded.parameters] == [0, (1 << 64) - 1, 5, 0]


@pytest.mark.parametrize("count", [0, 3, 5])
def test_wrong_parameter_count_raises(count):
    with pytest.raises(ValueError):
        decode(0x76, [0] * count)


def test_catalog_entries_are_well_formed():
    entries = bugchecks._ENTRIES
    codes = [entry.code for entry in entries]
    assert len(codes) == len(set(codes))
    for entry in entries:
        assert isinstance(entry, BugCheckEntry)
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", entry.name), entry.name
        assert entry.summary.strip()
        assert len(entry.parameters) == 4 and all(m.strip() for m in entry.parameters)
        assert entry.selector in ("", "p1", "cb_format")
        assert bool(entry.variants) == bool(entry.selector), entry.name
        keys = [variant.key for variant in entry.variants]
        assert len(keys) == len(set(keys))
        for variant in entry.variants:
            assert isinstance(variant, Variant)
            assert variant.title.strip()
            assert len(variant.parameters) == 4 and all(m.strip() for m in variant.parameters)
            if entry.selector == "p1":
                match = re.fullmatch(r"P1=(0x[0-9a-f]+)", variant.key)
                assert match, variant.key
                assert variant.key == f"P1={int(match.group(1), 16):#x}"
        if entry.selector == "cb_format":
            assert sorted(keys) == ["current", "legacy"]


def test_track_locked_pages_steps():
    text = " ".join(TRACK_LOCKED_PAGES_STEPS)
    assert REGISTRY_KEY in text
    assert "TrackLockedPages" in text
    assert "REG_DWORD" in text
    assert "reboot" in text.lower()
    assert "0xCB" in text and "DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS" in text
    assert "Pool Tracking" in text
    assert "delete" in TRACK_LOCKED_PAGES_STEPS[-1].lower()
    assert "not set it to 0" in TRACK_LOCKED_PAGES_STEPS[-1]
