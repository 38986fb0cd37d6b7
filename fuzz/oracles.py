"""What must hold of any report, checked by the fuzz targets and the robustness tests.

A suspect is only named when a chain of objects that are valid in the (possibly damaged) memory
supports it; ``unsupported_suspects`` re-validates each suspect of a 0x76 report with fresh kernel views
(on a snapshot's data or on any target, e.g. a dump file).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

from pykd_ext.analyses.common import MAX_MDL_CHAIN
from pykd_ext.kernel.images import image_section
from pykd_ext.kernel.io import IoReader
from pykd_ext.kernel.mdl import read_mdl
from pykd_ext.kernel.pool import tag_before
from pykd_ext.kernel.modules import ModuleMap, plausible_image_name
from pykd_ext.kernel.threads import THREAD_OBJECT, object_type
from pykd_ext.kernel.trackers import first_frame_outside_kernel, read_tracker
from pykd_ext.layouts import LayoutError, Layouts
from pykd_ext.report import Report
from pykd_ext.session import KernelSession
from pykd_ext.targets.base import MemoryReadError, Target, TargetError
from pykd_ext.targets.snapshot import SnapshotData, SnapshotTarget


def _reaches(target, layouts, first, wanted):
    """MDL.Next from ``first`` reaches ``wanted`` (a bounded walk of its own, independent of the analysis)."""
    seen, current = set(), first
    while current and current not in seen and len(seen) < MAX_MDL_CHAIN:
        if current == wanted:
            return True
        seen.add(current)
        try:
            current = read_mdl(target, layouts, current, check_pfns=False).next
        except MemoryReadError:
            return False
    return False


def unsupported_suspects(source: Union[SnapshotData, Target], report: Report,
                         symbols: Optional[Dict[str, int]] = None) -> List[str]:
    """Labels of the suspects of a 0x76 report that nothing valid supports. A suspect is supported by:

    - a chain: a valid MDL (locked and of the process for P1=0; the P2 MDL for P1=1) reached from a
      valid IRP's MdlAddress, a used stack location of that IRP whose device is valid, and the valid,
      named DRIVER_OBJECT of that device (the suspect's driver object);
    - or the plausible image name nt!KiBugCheckDriver points to;
    - or a valid lock tracker of the report whose first saved frame outside nt and hal lies in the
      suspect's image (the kernel's own record of who locked the pages);
    - or a holder of such an MDL that names the suspect, checked again on the memory: an aligned copy
      of the MDL's address where the holder says, inside the extension of a valid device object of the
      suspect's driver object, in a writable section of the suspect's image, or in a pool block
      whose tag the suspect's image holds; or a pool block holding it whose own address is so held.
    """
    target = SnapshotTarget(source) if isinstance(source, SnapshotData) else source
    session = KernelSession(target)
    layouts = session.layouts
    try:
        modules = session.module_map()
    except TargetError:  # the analysis went on without modules; so does the check
        modules = ModuleMap([])
    reader = IoReader(target, layouts, modules)
    p1, p2 = target.bugcheck().parameters[:2]
    unsupported = []
    for suspect in report.suspects:
        if suspect.driver_object is not None:
            supported = any(_supports(target, layouts, reader, record, suspect, p1, p2) for record in report.irps)
        else:
            supported = (_named_by_the_kernel(target, symbols or {}, suspect.image)
                         or any(_tracked(target, layouts, modules, record.address, suspect.image)
                                for record in _trackers(report)))
        supported = supported or _privately_held(target, layouts, reader, modules, report, suspect, p1, p2)
        if not supported:
            unsupported.append(suspect.label)
    return unsupported


def _trackers(report):
    tracked = report.tracked_pages.trackers if report.tracked_pages is not None else []
    return list(report.trackers) + list(tracked)


def _named_by_the_kernel(target, symbols, image):
    try:
        variable = symbols.get("nt!KiBugCheckDriver") or target.symbol("nt!KiBugCheckDriver")
        name = target.read_unicode_string(target.read_pointer(variable))
    except TargetError:  # the symbol, the variable or its string is missing or corrupt
        return False
    return name == image and plausible_image_name(name)


def _tracked(target, layouts, modules, address, image):
    try:
        tracker = read_tracker(target, layouts, address)
    except (MemoryReadError, LayoutError):
        return False
    _, module = first_frame_outside_kernel(modules, tracker.stack)
    return tracker.valid and module is not None and module.image == image


def _supports(target, layouts, reader, record, suspect, p1, p2):
    try:
        irp = reader.read_irp(record.address)
    except MemoryReadError:
        return False
    if irp.problems:
        return False
    for location in irp.stack:
        device = location.device
        driver = device.driver if device else None
        if location.unused or device is None or device.problems or driver is None or driver.problems:
            continue
        if driver.address != suspect.driver_object or driver.name != suspect.driver or not driver.name:
            continue
        for held in record.holds:
            try:
                mdl = read_mdl(target, layouts, held)
            except MemoryReadError:
                continue
            if mdl.problems or not _reaches(target, layouts, irp.mdl_address, held):
                continue
            if (p1 == 0 and mdl.process == p2 and mdl.locked) or (p1 == 1 and held == p2):
                return True
    return False


def _privately_held(target, layouts, reader, modules, report, suspect, p1, p2) -> bool:
    for record in report.mdls:
        try:
            mdl = read_mdl(target, layouts, record.address)
        except MemoryReadError:
            continue
        if mdl.problems or not ((p1 == 0 and mdl.process == p2 and mdl.locked) or (p1 == 1 and record.address == p2)):
            continue
        for holder in record.holders:
            if _holds(target, layouts, reader, modules, holder, record.address, suspect, chained=True):
                return True
            inside = holder.kind == "pool_block" and holder.pool_block is not None and holder.address is not None \
                and holder.pool_block <= holder.address < holder.pool_block + (holder.pool_block_size or 0) \
                and _copy_at(target, holder.address, record.address, layouts)
            if inside and any(_holds(target, layouts, reader, modules, above, holder.pool_block, suspect)
                              for above in holder.held_by):
                return True
    return False


def _copy_at(target, address, value, layouts=None) -> bool:
    """An exact, aligned copy of ``value`` at ``address`` (with ``layouts``: or of an MDL whose Next chain
    reaches ``value``)."""
    try:
        held = target.read_pointer(address) if address % target.pointer_size == 0 else None
    except MemoryReadError:
        return False
    return held == value or (held is not None and layouts is not None and _reaches(target, layouts, held, value))


def _holds(target, layouts, reader, modules, holder, value, suspect, chained=False) -> bool:
    """Whether ``holder`` (a record of the report) really holds ``value`` (``chained``: or an MDL whose Next
    chain reaches it) in a place of the suspect's."""
    if holder.address is None or not _copy_at(target, holder.address, value, layouts if chained else None):
        return False
    if holder.kind == "device_extension" and holder.device is not None:
        device = reader.read_device(holder.device)
        if device.problems or device.driver is None or device.driver.address != suspect.driver_object:
            return False
        try:
            view = layouts.view("_DEVICE_OBJECT", holder.device)
            return view["DeviceExtension"] <= holder.address < view["DeviceObjectExtension"]
        except (MemoryReadError, LayoutError):
            return False
    module = modules.find(holder.address) if holder.kind == "image" else \
        modules.by_image(suspect.image) if holder.kind == "pool_block" and suspect.image else None
    if module is None or module.image != suspect.image or ModuleMap.is_kernel_or_hal(module):
        return False
    if holder.kind == "image":
        section = image_section(target, layouts, module, holder.address)
        return section is not None and section.writable
    if holder.pool_block is None or holder.pool_finder == "big pool table":  # big blocks: their table is symbols'
        return holder.pool_block is not None and holder.pool_tag is not None and \
            _image_holds(target, module, holder.pool_tag.encode("ascii"))
    tag = tag_before(target, layouts, holder.pool_block)
    return tag is not None and tag == holder.pool_tag and _image_holds(target, module, tag.encode("ascii"))


def _image_holds(target, module, pattern: bytes) -> bool:
    tail = b""
    for page in range(module.base, module.base + module.size, 0x1000):
        try:
            content = target.read(page, 0x1000)
        except MemoryReadError:
            tail = b""
            continue
        if pattern in tail + content:
            return True
        tail = content[-3:]
    return False


def unsupported_thread_starts(source: Union[SnapshotData, Target], report: Report) -> List[str]:
    """Labels of suspects named because the bug check's thread (P1 of the lock-entry bug checks) started
    in their image, when P1 is not a thread (its DISPATCHER_HEADER.Type is not ThreadObject)."""
    target = SnapshotTarget(source) if isinstance(source, SnapshotData) else source
    blamed = [s.label for s in report.suspects if any("(P1) started at" in e for e in s.evidence)]
    if not blamed:
        return []
    try:
        is_thread = object_type(target, Layouts(target), target.bugcheck().parameters[0]) == THREAD_OBJECT
    except (MemoryReadError, LayoutError):
        is_thread = False
    return [] if is_thread else blamed
