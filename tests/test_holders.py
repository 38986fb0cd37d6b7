"""What holds a leaked MDL (analyses/holders.py): each classifier alone, the decoys, the rules that never
blame an innocent driver, the one-pass join of IRPs and MDLs, and the bundled private-leak cases through
the snapshot, the dump file (with the real kernel's symbols) and the stand-in pykd.

Scenes come from mocks/scenarios_private.py, whose pool headers, device objects, VS chunk headers, big
pool entries and thread lists are laid out from the real kernel's symbols and the reference notes."""
import json
import os
import sys

import pytest

from mocks import make_snapshots
from mocks.dumpwriter import write_dump
from mocks.memory import SymbolFit
from mocks.scenarios import IRP_MJ_WRITE, case_0x76
from mocks.scenarios_family import DRIVER_DATA
from mocks.scenarios_private import PrivateScene, case_0x76_private
from pykd_ext.analyses import Options, analyze
from pykd_ext.analyses.common import Context
from pykd_ext.analyses.holders import (DEVICE_HOLDER, IMAGE_HOLDER, KERNEL_POOL_TAGS, MAX_HOLDERS_PER_VALUE,
                                       POOL_HOLDER, STACK_HOLDER, UNKNOWN_HOLDER, Holder, Holders, Places,
                                       blame_private)
from pykd_ext.cli import main
from pykd_ext.evidence import (DEVICE_EXTENSION, DRIVER_GLOBAL, EVIDENCE_KINDS, HOLDING_BLOCK, IRP_CURRENT_LOCATION,
                               LOCKER_STACK, OTHER_EVIDENCE, POOL_TAG)
from pykd_ext.kernel.images import TAG_SEARCH_CHUNK, find_tags_in_images
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.sources import open_dump
from pykd_ext.symbols.isf import IsfFile
from pykd_ext.targets.base import BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget, load_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISF_19041 = os.path.join(ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb",
                         "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
SNAPSHOTS = make_snapshots.SNAPSHOT_DIR
ARCHES = ["x64", "x86"]


def load_bundled(name):
    return load_snapshot(os.path.join(SNAPSHOTS, name))


def holders_of(report, mdl):
    return next(r for r in report.mdls if r.address == mdl).holders


def images(report):
    return [s.image for s in report.suspects]


# ---- the bundled private-leak cases ------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHES)
def test_the_bundled_private_leak_names_the_driver_that_keeps_the_mdls(arch):
    scenario = case_0x76_private(arch)
    report = analyze(SnapshotTarget(load_bundled(f"0x76-private-{arch}.snap")))
    top = report.suspects[0]
    assert (top.driver, top.image, top.confidence) == ("\\Driver\\shmdrv", "shmdrv.sys", "high")
    assert images(report) == ["shmdrv.sys"]  # the innocent drivers of the decoys are not suspects
    assert top.mdls == sorted(scenario.expected["locked_mdls"]) and top.pages == scenario.expected["locked_pages"]
    mdl1, mdl2, mdl3, mdl4 = scenario.expected["locked_mdls"]
    # Every holder kind the scene laid out, and nothing it did not (noise can add copies nobody is blamed for).
    for mdl, expected in scenario.expected["holders"].items():
        found = [h.kind for h in holders_of(report, mdl)]
        assert sorted(set(expected) - set(found)) == [], (hex(mdl), found)
        assert all(h.kind == UNKNOWN_HOLDER or h.kind in expected for h in holders_of(report, mdl))
    evidence = {mdl: {h.evidence for h in holders_of(report, mdl)} for mdl in (mdl1, mdl2, mdl3)}
    assert DEVICE_EXTENSION.name in evidence[mdl1] and DRIVER_GLOBAL.name in evidence[mdl2]
    assert POOL_TAG.name in evidence[mdl3]
    (block,) = [h for h in holders_of(report, mdl4) if h.kind == POOL_HOLDER]
    assert block.pool_tag == "ShmQ" and block.evidence is None and block.tag_images == []
    assert [(h.kind, h.evidence, h.address) for h in block.held_by if h.evidence] == \
        [(IMAGE_HOLDER, DRIVER_GLOBAL.name, scenario.expected["global"] + 8)]
    assert block.pool_finder == ("big pool table" if arch == "x64" else "pool header")
    assert [h for h in holders_of(report, mdl3) if h.kind == POOL_HOLDER][0].pool_finder == \
        ("VS chunk header and pool header" if arch == "x64" else "pool header")
    # One pass found the MDLs (and would have found their IRPs), one their holders, one the block's holders.
    assert report.searches == 3
    assert report.locked_pages_accounted == report.locked_pages_expected == scenario.expected["locked_pages"]


@pytest.mark.parametrize("arch", ARCHES)
def test_the_decoys_of_the_private_leak_name_nobody(arch):
    scenario = case_0x76_private(arch)
    report = analyze(SnapshotTarget(scenario.data))
    mdl1, mdl2 = scenario.expected["locked_mdls"][:2]
    everywhere = [h for r in report.mdls for h in r.holders] + \
        [u for r in report.mdls for h in r.holders for u in h.held_by]
    # A one-bit neighbour of MDL 1's address in an innocent driver's block is no copy of it.
    assert scenario.expected["near_miss"] not in {h.address for h in everywhere}
    # The copy on the kernel stack names nobody (x86: no thread layouts, so memory leakhunt cannot place).
    (stack,) = [h for h in holders_of(report, mdl1) if h.kind in (STACK_HOLDER, UNKNOWN_HOLDER)
                and scenario.expected["stack"][0] <= h.address < scenario.expected["stack"][1]]
    assert stack.kind == (STACK_HOLDER if arch == "x64" else UNKNOWN_HOLDER) and stack.evidence is None
    # The kernel's own tag names nobody, though the MDL is also a driver's global.
    (kernel_block,) = [h for h in holders_of(report, mdl2) if h.kind == POOL_HOLDER]
    assert kernel_block.pool_tag == "Irp " and kernel_block.evidence is None and "kernel" in kernel_block.nobody
    # The stale unlocked MDL in oldflt's tagged block: an unlocked MDL holds no pages, nothing is looked for.
    (stale,) = scenario.expected["stale_mdls"]
    assert holders_of(report, stale) == [] and "oldflt.sys" not in images(report)
    assert "innocent.sys" not in images(report)


def test_the_bundled_private_snapshots_are_rebuilt_by_the_generator():
    fresh = dict(make_snapshots.BUNDLED)
    for arch in ARCHES:
        name = f"0x76-private-{arch}.snap"
        assert name in fresh
        replayed = analyze(SnapshotTarget(load_bundled(name)))
        built = analyze(SnapshotTarget(fresh[name]().data))
        assert render_json(replayed) == render_json(built)


def test_the_dump_file_with_the_kernels_real_symbols_finds_what_the_snapshot_does(tmp_path, capsys):
    """The x64 case as a kernel dump whose kernel is the real 19041 one: its big pool table and the type
    of its entries come from that kernel's ISF file (--symbols), not from the scene."""
    symbols = IsfFile.open(ISF_19041)
    scenario = case_0x76_private("x64", fit=SymbolFit.of(symbols))
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path)
    assert main(["analyze", path, "--symbols", ISF_19041, "--format", "json"]) == 0
    from_dump = json.loads(capsys.readouterr().out)
    replayed = json.loads(render_json(analyze(SnapshotTarget(scenario.data))))
    for report in (from_dump, replayed):
        # What names the source: the dump's crash time, registers and the stack unwound from them, and the
        # names (with what --symbols gave for each module: this synthetic driver has no PE image to name).
        report["warnings"] = [w for w in report["warnings"] if w not in report["module_symbols"]]
        for key in ("source", "layouts", "symbols", "crash_time", "registers", "call_stack", "names",
                    "module_symbols"):
            del report[key]
    assert from_dump == replayed
    assert from_dump["suspects"][0]["image"] == "shmdrv.sys" and from_dump["search_passes"] == 3
    finders = {h["pool_finder"] for m in from_dump["mdls"] for h in m["holders"] if h["kind"] == "pool_block"}
    assert {"big pool table", "VS chunk header and pool header", "pool header"} <= finders


@pytest.mark.parametrize("arch", ARCHES)
def test_inside_windbg_the_same_holders_are_found_and_linked(arch):
    mocks = os.path.join(ROOT, "mocks")
    if mocks not in sys.path:
        sys.path.insert(0, mocks)
    control = pytest.importorskip("pykd._control", reason="the stand-in pykd is not available")
    pykd_target = pytest.importorskip("pykd_ext.targets.pykd_target", reason="the pykd target is not available")
    scenario = case_0x76_private(arch)
    control.load(scenario)
    try:
        through_pykd = analyze(pykd_target.PykdTarget())
    finally:
        control.unload()
    replayed = analyze(SnapshotTarget(scenario.data))
    findings = []
    for report in (through_pykd, replayed):
        result = report.as_dict()
        # (and the debugger's register context, with the stack unwound from it and their names: the
        # scene's snapshot records no context)
        for key in ("source", "layouts", "symbols", "rejected", "registers", "call_stack", "names"):
            del result[key]
        findings.append(result)
    assert findings[0] == findings[1]
    assert through_pykd.searches == 3  # !search: the process, then every MDL, then the followed block
    # !search looked for the stale unlocked MDL too (the one pass for all MDLs): its copy in oldflt's block is
    # a rejected candidate there, and nothing else differs.
    extra = [r for r in through_pykd.rejected if r not in replayed.rejected]
    (stale,) = scenario.expected["stale_mdls"]
    assert [(r.address, r.what) for r in extra] == [(scenario.expected["stale_holder"], f"holder of MDL {stale:#x}")]
    assert all(r in through_pykd.rejected for r in replayed.rejected)
    dml = render_dml(through_pykd)
    device = scenario.expected["devices"][0]
    for command in (f'<link cmd="!devobj {device:#x}">', '<link cmd="lmvm shmdrv">', '<link cmd="!pool ',
                    '<link cmd="dt nt!_MDL '):
        assert command in dml, command
    assert ('<link cmd="!thread ' in dml) == (arch == "x64")  # x86: the stack is not recognised


# ---- each classifier alone ----------------------------------------------------------------------

def scene_with_mdl(arch="x64", seed=5):
    """A scene, its dying process and one locked MDL of it (more drivers: a culprit and two innocents)."""
    scene = PrivateScene(arch, seed)
    process = scene.process("app.exe")
    drivers = {name: scene.driver_with_headers(name) for name in ("keeper", "other", "third")}
    mdl = scene.mdl(process, pages=1)
    return scene, process, drivers, mdl


def classifier(scene, process):
    """Finish the scene; return classify(address, value) -> (the holder there, its tag settled; the context)."""
    data = scene.finish_private(BugCheck(0x76, (0, process, 1, 0)), "holders")
    context = Context(SnapshotTarget(data), Options())
    places = Places(context, process)

    def classify(address, value):
        holder = places.classify(address, value, True)
        places.settle_tags([holder], follow=True)
        return holder, context

    return classify


def classify(scene, process, address, value):
    return classifier(scene, process)(address, value)


def test_a_writable_data_section_is_a_global_of_its_driver():
    scene, process, drivers, mdl = scene_with_mdl()
    where = scene.global_variable(drivers["keeper"].module, DRIVER_DATA + 0x10, 8)
    scene.write_pointer(where, mdl)
    holder, _ = classify(scene, process, where, mdl)
    assert (holder.kind, holder.evidence, holder.image, holder.section) == (IMAGE_HOLDER, DRIVER_GLOBAL, "keeper.sys",
                                                                            ".data")
    assert holder.summary == "keeper+0x3010"


def test_code_the_kernel_image_and_an_image_without_headers_name_nobody():
    scene, process, drivers, mdl = scene_with_mdl()
    in_code = drivers["other"].module.base + 0x1800  # .text
    in_kernel = scene.kernel.base + 0x5000
    headerless = scene.driver("noheaders").module  # its PE headers are not in memory
    in_headerless = scene.global_variable(headerless, DRIVER_DATA + 0x10, 8)
    for where in (in_code, in_kernel, in_headerless):
        scene.write_pointer(where, mdl)
    classify_in = classifier(scene, process)
    for where, reason in ((in_code, "a code section holds no variables"), (in_kernel, "inside the kernel"),
                          (in_headerless, "a global cannot be told from code")):
        holder, _ = classify_in(where, mdl)
        assert holder.kind == IMAGE_HOLDER and holder.evidence is None and reason in holder.nobody


@pytest.mark.parametrize("arch", ARCHES)
def test_a_device_extension_names_the_driver_of_its_device(arch):
    scene, process, drivers, mdl = scene_with_mdl(arch)
    device, extension = scene.device_with_extension(drivers["keeper"], 0x80)
    scene.write_pointer(extension + 0x40, mdl)
    holder, _ = classify(scene, process, extension + 0x40, mdl)
    assert (holder.kind, holder.evidence, holder.device, holder.driver) == (DEVICE_HOLDER, DEVICE_EXTENSION, device,
                                                                            "\\Driver\\keeper")
    assert holder.summary == "keeper devext+0x40"


def test_the_device_object_itself_and_a_device_without_a_valid_driver_are_no_extension():
    scene, process, drivers, mdl = scene_with_mdl()
    device, extension = scene.device_with_extension(drivers["keeper"], 0x80)
    inside_object = device + 0x20  # DEVICE_OBJECT.CurrentIrp: in the object, not its extension
    scene.write_pointer(inside_object, mdl)
    orphan, orphan_extension = scene.device_with_extension(drivers["other"], 0x80)
    scene.write_pointer(orphan + 0x8, 0xFFFFA58A0BAD0000)  # DriverObject: not a driver object
    scene.write_pointer(orphan_extension + 0x10, mdl)
    classify_in = classifier(scene, process)
    for where in (inside_object, orphan_extension + 0x10):
        holder, _ = classify_in(where, mdl)
        assert holder.kind == POOL_HOLDER and holder.block.tag == "Devi" and holder.evidence is None


def test_a_tag_in_one_driver_image_names_it_and_in_several_names_nobody():
    scene, process, drivers, mdl = scene_with_mdl()
    scene.code_constant(drivers["keeper"].module, "Kpr1")
    scene.code_constant(drivers["other"].module, "Shrd")
    scene.code_constant(drivers["third"].module, "Shrd")
    scene.code_constant(scene.kernel, "NtOw")
    one, shared, kernel, listed = (scene.tagged_block(0x40, tag) for tag in ("Kpr1", "Shrd", "NtOw", "MmLk"))
    results = {}
    for block in (one, shared, kernel, listed):
        scene.write_pointer(block + 0x10, mdl)
    classify_in = classifier(scene, process)
    for block in (one, shared, kernel, listed):
        holder, _ = classify_in(block + 0x10, mdl)
        results[holder.block.tag] = holder
    assert (results["Kpr1"].evidence, results["Kpr1"].image, results["Kpr1"].tag_images) == (POOL_TAG, "keeper.sys",
                                                                                           ["keeper.sys"])
    assert results["Shrd"].evidence is None and results["Shrd"].follow
    assert results["Shrd"].tag_images == ["other.sys", "third.sys"] and "no single driver" in results["Shrd"].nobody
    assert results["NtOw"].evidence is None and not results["NtOw"].follow and "ntoskrnl.exe" in results["NtOw"].nobody
    assert "MmLk" in KERNEL_POOL_TAGS and results["MmLk"].evidence is None


def test_a_free_block_holds_nothing():
    scene, process, drivers, mdl = scene_with_mdl()
    scene.code_constant(drivers["keeper"].module, "Gone")
    page = scene.alloc(0x1000, align=0x1000)
    scene.write_pool_header(page, 8, "Gone", pool_type=0)
    scene.write_pointer(page + 0x20, mdl)
    holder, _ = classify(scene, process, page + 0x20, mdl)
    assert holder.kind == POOL_HOLDER and holder.evidence is None and "free" in holder.nobody


def test_a_kernel_stack_of_the_process_names_nobody():
    scene, process, drivers, mdl = scene_with_mdl()
    limit, base = scene.thread_with_stack(process, scene.thread(process))
    scene.write_pointer(base - 0x100, mdl)
    holder, _ = classify(scene, process, base - 0x100, mdl)
    assert holder.kind == STACK_HOLDER and holder.evidence is None and holder.thread is not None


def test_a_thread_list_that_loops_is_walked_once():
    scene, process, drivers, mdl = scene_with_mdl()
    thread = scene.thread(process)
    limit, base = scene.thread_with_stack(process, thread)
    from mocks.real_layouts import thread_stack_and_list_offsets
    link = thread + thread_stack_and_list_offsets()["ThreadListEntry"]
    scene.write_pointer(link, link)  # the thread's entry points at itself: the list never comes back to its head
    scene.write_pointer(base - 0x100, mdl)
    holder, context = classify(scene, process, base - 0x100, mdl)
    assert holder.kind == STACK_HOLDER  # read before the loop was met
    assert any("loops" in warning for warning in context.report.warnings)


def test_a_driver_holding_the_head_of_an_mdl_chain_holds_the_mdls_after_it():
    scene, process, drivers, mdl = scene_with_mdl()
    head = scene.mdl(process, pages=1, next_mdl=mdl)
    device, extension = scene.device_with_extension(drivers["keeper"], 0x40)
    scene.write_pointer(extension + 0x8, head)
    report = hunt(scene, process, 2)
    (holder,) = holders_of(report, mdl)[1:]
    assert [h.kind for h in holders_of(report, mdl)] == ["mdl_chain", DEVICE_HOLDER]
    assert f"it holds MDL {head:#x}, whose Next chain reaches this one" in holder.description
    (top,) = report.suspects
    assert top.image == "keeper.sys" and sorted(top.mdls) == sorted([head, mdl])
    assert any("reached through the MDL.Next chain" in e for e in top.evidence)


# ---- one level up -------------------------------------------------------------------------------

def hunt(scene, process, pages):
    data = scene.finish_private(BugCheck(0x76, (0, process, pages, 0)), "holders")
    return analyze(SnapshotTarget(data))


def test_a_block_whose_tag_names_nobody_is_followed_to_a_device_extension():
    scene, process, drivers, mdl = scene_with_mdl()
    context_block = scene.tagged_block(0x60, "Ctx?")  # a tag no image holds
    scene.write_pointer(context_block + 0x20, mdl)
    device, extension = scene.device_with_extension(drivers["keeper"], 0x40)
    scene.write_pointer(extension + 0x8, context_block)
    report = hunt(scene, process, 1)
    (block,) = [h for h in holders_of(report, mdl) if h.kind == POOL_HOLDER]
    assert [(h.kind, h.device) for h in block.held_by] == [(DEVICE_HOLDER, device)]
    assert (report.suspects[0].image, report.suspects[0].confidence) == ("keeper.sys", HOLDING_BLOCK.confidence)
    assert "whose address is held at +0x8 in the device extension" in report.suspects[0].evidence[0]
    assert report.searches == 3


def test_blocks_that_point_at_each_other_are_followed_one_level_only():
    """A holds the MDL and B's address; B holds A's address: A is followed to B (tag in no image either),
    and B is not followed further. A block that holds its own address names nobody."""
    scene, process, drivers, mdl = scene_with_mdl()
    a, b = scene.tagged_block(0x60, "CycA"), scene.tagged_block(0x60, "CycB")
    scene.write_pointer(a + 0x10, mdl)
    scene.write_pointer(a + 0x18, b)
    scene.write_pointer(a + 0x20, a)
    scene.write_pointer(b + 0x10, a)
    report = hunt(scene, process, 1)
    (block,) = [h for h in holders_of(report, mdl) if h.kind == POOL_HOLDER]
    above = {(h.pool_tag, h.address): h for h in block.held_by}
    assert set(above) == {("CycA", a + 0x20), ("CycB", b + 0x10)}
    assert "its own address" in above[("CycA", a + 0x20)].nobody
    assert all(h.held_by == [] and h.evidence is None for h in block.held_by)
    assert report.suspects == [] and report.searches == 3


def test_a_tag_found_in_hundreds_of_images_names_no_driver():
    scene, process, drivers, mdl = scene_with_mdl()
    for number in range(200):
        scene.code_constant(scene.add_image(f"filler{number:03}.sys", 0x4000), "Many")
    block = scene.tagged_block(0x40, "Many")
    scene.write_pointer(block + 0x10, mdl)
    report = hunt(scene, process, 1)
    (holder,) = [h for h in holders_of(report, mdl) if h.kind == POOL_HOLDER]
    assert len(holder.tag_images) == 200 and holder.evidence is None and report.suspects == []


@pytest.mark.parametrize("source", ["snapshot", "dump file"])
def test_the_tag_search_reads_what_is_in_memory_and_matches_no_tag_across_a_gap(tmp_path, source):
    """A tag split over two pages that are both in memory is found, also across two reads of the search;
    one split over a gap (the page between is not in memory) is not; the bytes not in memory are counted.
    The snapshot answers by reading, the dump file from one walk of each image's tables."""
    scene, process, drivers, mdl = scene_with_mdl()
    keeper = drivers["keeper"].module
    scene.write(keeper.base + 0x5FFE, b"Sp")  # Spl1 across 0x6000, both pages written
    scene.write(keeper.base + 0x6000, b"l1")
    scene.write(keeper.base + 0x8FFE, b"Ga")  # Gap1: 0x9000 is never written, the rest at 0xA000
    scene.write(keeper.base + 0xA000, b"p1")
    kernel_chunk = scene.kernel.base + TAG_SEARCH_CHUNK  # Chnk across the search's first read of the kernel
    scene.write(kernel_chunk - 2, b"Ch")
    scene.write(kernel_chunk, b"nk")
    data = scene.finish_private(BugCheck(0x76, (0, process, 1, 0)), "tags")
    if source == "snapshot":
        target = SnapshotTarget(data)
    else:
        write_dump(data, str(tmp_path / "MEMORY.DMP"))
        target = open_dump(str(tmp_path / "MEMORY.DMP"))
    try:
        modules = [scene.kernel, keeper]
        found = find_tags_in_images(target, modules, ["Spl1", "Gap1", "Chnk"])
        assert [m.image for m in found.holders("Spl1")] == ["keeper.sys"]
        assert [m.image for m in found.holders("Chnk")] == ["ntoskrnl.exe"]
        assert found.holders("Gap1") == []
        held = {m.image: sum(1 for page in data.pages if m.base <= page < m.base + m.size) for m in modules}
        assert found.unread == {m.image: m.size - held[m.image] * 0x1000 for m in modules}
    finally:
        target.close()


def test_an_address_copied_hundreds_of_times_is_classified_up_to_the_cap():
    scene, process, drivers, mdl = scene_with_mdl()
    scene.code_constant(drivers["keeper"].module, "Copy")
    for _ in range(150):
        scene.write_pointer(scene.tagged_block(0x20, "Copy") + 0x8, mdl)
    report = hunt(scene, process, 1)
    assert len(holders_of(report, mdl)) == MAX_HOLDERS_PER_VALUE
    assert any("copied 150 times" in w for w in report.warnings)
    assert report.suspects[0].image == "keeper.sys" and len(report.suspects[0].evidence) == 1  # one tag, one claim


# ---- never blame an innocent; the evidence table ----------------------------------------------------

def test_an_mdl_an_irp_holds_is_not_looked_for_elsewhere():
    """The second pass is only for the locked MDLs no IRP holds: a copy in another driver's device extension
    of an MDL an IRP holds is never searched for, and the IRP's driver alone is named (one pass)."""
    scene, process, drivers, mdl = scene_with_mdl()
    scene.irp(mdl, [(drivers["other"].devices[0], IRP_MJ_WRITE, 0)], 1, thread=scene.thread(process))
    device, extension = scene.device_with_extension(drivers["keeper"], 0x40)
    scene.write_pointer(extension + 0x10, mdl)
    report = hunt(scene, process, 1)
    assert report.searches == 1 and images(report) == ["other.sys"]
    assert [h.kind for h in holders_of(report, mdl)] == ["irp"]


def board_with(*claims):
    """A suspect board holding (image, kind) claims about one MDL, the private ones through blame_private."""
    scene, process, drivers, mdl = scene_with_mdl()
    data = scene.finish_private(BugCheck(0x76, (0, process, 1, 0)), "board")
    context = Context(SnapshotTarget(data), Options())
    for image, kind in claims:
        if kind in (DEVICE_EXTENSION, DRIVER_GLOBAL, POOL_TAG):
            holder = Holder(DEVICE_HOLDER, 0xFFFFA58A1C0F0000, mdl, image=image, evidence=kind,
                            description=f"in {image}'s structure")
            blame_private(context, Holders(private={mdl: [holder]}), [mdl], lambda mdls: "the MDL", "high")
        else:
            context.suspects.add(None, image, None, None, f"{kind.label} names {image}", mdls=[mdl], kind=kind)
    return {s.image: s for s in context.suspects.ranked()}


def test_when_the_evidence_about_one_mdl_disagrees_the_strongest_kind_wins():
    # The same strength: an IRP's driver and a device extension's driver both drop to medium, and say so.
    ranked = board_with(("irp.sys", IRP_CURRENT_LOCATION), ("devext.sys", DEVICE_EXTENSION))
    assert {image: s.confidence for image, s in ranked.items()} == {"irp.sys": "medium", "devext.sys": "medium"}
    assert "a device extension holding it also names devext.sys" in ranked["irp.sys"].evidence[0]
    # A lock tracker's saved stack outweighs a driver's global; a pool tag is weaker than a global.
    ranked = board_with(("locker.sys", LOCKER_STACK), ("global.sys", DRIVER_GLOBAL), ("tag.sys", POOL_TAG))
    assert {image: s.confidence for image, s in ranked.items()} == {"locker.sys": "high", "global.sys": "low",
                                                                    "tag.sys": "low"}
    assert "which is stronger evidence" in ranked["global.sys"].evidence[0]


def test_the_evidence_kinds_form_one_ordered_table():
    assert len({kind.name for kind in EVIDENCE_KINDS}) == len(EVIDENCE_KINDS)
    assert LOCKER_STACK.strength > IRP_CURRENT_LOCATION.strength == DEVICE_EXTENSION.strength == \
        DRIVER_GLOBAL.strength > POOL_TAG.strength == HOLDING_BLOCK.strength > OTHER_EVIDENCE.strength
    assert (POOL_TAG.confidence, HOLDING_BLOCK.confidence) == ("medium", "medium")


def test_an_unlock_of_an_mdl_a_driver_keeps_is_medium_at_most():
    """P1 = 1: the MDL in a device extension names its driver, at the unlock hunt's medium confidence."""
    scene, process, drivers, mdl = scene_with_mdl()
    unlocked = scene.mdl(process, pages=1, locked=False)
    device, extension = scene.device_with_extension(drivers["keeper"], 0x40)
    scene.write_pointer(extension + 0x10, unlocked)
    data = scene.finish_private(BugCheck(0x76, (1, unlocked, 1, 0)), "unlock")
    report = analyze(SnapshotTarget(data))
    assert [(s.image, s.confidence) for s in report.suspects] == [("keeper.sys", "medium")]
    assert [h.kind for h in report.mdls[0].holders] == [DEVICE_HOLDER]


# ---- the one-pass join -------------------------------------------------------------------------------

def test_an_irp_whose_chain_starts_with_another_mdl_is_joined_without_a_search():
    scene, process, drivers, mdl = scene_with_mdl()
    bystander = scene.process("other.exe")
    first = scene.mdl(bystander, pages=1, next_mdl=mdl)  # the IRP's first MDL is not the process's
    irp = scene.irp(first, [(drivers["keeper"].devices[0], IRP_MJ_WRITE, 0)], 1, thread=scene.thread(process))
    report = hunt(scene, process, 1)
    record = next(r for r in report.mdls if r.address == mdl)
    assert record.irps == [irp] and record.chained_from == first and report.searches == 1
    assert report.suspects[0].image == "keeper.sys"


def test_an_irp_chain_that_loops_is_followed_a_bounded_number_of_links():
    scene, process, drivers, mdl = scene_with_mdl()
    bystander = scene.process("other.exe")
    a = scene.mdl(bystander, pages=1)
    b = scene.mdl(bystander, pages=1, next_mdl=a)
    scene.write_pointer(a, b)  # a -> b -> a: the chain never reaches the process's MDL
    scene.irp(a, [(drivers["keeper"].devices[0], IRP_MJ_WRITE, 0)], 1)
    report = hunt(scene, process, 1)
    assert report.mdls[0].irps == [] and report.suspects == []


def test_the_json_holders_have_the_documented_keys():
    report = json.loads(render_json(analyze(SnapshotTarget(load_bundled("0x76-private-x64.snap")))))
    keys = {"address", "kind", "summary", "description", "physical", "driver", "image", "evidence", "nobody", "irp",
            "parent_mdl", "device", "module", "section", "pool_block", "pool_block_size", "pool_tag", "pool_finder",
            "tag_images", "thread", "followed", "held_by"}
    holders = [h for m in report["mdls"] for h in m["holders"]]
    assert holders and all(set(h) == keys for h in holders)
    assert all("mdls" in s and "pages" in s for s in report["suspects"])
    irp_case = json.loads(render_json(analyze(SnapshotTarget(load_bundled("0x76-irp-x64.snap")))))
    chained = [m for m in irp_case["mdls"] if m["chained_from"]][0]
    assert [h["kind"] for h in chained["holders"]] == ["irp", "mdl_chain"] and chained["irps"]


def test_hundreds_of_private_mdls_make_a_readable_verdict():
    scenario = case_0x76_private("x64", leaked=200, noise_pages=4)
    report = analyze(SnapshotTarget(scenario.data))
    top = report.suspects[0]
    assert top.image == "shmdrv.sys" and len(top.mdls) == 200
    text = render_text(report)
    verdict = text[text.index("\nVERDICT\n"):text.index("\nPROCESS\n")]
    assert "200 MDL(s)" in verdict and len(verdict.splitlines()) < 40
    assert report.searches == 3


def test_the_classic_orphan_case_still_names_nobody():
    report = analyze(SnapshotTarget(case_0x76("x64", "orphan", leaked=3).data))
    assert report.suspects == [] and all(m.holders == [] for m in report.mdls)
