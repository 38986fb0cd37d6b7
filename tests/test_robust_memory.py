"""Hostile memory: the analysis always returns a report, every walk ends, and a suspect is only named
when a chain of objects that are valid in the damaged memory supports it.

Scenario memory is damaged the way crashed machines leave it (flipped bits, zeroed or missing pages,
freed objects overwritten with random words, self pointers, cycles, absurd sizes); each suspect of the
resulting report is then re-validated with fresh kernel views on the same damaged memory.
``LEAKHUNT_FUZZ_EXAMPLES`` scales the number of hypothesis examples.
"""
import json
import os
import random
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.mutators import (HOSTILE_FIELDS, HOSTILE_STRINGS, OBJECT_KINDS, STRING_FIELDS, apply_damage, clone,
                           field_address, object_size, overwrite_object, pointer_alphabet, randomize_memory,
                           poke, scenario_objects, write_field, write_hostile_field)
from fuzz.oracles import unsupported_suspects, unsupported_thread_starts
from mocks import scenarios_family as family
from mocks.scenarios import IRP_MJ_WRITE, KernelScene, case_0x76
from mocks.scenarios_private import case_0x76_private
from pykd_ext.analyses import ANALYSES, analyze
from pykd_ext.kernel.io import MAX_IRP_STACK_COUNT
from pykd_ext.kernel.modules import MAX_LOADED_MODULES, walk_loaded_modules
from pykd_ext.kernel.trackers import walk_tree
from pykd_ext.layouts import Layouts
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.report import Report
from pykd_ext.targets.base import BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget

EXAMPLES = int(os.environ.get("LEAKHUNT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CASES = {}
for _arch in ("x64", "x86"):
    for _kind in ("irp", "orphan", "unlock", "nothing", "private"):
        _scenario = case_0x76_private(_arch, noise_pages=2) if _kind == "private" else \
            case_0x76(_arch, _kind, noise_pages=2, ki_bugcheck_driver="leakyflt.sys" if _kind == "orphan" else "")
        _objects = scenario_objects(_scenario.data, _scenario.expected)
        CASES[(_arch, _kind)] = (_scenario, _objects, pointer_alphabet(_scenario.data, _objects))


def run(data, **kwargs) -> Report:
    """Analyse, then render every way a user can see the report."""
    report = analyze(SnapshotTarget(data), **kwargs)
    assert isinstance(report, Report)
    render_text(report, verbose=True)
    render_dml(report, verbose=True)
    json.loads(render_json(report))
    return report


def test_the_undamaged_cases_are_supported_and_name_the_culprit():
    for (arch, kind), (scenario, _, _) in CASES.items():
        report = run(scenario.data)
        assert not unsupported_suspects(scenario.data, report)
        if scenario.expected["culprit"]:
            assert report.suspects[0].driver == scenario.expected["culprit"], (arch, kind)


# ---- properties -------------------------------------------------------------------------------

cases = st.sampled_from(sorted(CASES))
damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 4095), st.integers(0, 7)),
    st.tuples(st.sampled_from(["zero", "drop"]), st.integers(0, 1 << 16)),
    st.tuples(st.just("overwrite"), st.sampled_from(OBJECT_KINDS), st.integers(0, 15), st.integers(0, 1 << 32)),
    st.tuples(st.just("field"), st.integers(0, len(HOSTILE_FIELDS) - 1), st.integers(0, 15)),
    st.tuples(st.just("string"), st.sampled_from(sorted(STRING_FIELDS)), st.integers(0, len(HOSTILE_STRINGS) - 1),
              st.integers(0, 15)),
    st.tuples(st.just("word"), st.sampled_from(OBJECT_KINDS), st.integers(0, 15), st.integers(0, 0x1FF),
              st.integers(0, 1 << 16)),
)


@FUZZ
@given(case=cases, plan=st.lists(damage, min_size=1, max_size=10))
def test_damaged_memory_gives_a_report_whose_suspects_are_all_supported(case, plan):
    scenario, objects, alphabet = CASES[case]
    data = clone(scenario.data)
    for op in plan:
        apply_damage(data, objects, alphabet, op)
    report = run(data)
    assert not unsupported_suspects(data, report)


@FUZZ
@given(case=st.sampled_from([c for c in sorted(CASES) if c[1] == "irp"]),
       plan=st.lists(damage, min_size=1, max_size=10))
def test_damage_to_decoys_does_not_change_the_verdict(case, plan):
    """The stale MDL, the other process's MDLs and the unrelated IRPs (and their devices) are damaged;
    the culprit's chain is untouched, so the verdict must not move."""
    scenario, objects, alphabet = CASES[case]
    expected = scenario.expected
    decoys = {"_MDL": [m for m in objects["_MDL"] if m not in expected["locked_mdls"]],
              "_IRP": list(expected["unrelated_irps"])}
    # Values that would hand a decoy a real part of the culprit's chain (the process, its MDLs) could
    # make a second valid chain: a different memory, not damage to decoys.
    chain = {expected["process"], *expected["locked_mdls"], *expected["irps"]}
    harmless = [value for value in alphabet if value not in chain]
    data = clone(scenario.data)
    for op in plan:
        if op[0] not in ("flip", "zero", "drop"):  # page-wide damage would reach the chain's pages
            apply_damage(data, decoys, harmless, op)
    report = run(data)
    assert report.suspects and report.suspects[0].driver == expected["culprit"]
    assert report.suspects[0].confidence == "high"
    assert not unsupported_suspects(data, report)


@FUZZ
@given(case=cases, seed=st.integers(0, 1 << 32), pointer_rich=st.booleans())
def test_random_memory_names_no_suspect(case, seed, pointer_rich):
    """Every page replaced by random words, drawn (when pointer-rich) mostly from the process address,
    real object and page addresses, Type codes, sizes and page frame numbers: candidates abound, but
    no chain of valid objects exists, so nobody may be named."""
    scenario, objects, alphabet = CASES[case]
    data = clone(scenario.data)
    randomize_memory(data, random.Random(seed), alphabet if pointer_rich else ())
    report = run(data)
    assert report.suspects == []


@FUZZ
@given(case=cases, seed=st.integers(0, 1 << 32))
def test_every_object_overwritten_with_random_words_names_no_suspect(case, seed):
    scenario, objects, alphabet = CASES[case]
    data = clone(scenario.data)
    poke(data, data.symbols["nt!KiBugCheckDriver"], bytes(data.pointer_size))  # the kernel named nobody
    rng = random.Random(seed)
    for kind, addresses in objects.items():
        for address in addresses:
            overwrite_object(data, address, object_size(data, kind), rng, alphabet)
    report = run(data)
    assert report.suspects == []


@FUZZ
@given(case=cases, code=st.one_of(st.sampled_from(sorted(ANALYSES)), st.integers(0, 0xFFFFFFFF)),
       parameters=st.tuples(*[st.one_of(st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]), st.integers(0, 2 ** 32 - 1))
                              for _ in range(4)]),
       plan=st.lists(damage, max_size=6))
def test_every_analysis_survives_damaged_memory_and_odd_parameters(case, code, parameters, plan):
    scenario, objects, alphabet = CASES[case]
    data = clone(scenario.data)
    if data.pointer_size == 8:
        parameters = tuple(p | (0xFFFF800000000000 if p & 0x80000000 else 0) for p in parameters)
    data.bugcheck = BugCheck(code, parameters)
    for op in plan:
        apply_damage(data, objects, alphabet, op)
    run(data)


FAMILY = {}
for _build in (family.case_0xcb, family.case_0x76_tracked, family.case_0xd9, family.case_0x4e, family.case_0x153,
               family.case_0x162, family.case_0x192):
    _scenario = _build("x64", noise_pages=1)
    FAMILY[_scenario.name] = (_scenario, pointer_alphabet(_scenario.data, {}))

page_damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 4095), st.integers(0, 7)),
    st.tuples(st.sampled_from(["zero", "drop"]), st.integers(0, 1 << 16)),
    st.tuples(st.just("scribble"), st.integers(0, 1 << 16), st.integers(0, 4095), st.integers(0, 1 << 16)),
)


@FUZZ
@given(name=st.sampled_from(sorted(FAMILY)), plan=st.lists(page_damage, min_size=1, max_size=12))
def test_the_other_hunts_survive_damaged_memory(name, plan):
    """The 0xCB, 0xD9, 0x4E, 0x153, 0x162, 0x192 and tracked 0x76 cases, their pages damaged."""
    scenario, alphabet = FAMILY[name]
    data = clone(scenario.data)
    for op in plan:
        apply_damage(data, {}, alphabet, op)
    report = run(data)
    assert not unsupported_thread_starts(data, report)
    if data.bugcheck.code == 0x76:
        assert not unsupported_suspects(data, report)


# ---- targeted: each class of corruption -------------------------------------------------------

def _case(arch="x64", kind="irp"):
    scenario, objects, _ = CASES[(arch, kind)]
    return scenario, objects, clone(scenario.data)


def _rejections(report, address):
    return [reason for rejected in report.rejected if rejected.address == address for reason in rejected.reasons]


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_an_mdl_size_of_0xffff_is_rejected_with_its_reason(arch):
    scenario, _, data = _case(arch)
    mdl = scenario.expected["locked_mdls"][-1]
    write_field(data, "_MDL", mdl, "Size", 0xFFFF)
    report = run(data)
    assert any("Size 0xffff" in reason for reason in _rejections(report, mdl))
    assert mdl not in [record.address for record in report.mdls]


def test_an_irp_stack_count_of_255_is_rejected_with_its_reason():
    scenario, _, data = _case()
    irp = scenario.expected["irps"][0]
    write_field(data, "_IRP", irp, "StackCount", 255)
    report = run(data)
    reasons = [reason for rejected in report.rejected for reason in rejected.reasons]
    assert any(f"StackCount 255 is outside 1..{MAX_IRP_STACK_COUNT}" in reason for reason in reasons)
    assert report.suspects == [] and not unsupported_suspects(data, report)


@pytest.mark.parametrize("length, maximum, message", [(0x20, 0x10, "past MaximumLength"), (0x11, 0x20, "odd"),
                                                      (0xFFFE, 0xFFFE, "implausibly long")])
def test_a_driver_name_with_an_impossible_unicode_string_names_nobody(length, maximum, message):
    scenario, objects, data = _case()
    culprit_driver = objects["_DRIVER_OBJECT"][0]
    name = field_address(data, "_DRIVER_OBJECT", culprit_driver, "DriverName")
    write_field(data, "_UNICODE_STRING", name, "Length", length)
    write_field(data, "_UNICODE_STRING", name, "MaximumLength", maximum)
    report = run(data)
    assert scenario.expected["culprit"] not in [s.driver for s in report.suspects]
    assert any(message in warning for warning in report.warnings)


def test_an_mdl_whose_next_points_to_itself_is_rejected():
    scenario, _, data = _case()
    mdl = scenario.expected["locked_mdls"][0]
    write_field(data, "_MDL", mdl, "Next", mdl)
    report = run(data)
    assert any("is not another kernel address" in reason for reason in _rejections(report, mdl))


def test_a_cyclic_mdl_chain_ends():
    scenario, _, data = _case()
    first, second = scenario.expected["locked_mdls"][:2]
    write_field(data, "_MDL", second, "Next", first)  # first -> second -> first -> ...
    report = run(data)
    assert not unsupported_suspects(data, report)


@pytest.mark.parametrize("struct_name, field", [("_IRP", "MdlAddress"), ("_IRP", "Tail.Overlay.CurrentStackLocation"),
                                                ("_IRP", "Tail.Overlay.OriginalFileObject"),
                                                ("_DEVICE_OBJECT", "DriverObject"),
                                                ("_DRIVER_OBJECT", "DriverStart")])
def test_self_pointers_in_io_objects_end_and_name_nobody_wrongly(struct_name, field):
    scenario, objects, data = _case()
    index = [i for i, (s, f, v) in enumerate(HOSTILE_FIELDS) if (s, f, v) == (struct_name, field, "self")][0]
    for number in range(len(objects[struct_name])):
        write_hostile_field(data, objects, *HOSTILE_FIELDS[index], number)
    report = run(data)
    assert not unsupported_suspects(data, report)


def test_a_chain_longer_than_the_cap_ends_with_a_warning():
    """70 valid MDLs chained by MDL.Next: the search for holders goes at most MAX_MDL_CHAIN levels."""
    scene = KernelScene("x64", 5)
    victim = scene.process("leakapp.exe")
    culprit = scene.driver("leakyflt")
    mdls = [scene.mdl(victim, 1) for _ in range(70)]
    for parent, child in zip(mdls, mdls[1:]):
        scene.write_fields("_MDL", parent, Next=child)
    scene.irp(mdls[0], [(culprit.devices[0], IRP_MJ_WRITE, 0)], 1)
    data = scene.finish(BugCheck(0x76, (0, victim, 70, 0)), "long chain")
    report = run(data)
    assert report.suspects and report.suspects[0].driver == culprit.name
    assert not unsupported_suspects(data, report)


def test_a_chained_mdl_is_held_whatever_the_allocation_order():
    """The IRP's first MDL lies below the second in memory: both are held by the IRP, neither is an
    orphan (the holders of a chain do not depend on the order the search meets its links)."""
    scene = KernelScene("x64", 3)
    victim = scene.process("leakapp.exe")
    culprit = scene.driver("leakyflt")
    first, second = scene.mdl(victim, 1), scene.mdl(victim, 2)
    scene.write_fields("_MDL", first, Next=second)
    irp = scene.irp(first, [(culprit.devices[0], IRP_MJ_WRITE, 0)], 1)
    report = run(scene.finish(BugCheck(0x76, (0, victim, 3, 0)), "chain order"))
    held = {record.address: record.irps for record in report.mdls}
    assert held == {first: [irp], second: [irp]}
    assert not any("held by no IRP" in warning for warning in report.warnings)


@pytest.mark.parametrize("dropped", ["irp", "pfn array", "driver", "device", "process"])
def test_missing_pages_cut_the_chain_without_a_false_verdict(dropped):
    scenario, objects, data = _case()
    mdl = scenario.expected["locked_mdls"][-1]
    address = {"irp": scenario.expected["irps"][0], "pfn array": mdl + 0x30,
               "driver": objects["_DRIVER_OBJECT"][0], "device": objects["_DEVICE_OBJECT"][0],
               "process": scenario.expected["process"]}[dropped]
    page = address & ~0xFFF
    data.pages.pop(page, None)
    report = run(data)
    assert not unsupported_suspects(data, report)


@pytest.mark.parametrize("name", ["leakyflt>sys", "\x00\x00\x00\x00", "\u8000\u1c00\ua58a\uffff", "leaky\nflt.sys",
                                  "a" * 300 + ".sys", "\\Driver\\leakyflt", "leakyflt"])
def test_an_implausible_ki_bugcheck_driver_names_nobody(name):
    scenario = case_0x76("x64", "orphan", noise_pages=1, ki_bugcheck_driver=name)
    report = run(scenario.data)
    assert report.suspects == []
    fact = [f for f in report.facts if f.label == "nt!KiBugCheckDriver"][0]
    assert "not a plausible" in fact.note


def test_a_plausible_ki_bugcheck_driver_still_names_its_image():
    scenario = case_0x76("x64", "orphan", noise_pages=1, ki_bugcheck_driver="nvlddmkm.sys")
    assert [s.image for s in run(scenario.data).suspects] == ["nvlddmkm.sys"]


@pytest.mark.parametrize("name", ["\x00\x00\x00\x00\x00\x00\x00\x00", "Driver\\leakyflt", "\\Driver\\\x1b[2Jflt",
                                  "\\Driver\\leak\ufffdflt"])
def test_an_implausible_driver_object_name_names_nobody(name):
    scenario, objects, data = _case()
    culprit_driver = objects["_DRIVER_OBJECT"][0]
    string = field_address(data, "_DRIVER_OBJECT", culprit_driver, "DriverName")
    buffer = SnapshotTarget(data).read_pointer(string + 8)
    encoded = name.encode("utf-16-le", "surrogatepass")
    assert len(encoded) <= 2 * len("\\Driver\\leakyflt")
    data.pages[buffer & ~0xFFF] = (data.pages[buffer & ~0xFFF][:buffer & 0xFFF] + encoded
                                   + data.pages[buffer & ~0xFFF][(buffer & 0xFFF) + len(encoded):])
    write_field(data, "_UNICODE_STRING", string, "Length", len(encoded))
    report = run(data)
    assert all(s.driver is None or s.driver.startswith("\\") and s.driver.isprintable() for s in report.suspects)
    assert scenario.expected["culprit"] not in [s.driver for s in report.suspects]
    assert not unsupported_suspects(data, report)


def test_a_driver_start_inside_another_image_does_not_name_that_image():
    scenario, objects, data = _case()
    kernel = [m for m in data.modules if m.image == "ntoskrnl.exe"][0]
    write_field(data, "_DRIVER_OBJECT", objects["_DRIVER_OBJECT"][0], "DriverStart", kernel.base + 0x1000)
    report = run(data)
    top = report.suspects[0]
    assert top.driver == scenario.expected["culprit"] and top.image is None


@pytest.mark.parametrize("process", [0, 1, 0x1000, 0xFFFFA58A1C000004, 0x00007FF612340000, 0xFFFFFFFFFFFFFFFF])
def test_a_process_parameter_that_is_not_a_kernel_object_address_is_not_searched(process):
    scenario, _, data = _case()
    data.bugcheck = BugCheck(0x76, (0, process, 3, 0))
    searched = []

    class Watching(SnapshotTarget):
        def search_pointers(self, values, pfn_range=None, progress=None):
            searched.append(sorted(values))
            return super().search_pointers(values, pfn_range, progress)

    report = analyze(Watching(data))
    assert searched == [] and report.suspects == [] and not report.complete_hunt
    assert any("not a kernel" in warning for warning in report.warnings)


def test_p1_1_with_an_invalid_mdl_blames_nobody():
    scenario, _, data = _case("x64", "unlock")
    mdl = scenario.expected["unlock_mdl"]
    write_field(data, "_MDL", mdl, "StartVa", 0xFFFFF80312345000)  # not a user buffer: not a process MDL
    report = run(data)
    assert report.suspects == []
    assert any("not a valid MDL" in warning for warning in report.warnings)


# ---- PsLoadedModuleList --------------------------------------------------------------------------

def _module_list(data):
    target = SnapshotTarget(data)
    layouts = Layouts(target)
    head = data.symbols["nt!PsLoadedModuleList"]
    links = [head]
    while True:
        following = target.read_pointer(links[-1])
        if following == head:
            return target, layouts, head, links[1:]
        links.append(following)


def test_the_module_list_walk_reads_every_module():
    _, _, data = _case()
    target, layouts, head, links = _module_list(data)
    modules, problems = walk_loaded_modules(target, head, layouts)
    assert [m.image for m in modules] == [m.image for m in data.modules] and problems == []


@pytest.mark.parametrize("loop_to", ["itself", "earlier"])
def test_a_looping_module_list_ends_with_a_reason(loop_to):
    _, _, data = _case()
    target, layouts, head, links = _module_list(data)
    write_field(data, "_LIST_ENTRY", links[3], "Flink", links[3] if loop_to == "itself" else links[1])
    modules, problems = walk_loaded_modules(SnapshotTarget(data), head, layouts)
    assert len(modules) == 4 and any("loops" in p for p in problems)


def test_an_endless_module_list_is_cut_at_the_cap():
    """Every entry's Flink points to a fresh entry further on: no cycle, but no end either."""
    scene = KernelScene("x64", 9)
    stride = 0x100
    base = scene.alloc(stride * (MAX_LOADED_MODULES + 10))
    head = scene.global_variable(scene.kernel, 0x4000, 16)  # finish() writes the real list at +0x3000
    scene.write_fields("_LIST_ENTRY", head, Flink=base)
    for index in range(MAX_LOADED_MODULES + 9):
        scene.write_fields("_LIST_ENTRY", base + index * stride, Flink=base + (index + 1) * stride)
    data = scene.finish(BugCheck(0x76, (0, 0, 0, 0)), "endless list")
    target = SnapshotTarget(data)
    modules, problems = walk_loaded_modules(target, head, Layouts(target))
    assert any(f"more than {MAX_LOADED_MODULES}" in p for p in problems)


def test_a_module_with_a_corrupt_name_is_skipped_and_the_walk_goes_on():
    _, _, data = _case()
    target, layouts, head, links = _module_list(data)
    name = field_address(data, "_KLDR_DATA_TABLE_ENTRY", links[2], "BaseDllName")
    write_field(data, "_UNICODE_STRING", name, "Length", 0x41)
    modules, problems = walk_loaded_modules(SnapshotTarget(data), head, layouts)
    assert len(modules) == len(data.modules) - 1 and any("skipped" in p for p in problems)


@pytest.mark.parametrize("field, value", [("DllBase", 0), ("DllBase", 0x1000), ("SizeOfImage", 0xFFFFFFFF)])
def test_a_module_entry_with_an_impossible_range_is_skipped(field, value):
    _, _, data = _case()
    target, layouts, head, links = _module_list(data)
    write_field(data, "_KLDR_DATA_TABLE_ENTRY", links[2], field, value)
    modules, problems = walk_loaded_modules(SnapshotTarget(data), head, layouts)
    assert len(modules) == len(data.modules) - 1 and any("skipped" in p for p in problems)


# ---- the analysis keeps what it found when corrupt data raises deep inside it -------------------

@pytest.mark.parametrize("error", [__import__("struct").error("unpack requires a buffer of 8 bytes"),
                                   UnicodeDecodeError("utf-16-le", b"\xff", 0, 1, "truncated data"),
                                   RecursionError("maximum recursion depth exceeded"),
                                   ValueError("negative shift count"), OverflowError("int too large")])
def test_an_exception_from_corrupt_data_becomes_a_warning(error):
    scenario, _, data = _case()
    calls = {"searches": 0}

    class Failing(SnapshotTarget):
        finds_object_headers = False  # the MDLs' holders in a pass of their own, as inside WinDbg

        def search_pointers(self, values, pfn_range=None, progress=None):
            calls["searches"] += 1
            if calls["searches"] == 2:  # the MDLs are found; looking for their holders fails
                raise error
            return super().search_pointers(values, pfn_range, progress)

    report = analyze(Failing(data))
    assert not report.complete_hunt and not report.partial
    assert any(type(error).__name__ in warning for warning in report.warnings)
    assert {m.address for m in report.mdls} >= set(scenario.expected["locked_mdls"])
    render_text(report)


# ---- lock tracker trees (RTL_AVL_TREE of _RTL_BALANCED_NODE) --------------------------------------

def _tree(links):
    """Nodes 0..n-1 as _RTL_BALANCED_NODEs with (left, right, parent) given as node numbers or None."""
    scene = KernelScene("x64", 4)
    nodes = [scene.alloc(0x18) for _ in links]

    def at(number):
        return 0 if number is None else nodes[number]

    for node, (left, right, parent) in zip(nodes, links):
        scene.write_fields("_RTL_BALANCED_NODE", node, Left=at(left), Right=at(right), ParentValue=at(parent))
    data = scene.finish(BugCheck(0x76, (0, 0, 0, 0)), "tree")
    target = SnapshotTarget(data)
    return target, Layouts(target), nodes


@pytest.mark.parametrize("links, why", [
    ([(0, None, None)], "reached twice"),  # a node whose Left is itself
    ([(1, None, None), (None, 0, 0)], "reached twice"),  # a child whose Right leads back to the root
    ([(1, None, None), (None, None, 0)], None),  # a well-formed tree of two
    ([(1, None, 1), (0, None, 0)], "reached twice"),  # two nodes that are each other's parent and child
    ([(1, None, None), (None, None, None)], "does not point back"),  # a child that names another parent
])
def test_a_hostile_tree_walk_ends(links, why):
    target, layouts, nodes = _tree(links)
    walk = walk_tree(target, layouts, nodes[0])
    assert len(walk.nodes) == len(set(walk.nodes)) <= len(nodes)
    if why is None:
        assert walk.problems == [] and sorted(walk.nodes) == sorted(nodes)
    else:
        assert any(why in problem for problem in walk.problems)


def test_a_degenerate_tree_longer_than_the_cap_is_cut():
    count = 40
    links = [(index + 1 if index + 1 < count else None, None, index - 1 if index else None) for index in range(count)]
    target, layouts, nodes = _tree(links)
    walk = walk_tree(target, layouts, nodes[0], limit=16)
    assert walk.truncated and any("more than 16 nodes" in problem for problem in walk.problems)


# ---- threads (the lock-entry hunts) ---------------------------------------------------------------

def test_a_thread_that_fails_its_type_check_names_no_driver():
    """0x153: P1 is the thread; overwritten, its Type is no longer ThreadObject, and the "start address"
    the garbage holds must not name the driver it happens to point into."""
    scenario = family.case_0x153("x64", "image-lock", noise_pages=1)
    data = clone(scenario.data)
    thread = data.bugcheck.parameters[0]
    helper = [m for m in data.modules if m.image == "leakyflt.sys"][0]
    write_field(data, "_ETHREAD", thread, "StartAddress", helper.base + 0x1200)  # a thread the driver created
    before = run(data)
    assert any("started at" in evidence for s in before.suspects for evidence in s.evidence)
    write_field(data, "_DISPATCHER_HEADER", thread, "Type", 0x58)
    report = run(data)
    assert not any("started at" in evidence for s in report.suspects for evidence in s.evidence)
    assert any("not a thread" in problem for problem in report.thread.problems)
