"""Scenario builders for the relatives of bug check 0x76: 0xCB, 0x76 with locked-page tracking, 0xD9,
0x4E, 0x153, 0x162 and 0x192, on top of ``mocks.scenarios.KernelScene``.

Every structure is written through leakhunt's layout tables (or, for the "symbols" cases, through type
information the snapshot carries as if it came from the debugger), with the decoys real memory holds:
trackers of other processes, values that look like the wanted one, pool blocks, kernel threads. Each
builder returns a ``Scenario`` whose ``expected`` dict is the truth a correct analysis must find.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from pykd_ext.kernel.images import IMAGE_DOS_SIGNATURE, IMAGE_NT_SIGNATURE, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_WRITE
from pykd_ext.kernel.lock_entries import IN_TREE_BIT, BOOST_BITS
from pykd_ext.kernel.threads import PROCESS_OBJECT, THREAD_OBJECT
from pykd_ext.layouts import KIND_SIZES, StructLayout, known_field_kind
from pykd_ext.targets.base import PAGE_SIZE, BugCheck, Module
from pykd_ext.typeinfo import FieldInfo, TypeInfo

from . import real_layouts
from .memory import SymbolFit
from .scenarios import IRP_MJ_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE, Driver, KernelScene, Scenario

# A Windows build leakhunt has no tables for: only symbols could describe its structures.
UNKNOWN_BUILD = 22621
# Where code of the kernel sits in the synthesized images (offsets inside nt / hal / drivers).
NT_FRAMES = (0x2A1F30, 0x2A0C14, 0x31B2E8)
HAL_FRAME = 0x4410
DRIVER_CODE = 0x1A30  # the driver's routine that locks pages / acquires locks
DRIVER_CALLER = 0x2200
DRIVER_DISPATCH = 0x1100
DRIVER_THREAD = 0x1500
DRIVER_DATA = 0x3000  # a global variable in the driver's .data section
NT_WORKER = 0x24C880  # a kernel worker thread routine
# x64 _LOCK_TRACKER "variant A" (windows-kernel.md §4.10): what the debugger's symbols say in the
# "symbols" cases, a layout different from every built-in table.
TRACKER_VARIANT_A = TypeInfo("_LOCK_TRACKER", 0x90, {
    "LockTrackerNode": FieldInfo(0x00, 0x18), "Mdl": FieldInfo(0x18, 8), "StartVa": FieldInfo(0x20, 8),
    "Count": FieldInfo(0x28, 8), "Offset": FieldInfo(0x30, 4), "Length": FieldInfo(0x34, 4),
    "Page": FieldInfo(0x38, 8), "StackTrace": FieldInfo(0x40, 0x40), "Who": FieldInfo(0x80, 4),
    "Process": FieldInfo(0x88, 8)})


class FamilyScene(KernelScene):
    """KernelScene plus pool headers, PE headers, lock trackers, threads and lock entries."""

    def __init__(self, arch: str, seed: int = 1, build: Optional[int] = None,
                 types: Optional[Dict[str, TypeInfo]] = None, fit: Optional[SymbolFit] = None):
        super().__init__(arch, seed, fit)
        if build is not None:
            self.build = build
        self.types: Dict[str, TypeInfo] = dict(types or {})
        self.declared_build = self.build  # the build the snapshot claims (see finish)
        self.write_pe_headers(self.kernel, code=0x200000)
        self.write_pe_headers(self.hal, code=0x40000)

    # ---- layouts: the snapshot's symbols first, as leakhunt resolves them -------------------------

    def layout(self, name: str):
        info = self.types.get(name)
        if info is None:
            return super().layout(name)
        offsets = {f: fi.offset for f, fi in info.fields.items()}
        kinds = {f: known_field_kind(name, f) or "struct" for f in info.fields}
        return StructLayout(name, info.size, offsets, kinds, "symbols", {f: fi.size for f, fi in info.fields.items()})

    def has_layout(self, name: str) -> bool:
        try:
            self.layout(name)
        except KeyError:
            return False
        return True

    # ---- pool blocks and images -----------------------------------------------------------------

    def pool_block(self, size: int, tag: str) -> int:
        """A small pool allocation with its POOL_HEADER (x64: real_layouts) in front, never crossing a page."""
        if self.pointer_size != 8:
            return self.alloc(size)
        header = real_layouts.pool_header(self.pointer_size)
        total = header.size + size
        base = self.alloc(total)
        if (base % PAGE_SIZE) + total > PAGE_SIZE:
            base = self.alloc(total, align=PAGE_SIZE)
        self.write_pool_header(base, (total + header.size - 1) // header.size, tag)
        return base + header.size

    def write_pool_header(self, address: int, block_units: int, tag: str, pool_type: int = 2,
                          previous_units: int = 0) -> None:
        """A POOL_HEADER at ``address`` (real_layouts: the real x64 kernel's bit fields, NTDIFF's x86 ones)."""
        header = real_layouts.pool_header(self.pointer_size)
        self.write(address, header.pack(block_units, pool_type, previous_units))
        self.write(address + header.tag, tag.encode("ascii"))

    def write_pe_headers(self, module: Module, code: int = 0x2000, data: int = 0x1000) -> None:
        """DOS, NT and section headers: .text at 0x1000 (code bytes), .data after it."""
        nt = 0x80
        self.write_fields("_IMAGE_DOS_HEADER", module.base, e_magic=IMAGE_DOS_SIGNATURE, e_lfanew=nt)
        optional = 0xF0 if self.pointer_size == 8 else 0xE0
        self.write_fields("_IMAGE_NT_HEADERS", module.base + nt, Signature=IMAGE_NT_SIGNATURE,
                          FileHeader__NumberOfSections=2, FileHeader__SizeOfOptionalHeader=optional)
        table = module.base + nt + self.layout("_IMAGE_NT_HEADERS").offset("OptionalHeader") + optional
        size = self.layout("_IMAGE_SECTION_HEADER").size
        text_chars = 0x60000020 | IMAGE_SCN_MEM_EXECUTE
        data_chars = 0xC0000040 | IMAGE_SCN_MEM_WRITE
        data_start = 0x1000 + ((code + 0xFFF) & ~0xFFF)
        for index, (name, rva, length, chars) in enumerate(((b".text", 0x1000, code, text_chars),
                                                           (b".data", data_start, data, data_chars))):
            self.write(table + index * size, name.ljust(8, b"\0"))
            self.write_fields("_IMAGE_SECTION_HEADER", table + index * size, Misc__VirtualSize=length,
                              VirtualAddress=rva, Characteristics=chars)

    def driver_with_headers(self, short_name: str) -> Driver:
        driver = self.driver(short_name)
        self.write_pe_headers(driver.module)
        return driver

    # ---- processes ------------------------------------------------------------------------------

    def process(self, name: str) -> int:
        address = super().process(name)
        self.write_fields("_DISPATCHER_HEADER", address, Type=PROCESS_OBJECT)
        return address

    def mdl_facts(self, mdl: int) -> Dict[str, int]:
        """StartVa, ByteCount, ByteOffset, pages and the PFN array of an MDL the scene wrote."""
        layout = self.layout("_MDL")

        def field(name):
            raw = self.read(mdl + layout.offset(name), {"ptr": self.pointer_size, "u32": 4, "i16": 2}[layout.kinds[name]])
            return int.from_bytes(raw, "little")

        size = field("Size")
        count = (size - layout.size) // self.pointer_size
        pfns = [int.from_bytes(self.read(mdl + layout.size + i * self.pointer_size, self.pointer_size), "little")
                for i in range(count)]
        offset, length = field("ByteOffset"), field("ByteCount")
        return {"start_va": field("StartVa"), "byte_count": length, "byte_offset": offset,
                "pages": (offset + length + PAGE_SIZE - 1) // PAGE_SIZE, "pfns": pfns}

    # ---- lock trackers --------------------------------------------------------------------------

    def tracker(self, process: int, mdl: int, stack: Sequence[int], who: int = 1) -> int:
        """A _LOCK_TRACKER (pool tag MmLk) for ``mdl`` with the saved ``stack``."""
        layout = self.layout("_LOCK_TRACKER")
        facts = self.mdl_facts(mdl)
        address = self.pool_block(layout.size, "MmLk")
        self.write_fields("_LOCK_TRACKER", address, Mdl=mdl, StartVa=facts["start_va"], Count=facts["pages"],
                          Offset=facts["byte_offset"], Length=facts["byte_count"], Who=who, Page=facts["pfns"][0],
                          Process=process)
        slots = layout.array_length("StackTrace", self.pointer_size)
        for index, frame in enumerate(list(stack)[:slots]):
            self.write_pointer(address + layout.offset("StackTrace") + index * self.pointer_size, frame)
        return address

    def lock_header(self, trackers: Sequence[int], pages: int) -> int:
        """A _LOCK_HEADER (pool tag MmTx) whose LockTree is a balanced tree of ``trackers``."""
        layout = self.layout("_LOCK_HEADER")
        address = self.pool_block(layout.size, "MmTx")
        node_offset = self.layout("_LOCK_TRACKER").offset("LockTrackerNode")
        nodes = sorted(t + node_offset for t in trackers)
        root = self._subtree(nodes, 0)
        self.write_fields("_LOCK_HEADER", address, LockTree=root, Count=pages, Valid=1)
        return address

    def _subtree(self, nodes: List[int], parent: int) -> int:
        if not nodes:
            return 0
        middle = len(nodes) // 2
        node = nodes[middle]
        self.write_fields("_RTL_BALANCED_NODE", node, Left=self._subtree(nodes[:middle], node),
                          Right=self._subtree(nodes[middle + 1:], node), ParentValue=parent)
        return node

    def track(self, process: int, header: int, pages: int) -> None:
        """EPROCESS.LockedPagesList and NumberOfLockedPages, where the build's layout is known."""
        if not self.has_layout("_EPROCESS"):
            return
        self.write_fields("_EPROCESS", process, LockedPagesList=header, NumberOfLockedPages=pages)

    # ---- threads and lock entries ---------------------------------------------------------------

    def kthread(self, process: int, start: int, entries: int = 3, thread_id: int = 0x1F4) -> Tuple[int, List[int]]:
        """An ETHREAD of ``process`` that started at ``start``, with room for ``entries`` lock entries.

        Returns the thread and the addresses of its lock entries (none when the build has no layout).
        """
        size = self.footprint("_ETHREAD") if self.has_layout("_ETHREAD") else 0x900
        thread = self.alloc(size)
        self.write_fields("_DISPATCHER_HEADER", thread, Type=THREAD_OBJECT)
        if not self.has_layout("_KTHREAD"):
            return thread, []
        self.write_fields("_KTHREAD", thread, ApcState__Process=process, Process=process)
        self.write_fields("_ETHREAD", thread, StartAddress=start, Win32StartAddress=start,
                          Cid__UniqueProcess=4, Cid__UniqueThread=thread_id)
        kthread, entry = self.layout("_KTHREAD"), self.layout("_KLOCK_ENTRY")
        if kthread.has("LockEntries"):
            first = thread + self.layout("_ETHREAD").offset("LockEntries")
            count = self.layout("_ETHREAD").array_length("LockEntries", entry.size)
            self.write_fields("_KTHREAD", thread, LockEntries=first)
            return thread, [first + i * entry.size for i in range(count)]
        header = self.layout("_KLOCK_ENTRIES")
        block = self.alloc(header.size + entries * entry.size)
        self.write_fields("_KLOCK_ENTRIES", block, Thread=thread, EntryCount=entries,
                          AvailableEntryBitmap=(1 << entries) - 1)
        self.write_fields("_KTHREAD", thread, KernelAbEntries=block)
        first = block + header.offset("Entries")
        return thread, [first + i * entry.size for i in range(entries)]

    def boost_bitmap(self, cpu: int, io: bool) -> int:
        """A _KLOCK_ENTRY.BoostBitmap value of this build's width with these boosts."""
        width = KIND_SIZES.get(self.layout("_KLOCK_ENTRY").kinds["BoostBitmap"], 8)
        cpu_mask, io_bit, _ = BOOST_BITS[width]
        return (cpu & cpu_mask) | (io_bit if io else 0)

    def lock_entry(self, address: int, lock: int = 0, acquired: bool = True, boosts: int = 0,
                   session: int = 1) -> None:
        """Fill a _KLOCK_ENTRY: the lock with InTree in bit 63 (clear: the entry is not in a tree)."""
        state = lock & ~IN_TREE_BIT if self.pointer_size == 8 else lock
        values = dict(LockState=state, AcquiredByte=1 if acquired else 0, BoostBitmap=boosts)
        if self.layout("_KLOCK_ENTRY").has("SessionId"):
            values["SessionId"] = session
        self.write_fields("_KLOCK_ENTRY", address, **values)

    # ---- the result -----------------------------------------------------------------------------

    def finish_family(self, bugcheck: BugCheck, description: str, ki_bugcheck_driver: str = ""):
        data = self.finish(bugcheck, description, ki_bugcheck_driver)
        data.build = self.declared_build
        for name, info in self.types.items():
            data.types["nt!" + name] = info
        return data


def frames(module: Module, *offsets: int) -> List[int]:
    return [module.base + offset for offset in offsets]


def _kernel_frames(scene: FamilyScene) -> List[int]:
    return frames(scene.kernel, *NT_FRAMES[:2])


def _locker_stack(scene: FamilyScene, driver: Driver) -> List[int]:
    """MmProbeAndLockPages' frames in nt, then the driver's, then the kernel's dispatch."""
    return _kernel_frames(scene) + frames(driver.module, DRIVER_CODE, DRIVER_CALLER) + frames(scene.kernel, NT_FRAMES[2])


def _iomgr_stack(scene: FamilyScene) -> List[int]:
    return frames(scene.kernel, *NT_FRAMES) + [scene.hal.base + HAL_FRAME]


def _common(arch: str, seed: int, build: Optional[int] = None, types: Optional[Dict[str, TypeInfo]] = None,
            fit: Optional[SymbolFit] = None):
    scene = FamilyScene(arch, seed, build, types, fit)
    victim = scene.process("leakapp.exe")
    bystander = scene.process("svchost.exe")
    culprit = scene.driver_with_headers("leakyflt")
    upper = scene.driver_with_headers("ufilter")
    innocent = scene.driver_with_headers("innocent")
    return scene, victim, bystander, culprit, upper, innocent


# ---- 0xCB and 0x76 with tracking ----------------------------------------------------------------

KINDS_0xCB = ("current", "legacy", "iomgr", "nothing", "unknown-build", "symbols")


def case_0xcb(arch: str = "x64", kind: str = "current", seed: int = 11, noise_pages: int = 8,
              fit: Optional[SymbolFit] = None) -> Scenario:
    """A process exits with pages a driver left locked, reported as 0xCB.

    kind:
      current        P1 = the tracker of P3 (P2 = 0); the process's tracker tree names leakyflt for three MDLs,
                     one held by an IRP that ufilter pends (the trackers must outweigh it)
      legacy         P1 = leakyflt's locking call, P2 = its caller; the IRP holding P3 is leakyflt's
      iomgr          P1 = leakyflt's dispatch routine, P2 = its device object (the I/O manager locked the pages)
      nothing        current format; the tracker's stack never leaves nt/hal and no IRP holds P3
      unknown-build  the current case on a build leakhunt has no tables for, without symbols: only the IRP
                     holding P3 can name the driver
      symbols        the same build with symbols describing a tracker layout unlike every built-in table;
                     P3 is private to the driver, so only the tracker names it
    ``fit`` makes the kernel the one a symbol file describes.
    """
    if kind not in KINDS_0xCB:
        raise ValueError(f"unknown 0xCB case kind {kind!r}")
    types = {"_LOCK_TRACKER": TRACKER_VARIANT_A} if kind == "symbols" else None
    build = UNKNOWN_BUILD if kind == "symbols" else None
    scene, victim, bystander, culprit, upper, innocent = _common(arch, seed, build, types, fit)
    thread = scene.thread(victim)
    expected: Dict[str, object] = {"kind": kind, "process": victim, "culprit": None, "culprit_image": None,
                                   "format": "legacy" if kind in ("legacy", "iomgr") else "current",
                                   "trackers": [], "irps": []}
    # Decoys: another process's tracked MDL locked by the innocent driver, and a stale unlocked MDL.
    other = scene.mdl(bystander, pages=2)
    other_tracker = scene.tracker(bystander, other, _locker_stack(scene, innocent)) \
        if scene.has_layout("_LOCK_TRACKER") else 0
    if other_tracker and scene.has_layout("_LOCK_HEADER"):
        scene.track(bystander, scene.lock_header([other_tracker], 2), 2)
    scene.mdl(victim, pages=1, locked=False)
    expected["decoy_trackers"] = [other_tracker] if other_tracker else []

    leaked = scene.mdl(victim, pages=2)  # P3
    leaked_irp_stack = [(culprit.devices[0], IRP_MJ_DEVICE_CONTROL, 0)]
    if kind not in ("nothing", "symbols"):
        expected["irps"].append(scene.irp(leaked, leaked_irp_stack, 1, thread=thread))
    if kind in ("legacy", "iomgr"):
        p1 = culprit.module.base + (DRIVER_CODE if kind == "legacy" else DRIVER_DISPATCH)
        p2 = culprit.module.base + DRIVER_CALLER if kind == "legacy" else culprit.devices[0]
        expected["culprit_image"] = "leakyflt.sys"
        data = _done(scene, BugCheck(0xCB, (p1, p2, leaked, 2)), f"synthesized 0xCB case '{kind}' ({arch})",
                     noise_pages)
        return Scenario(f"0xcb-{kind}-{arch}", arch, data, expected)

    stack = _iomgr_stack(scene) if kind == "nothing" else _locker_stack(scene, culprit)
    p1 = scene.tracker(victim, leaked, stack)
    trackers, pages = [p1], 2
    if kind in ("current", "unknown-build"):
        private = scene.mdl(victim, pages=1)  # kept by the driver, held by no IRP
        pended = scene.mdl(victim, pages=3)  # held by an IRP that the upper filter pends
        expected["irps"].append(scene.irp(pended, [(culprit.devices[0], IRP_MJ_READ, 0),
                                                   (upper.devices[0], IRP_MJ_READ, upper.module.base + 0x1A30)],
                                          2, thread=thread))
        trackers += [scene.tracker(victim, private, _locker_stack(scene, culprit), who=2),
                     scene.tracker(victim, pended, _locker_stack(scene, culprit), who=2)]
        pages += 4
        expected["tracked_mdls"] = sorted([leaked, private, pended])
    if scene.has_layout("_LOCK_HEADER"):
        scene.track(victim, scene.lock_header(trackers, pages), pages)
    expected["trackers"] = sorted(trackers)
    if kind != "nothing":
        expected["culprit_image"] = "leakyflt.sys"
    if kind == "unknown-build":
        scene.declared_build = UNKNOWN_BUILD
    data = _done(scene, BugCheck(0xCB, (p1, 0, leaked, 2)), f"synthesized 0xCB case '{kind}' ({arch})", noise_pages)
    return Scenario(f"0xcb-{kind}-{arch}", arch, data, expected)


def case_0x76_tracked(arch: str = "x64", via: str = "P4", seed: int = 13, noise_pages: int = 8,
                      fit: Optional[SymbolFit] = None) -> Scenario:
    """0x76 with locked-page tracking on: the trackers name leakyflt; the one IRP found is ufilter's.

    via: "P4" (the header is P4) or "eprocess" (P4 is 0; EPROCESS.LockedPagesList points to it).
    ``fit`` makes the kernel the one a symbol file describes.
    """
    scene, victim, bystander, culprit, upper, innocent = _common(arch, seed, fit=fit)
    thread = scene.thread(victim)
    mdls = [scene.mdl(victim, pages=2), scene.mdl(victim, pages=1), scene.mdl(victim, pages=3)]
    irp = scene.irp(mdls[2], [(culprit.devices[0], IRP_MJ_WRITE, 0),
                              (upper.devices[0], IRP_MJ_WRITE, upper.module.base + 0x1A30)], 2, thread=thread)
    trackers = [scene.tracker(victim, mdl, _locker_stack(scene, culprit)) for mdl in mdls]
    header = scene.lock_header(trackers, 6)
    scene.track(victim, header, 6)
    other = scene.mdl(bystander, pages=1)
    scene.track(bystander, scene.lock_header([scene.tracker(bystander, other, _locker_stack(scene, innocent))], 1), 1)
    bugcheck = BugCheck(0x76, (0, victim, 6, header if via == "P4" else 0))
    data = _done(scene, bugcheck, f"synthesized 0x76 case with locked-page tracking via {via} ({arch})", noise_pages)
    expected = {"process": victim, "culprit_image": "leakyflt.sys", "trackers": sorted(trackers),
                "tracked_mdls": sorted(mdls), "irps": [irp], "header": header,
                "source": "P4" if via == "P4" else "EPROCESS.LockedPagesList", "pages": 6}
    return Scenario(f"tracked-0x76-{via}-{arch}", arch, data, expected)


def _done(scene: FamilyScene, bugcheck: BugCheck, description: str, noise_pages: int, ki_bugcheck_driver: str = ""):
    """Pointer-rich noise after the truth, then the kernel globals: the complete snapshot data."""
    scene.noise(noise_pages)
    return scene.finish_family(bugcheck, description, ki_bugcheck_driver)


# ---- 0xD9 -----------------------------------------------------------------------------------------

KINDS_0xD9 = (1, 2, 3, 4, "nothing")


def case_0xd9(arch: str = "x64", kind=1, seed: int = 17, noise_pages: int = 8) -> Scenario:
    """The tracker of an MDL that leakyflt locks twice; the MDL is held by one of leakyflt's IRPs.

    kind: the subcode 1-4, or "nothing" (subcode 1, a stack that stays in nt/hal, an MDL no IRP holds).
    """
    if kind not in KINDS_0xD9:
        raise ValueError(f"unknown 0xD9 case kind {kind!r}")
    scene, victim, bystander, culprit, upper, innocent = _common(arch, seed)
    subcode = 1 if kind == "nothing" else kind
    mdl = scene.mdl(victim, pages=2)
    expected: Dict[str, object] = {"subcode": subcode, "process": victim, "culprit_image": None, "mdl": mdl, "irps": []}
    stack = _iomgr_stack(scene) if kind == "nothing" else _locker_stack(scene, culprit)
    first = scene.tracker(victim, mdl, stack)
    if kind != "nothing":
        expected["irps"].append(scene.irp(mdl, [(culprit.devices[0], IRP_MJ_DEVICE_CONTROL, 0)], 1,
                                          thread=scene.thread(victim)))
        expected["culprit_image"] = "leakyflt.sys"
    # A decoy: the innocent driver's tracker of another process's MDL.
    scene.tracker(bystander, scene.mdl(bystander, pages=1), _locker_stack(scene, innocent))
    if subcode == 3:
        second = scene.tracker(victim, mdl, _locker_stack(scene, culprit), who=2)
        parameters, expected["trackers"] = (3, first, second, mdl), [first, second]
    elif subcode == 4:
        parameters, expected["trackers"] = (4, first, mdl, 0), [first]
    else:
        parameters, expected["trackers"] = (subcode, first, mdl, 2), [first]
    data = _done(scene, BugCheck(0xD9, parameters), f"synthesized 0xD9 case '{kind}' ({arch})", noise_pages)
    return Scenario(f"0xd9-{kind}-{arch}", arch, data, expected)


# ---- 0x4E -----------------------------------------------------------------------------------------

KINDS_0x4E = (0x07, 0x9A, 0x99, 0x01, "nothing")


def case_0x4e(arch: str = "x64", kind=0x07, seed: int = 19, noise_pages: int = 8) -> Scenario:
    """A page frame that MDLs still list when the PFN database caught the damage.

    0x07   the page sits in slot 1 of an unlocked MDL that leakyflt's IRP still holds (unlocked twice)
    0x9A   the page sits in slot 2 of a locked MDL held by leakyflt's IRP (freed while locked for I/O)
    0x99   the page sits in slot 0 of a locked MDL held by leakyflt's IRP (a lead only: low confidence)
    0x01   a list head is corrupted: nothing to hunt
    nothing  0x07, but the MDL listing the page is held by no IRP
    Decoys everywhere: the PFN value in random blobs, behind a header that is not an MDL, and in a
    slot past the pages of a real MDL.
    """
    if kind not in KINDS_0x4E:
        raise ValueError(f"unknown 0x4E case kind {kind!r}")
    scene, victim, bystander, culprit, upper, innocent = _common(arch, seed)
    subcode = 0x07 if kind == "nothing" else kind
    slot = {0x07: 1, 0x9A: 2, 0x99: 0}.get(subcode, 0)
    locked = subcode != 0x07
    mdl = scene.mdl(victim, pages=3, locked=locked)
    pfn = scene.mdl_facts(mdl)["pfns"][slot]
    expected: Dict[str, object] = {"subcode": subcode, "pfn": pfn, "mdl": mdl, "slot": slot, "irps": [],
                                   "culprit_image": None, "hunted": subcode in (0x07, 0x9A, 0x99)}
    if kind in (0x07, 0x9A, 0x99):
        expected["irps"].append(scene.irp(mdl, [(culprit.devices[0], IRP_MJ_READ, 0)], 1, thread=scene.thread(victim)))
        expected["culprit_image"] = "leakyflt.sys"
    # Decoys: the value in blobs, an MDL-like header whose fields are impossible, and a real MDL of
    # another process whose PFN array has room for 4 pages, describes 2, and holds the value in slot 3.
    scene.pointer_decoys(pfn, count=4)
    fake = scene.alloc(0x100)
    layout = scene.layout("_MDL")
    scene.write_fields("_MDL", fake, Size=layout.size + 2 * scene.pointer_size, MdlFlags=0x2, StartVa=0x1234567,
                       ByteCount=0x2000, ByteOffset=0x10)
    scene.write_pointer(fake + layout.size + scene.pointer_size, pfn)
    spare = scene.mdl(bystander, pages=4)
    scene.write_fields("_MDL", spare, ByteCount=0x1000, ByteOffset=0)
    scene.write_pointer(spare + layout.size + 3 * scene.pointer_size, pfn)
    expected["decoy_mdls"] = [fake, spare]
    parameters = {0x07: (0x07, pfn, 1, 0), 0x9A: (0x9A, pfn, 6, 2), 0x99: (0x99, pfn, 5, 0),
                  0x01: (0x01, scene.alloc(0x10), 0x1234, 0)}[subcode]
    data = _done(scene, BugCheck(0x4E, parameters), f"synthesized 0x4E case '{kind}' ({arch})", noise_pages)
    name = kind if isinstance(kind, str) else f"{kind:02x}"
    return Scenario(f"0x4e-{name}-{arch}", arch, data, expected)


# ---- lock entries: 0x153, 0x162, 0x192 ----------------------------------------------------------

KINDS_0x153 = ("image-lock", "pool-lock", "boosts", "nothing", "unknown-build")
KINDS_0x162 = ("image-lock", "nothing", "unknown-build")
KINDS_0x192 = ("pool-lock", "nothing")


def _lock_scene(arch: str, seed: int, build: Optional[int], fit: Optional[SymbolFit] = None):
    scene = FamilyScene(arch, seed, build, fit=fit)
    system = scene.process("System")
    culprit = scene.driver_with_headers("leakyflt")
    helper = scene.driver_with_headers("helperdrv")
    global_lock = scene.global_variable(culprit.module, DRIVER_DATA + 0x40, 0x10)
    extension = scene.pool_block(0x80, "Lkfl")  # a device extension of leakyflt, holding a lock at +0x20
    pool_lock = extension + 0x20
    other = scene.pool_block(0x40, "Even")
    return scene, system, culprit, helper, global_lock, pool_lock, other


def case_0x153(arch: str = "x64", kind: str = "image-lock", build: int = 19045, seed: int = 23,
               noise_pages: int = 8, fit: Optional[SymbolFit] = None) -> Scenario:
    """A thread ends with a lock entry still in use.

    image-lock     a kernel worker thread's entry references a global lock of leakyflt (state 1)
    pool-lock      a leakyflt thread's entry references a lock in a pool block tagged Lkfl (state 1)
    boosts         a leakyflt thread's entry has no lock but still carries CPU and I/O boosts (state 4)
    nothing        a kernel worker thread's entry references a lock in a pool block (state 1)
    unknown-build  image-lock on a build leakhunt has no tables for, without symbols
    ``fit`` makes the kernel the one a symbol file describes.
    """
    if kind not in KINDS_0x153:
        raise ValueError(f"unknown 0x153 case kind {kind!r}")
    scene, system, culprit, helper, global_lock, pool_lock, other = _lock_scene(arch, seed, build, fit)
    worker = scene.kernel.base + NT_WORKER
    driver_thread = culprit.module.base + DRIVER_THREAD
    start = worker if kind in ("image-lock", "nothing", "unknown-build") else driver_thread
    thread, entries = scene.kthread(system, start)
    lock = {"image-lock": global_lock, "unknown-build": global_lock, "pool-lock": pool_lock, "nothing": other,
            "boosts": 0}[kind]
    leaked = entries[1] if entries else scene.alloc(0x60)
    if entries:
        scene.lock_entry(leaked, lock, boosts=scene.boost_bitmap(cpu=0x1, io=True) if kind == "boosts" else 0)
        scene.lock_entry(entries[2], other, acquired=False)  # another entry still waiting on a pool lock
    # A decoy: a thread of the helper driver holding the same global lock legitimately.
    helper_thread, helper_entries = scene.kthread(system, helper.module.base + DRIVER_THREAD, thread_id=0x200)
    if helper_entries:
        scene.lock_entry(helper_entries[0], global_lock)
    state = 4 if kind == "boosts" else 1
    if kind == "unknown-build":
        scene.declared_build = UNKNOWN_BUILD
    expected = {"thread": thread, "process": system, "entry": leaked, "lock": lock or None, "state": state,
                "culprit_image": None if kind in ("nothing", "unknown-build") else "leakyflt.sys",
                "confidence": "high" if kind == "image-lock" else "medium",
                "lock_location": {"image-lock": "image", "pool-lock": "pool", "nothing": "pool"}.get(kind),
                "other_entries": [entries[2]] if entries else [], "start": start}
    data = _done(scene, BugCheck(0x153, (thread, leaked, state, 0)), f"synthesized 0x153 case '{kind}' ({arch}, "
                                                                       f"build {scene.declared_build})", noise_pages)
    suffix = "" if build == 19045 else f"-{build}"
    return Scenario(f"0x153-{kind}{suffix}-{arch}", arch, data, expected)


def case_0x162(arch: str = "x64", kind: str = "image-lock", build: int = 19045, seed: int = 29,
               noise_pages: int = 8) -> Scenario:
    """A helperdrv thread releases a lock it does not own.

    image-lock     the lock is a global of leakyflt (its owner); the thread started in helperdrv
    nothing        the lock is in a pool block and the thread is a kernel worker
    unknown-build  image-lock on a build leakhunt has no tables for: the lock alone names leakyflt
    """
    if kind not in KINDS_0x162:
        raise ValueError(f"unknown 0x162 case kind {kind!r}")
    scene, system, culprit, helper, global_lock, pool_lock, other = _lock_scene(arch, seed, build)
    start = scene.kernel.base + NT_WORKER if kind == "nothing" else helper.module.base + DRIVER_THREAD
    thread, _ = scene.kthread(system, start)
    lock = other if kind == "nothing" else global_lock
    if kind == "unknown-build":
        scene.declared_build = UNKNOWN_BUILD
    expected = {"thread": thread, "lock": lock, "session": 1, "start": start,
                "culprit_image": None if kind == "nothing" else "leakyflt.sys",
                "helper_image": None if kind == "nothing" else "helperdrv.sys"}
    data = _done(scene, BugCheck(0x162, (thread, lock, 1, 0)), f"synthesized 0x162 case '{kind}' ({arch})",
                 noise_pages)
    return Scenario(f"0x162-{kind}-{arch}", arch, data, expected)


def case_0x192(arch: str = "x64", kind: str = "pool-lock", build: int = 19045, seed: int = 31,
               noise_pages: int = 8) -> Scenario:
    """A lock acquired at DISPATCH_LEVEL.

    pool-lock  a leakyflt thread acquires the lock in its device extension (pool tag Lkfl)
    nothing    a kernel worker thread acquires a lock in another pool block
    """
    if kind not in KINDS_0x192:
        raise ValueError(f"unknown 0x192 case kind {kind!r}")
    scene, system, culprit, helper, global_lock, pool_lock, other = _lock_scene(arch, seed, build)
    start = scene.kernel.base + NT_WORKER if kind == "nothing" else culprit.module.base + DRIVER_THREAD
    thread, _ = scene.kthread(system, start)
    lock = other if kind == "nothing" else pool_lock
    expected = {"thread": thread, "lock": lock, "irql": 2, "start": start,
                "culprit_image": None if kind == "nothing" else "leakyflt.sys",
                "pool_tag": "Even" if kind == "nothing" else "Lkfl"}
    data = _done(scene, BugCheck(0x192, (thread, lock, 2, 0)), f"synthesized 0x192 case '{kind}' ({arch})",
                 noise_pages)
    return Scenario(f"0x192-{kind}-{arch}", arch, data, expected)
