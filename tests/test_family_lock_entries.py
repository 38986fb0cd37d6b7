"""0x153, 0x162 and 0x192: thread -> process and start module, the lock entry decoded per build, the lock
placed in a driver image or a pool block (mocks/scenarios_family.py holds the truth)."""
import pytest

from mocks.scenarios_family import (DRIVER_DATA, KINDS_0x153, KINDS_0x162, KINDS_0x192, NT_WORKER, UNKNOWN_BUILD,
                                    FamilyScene, case_0x153, case_0x162, case_0x192)
from pykd_ext.analyses import analyze
from pykd_ext.analyses.lock_entries import NOBODY_NAMED, irql_name
from pykd_ext.arch import X64, X86
from pykd_ext.kernel.lock_entries import LEAK_STATES, decode_lock_pointer
from pykd_ext.kernel.pool import PoolFinder
from pykd_ext.layouts import Layouts
from pykd_ext.targets.base import BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget


def run(scenario):
    return analyze(SnapshotTarget(scenario.data))


def top(report):
    return report.suspects[0] if report.suspects else None


@pytest.mark.parametrize("build", [19045, 26100])
def test_0x153_lock_global_of_a_driver_names_it(build):
    scenario = case_0x153("x64", "image-lock", build)
    report = run(scenario)
    thread = report.thread
    assert thread.address == scenario.expected["thread"] and thread.process == scenario.expected["process"]
    assert thread.process_name == "System" and (thread.process_id, thread.thread_id) == (4, 0x1F4)
    assert thread.start_symbol == f"nt+{NT_WORKER:#x}" and thread.start_module == "nt"
    entry = report.lock_entries[0]
    assert entry.address == scenario.expected["entry"] and entry.role.startswith("P2")
    assert entry.lock == scenario.expected["lock"] and entry.acquired and not entry.in_tree
    assert entry.session_id == (1 if build == 19045 else None)  # the 24H2 entry has no SessionId
    lock = report.lock
    assert (lock.location, lock.image, lock.section) == ("image", "leakyflt.sys", ".data")
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "high")
    assert any(f"leakyflt+{DRIVER_DATA + 0x40:#x}" in e for e in top(report).evidence)
    assert len(report.suspects) == 1  # the thread is a kernel worker: no evidence against anyone else
    assert any(f.label == "entry state (P3)" and f.note == LEAK_STATES[1] for f in report.facts)


@pytest.mark.parametrize("build", [19045, 26100])
def test_0x153_lists_the_threads_other_entries_in_use(build):
    scenario = case_0x153("x64", "image-lock", build)
    report = run(scenario)
    others = [e for e in report.lock_entries if e.role.startswith("thread entry")]
    assert [e.address for e in others] == scenario.expected["other_entries"]
    assert not others[0].acquired
    assert any(f.label == "leaked entry" for f in report.facts)


@pytest.mark.parametrize("build", [19045, 26100])
def test_0x153_pool_lock_shows_the_block_and_tag_and_blames_the_thread_start(build):
    scenario = case_0x153("x64", "pool-lock", build)
    report = run(scenario)
    lock = report.lock
    assert (lock.location, lock.pool_tag) == ("pool", "Lkfl")
    assert lock.pool_block == scenario.expected["lock"] - 0x20
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "medium")
    assert report.thread.start_symbol == "leakyflt+0x1500"


def test_0x153_residual_boosts_are_decoded():
    report = run(case_0x153("x64", "boosts"))
    entry = report.lock_entries[0]
    assert entry.lock is None and entry.residual_boosts and entry.cpu_boosts == 1 and entry.io_boost
    assert any(f.label == "residual boosts" for f in report.facts)
    assert report.lock is None
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "medium")


def test_0x153_kernel_thread_and_pool_lock_names_nobody():
    report = run(case_0x153("x64", "nothing"))
    assert report.suspects == [] and report.verdict == NOBODY_NAMED
    assert report.lock.location == "pool" and report.lock.pool_tag == "Even"


def test_0x153_unknown_build_warns_and_names_nobody():
    report = run(case_0x153("x64", "unknown-build"))
    assert report.build == UNKNOWN_BUILD and report.suspects == []
    guess = [w for w in report.warnings if f"no built-in layouts for build {UNKNOWN_BUILD}" in w]
    assert len(guess) == 1 and "--symbol-path" in guess[0]
    for name in ("_KTHREAD", "_ETHREAD", "_KLOCK_ENTRY"):
        assert f"{name} from the build 26100 table" in guess[0]
        assert f"guessed for build {UNKNOWN_BUILD}" in report.layouts[name]
    # The scene is laid out as no table says: what the guessed tables read names nobody.
    assert all(entry.lock is None for entry in report.lock_entries)


def test_0x153_state_that_disagrees_with_memory_is_reported():
    scenario = case_0x153("x64", "boosts")
    thread, entry, _, _ = scenario.data.bugcheck.parameters
    scenario.data.bugcheck = BugCheck(0x153, (thread, entry, 1, 0))
    report = run(scenario)
    assert any("P3 says the entry still references a lock" in w for w in report.warnings)


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_0x162_lock_owner_outranks_the_releasing_threads_driver(arch):
    scenario = case_0x162(arch, "image-lock")
    report = run(scenario)
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "high")
    assert any(f.label == "session ID (P3)" and f.value == "1" for f in report.facts)
    assert any(f.label == "what went wrong" for f in report.facts)
    if arch == "x64":
        assert [s.image for s in report.suspects] == ["leakyflt.sys", "helperdrv.sys"]
        assert report.suspects[1].confidence == "medium"
    else:  # no x86 thread layout: the thread is not decoded, the lock still is
        assert [s.image for s in report.suspects] == ["leakyflt.sys"]
        assert any("the _KTHREAD layout is unknown for x86" in w for w in report.warnings)


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_0x162_unknown_build_still_places_the_lock(arch):
    report = run(case_0x162(arch, "unknown-build"))
    assert [s.image for s in report.suspects] == ["leakyflt.sys"]
    assert report.lock.section == ".data"


def test_0x192_names_the_irql_and_the_thread_driver():
    scenario = case_0x192("x64", "pool-lock")
    report = run(scenario)
    assert any(f.label == "IRQL (P3)" and f.value == "DISPATCH_LEVEL (2)" for f in report.facts)
    assert report.lock.pool_tag == scenario.expected["pool_tag"]
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "medium")


def test_irql_names():
    assert irql_name(0, X64) == "PASSIVE_LEVEL (0)" and irql_name(15, X64) == "HIGH_LEVEL (15)"
    assert irql_name(31, X86) == "HIGH_LEVEL (31)" and "device interrupt" in irql_name(5, X64)


@pytest.mark.parametrize("builder,kinds", [(case_0x153, KINDS_0x153), (case_0x162, KINDS_0x162),
                                           (case_0x192, KINDS_0x192)])
def test_every_lock_case_names_exactly_its_culprit(builder, kinds):
    for kind in kinds:
        scenario = builder("x64", kind)
        report = run(scenario)
        assert (top(report).image if report.suspects else None) == scenario.expected["culprit_image"], kind


def test_lock_pointer_decoding():
    target = SnapshotTarget(case_0x162("x64", "nothing", noise_pages=0).data)
    kernel = 0xFFFFA58A1C001040
    assert decode_lock_pointer(target, kernel & ~(1 << 63) | 0x3) == (kernel, False)
    assert decode_lock_pointer(target, kernel | 0x1) == (kernel, True)
    assert decode_lock_pointer(target, 0) == (None, False)
    assert decode_lock_pointer(target, 1 << 63) == (None, True)


def test_pool_tag_is_read_only_from_a_header_that_covers_the_address():
    scene = FamilyScene("x64", 3)
    block = scene.pool_block(0x60, "Abcd")
    after = scene.alloc(0x40)  # right after the block: not covered by its BlockSize
    data = scene.finish_family(BugCheck(0x192, (0, block, 2, 0)), "pool")
    target = SnapshotTarget(data)
    pool = PoolFinder(target, Layouts(target))
    found = pool.block_of(block + 0x58)
    assert (found.address, found.tag, found.allocated) == (block, "Abcd", True)
    assert pool.block_of(after + 0x8) is None


@pytest.mark.parametrize("build", [19045, 26100])
def test_0x153_entry_that_is_not_the_threads_own_blames_nobody(build):
    """A P2 outside thread P1's entries may be any memory: the driver its 'lock' points into is not blamed."""
    scenario = case_0x153("x64", "image-lock", build)
    data = scenario.data
    entry = scenario.expected["entry"]
    size = Layouts(SnapshotTarget(data)).get("_KLOCK_ENTRY").size
    target = SnapshotTarget(data)
    copy = max(data.pages) + 0x100  # the last page of memory: noise, not a thread's entry array
    page = copy & ~0xFFF
    data.pages[page] = data.pages[page][:0x100] + target.read(entry, size) + data.pages[page][0x100 + size:]
    thread, _, state, p4 = data.bugcheck.parameters
    data.bugcheck = BugCheck(0x153, (thread, copy, state, p4))
    report = run(scenario)
    assert report.lock.image == "leakyflt.sys"  # still shown where it points
    assert report.suspects == []
    assert any("not one of thread P1's lock entries" in w for w in report.warnings)
