"""What must hold of any report, checked by the fuzz targets and the robustness tests.

A suspect is only named when a chain of objects that are valid in the (possibly damaged) memory
supports it; ``unsupported_suspects`` re-validates each one with fresh kernel views.
"""
from __future__ import annotations

from typing import List

from pykd_ext.analyses.common import MAX_MDL_CHAIN
from pykd_ext.kernel.io import IoReader
from pykd_ext.kernel.mdl import read_mdl
from pykd_ext.kernel.modules import ModuleMap, plausible_image_name
from pykd_ext.layouts import Layouts
from pykd_ext.report import Report
from pykd_ext.targets.base import CorruptString, MemoryReadError
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


def unsupported_suspects(data: SnapshotData, report: Report) -> List[str]:
    """Labels of suspects that no valid chain supports: MDL valid (locked, of the process, for P1=0; the
    P2 MDL for P1=1) -> reached from a valid IRP's MdlAddress -> a used stack location whose device is
    valid -> a valid, named DRIVER_OBJECT. A suspect without a driver object must be the plausible image
    name that nt!KiBugCheckDriver points to."""
    target = SnapshotTarget(data)
    layouts = Layouts(target)
    reader = IoReader(target, layouts, ModuleMap(target.modules()))
    p1, p2 = data.bugcheck.parameters[:2]
    unsupported = []
    for suspect in report.suspects:
        if suspect.driver_object is None:
            try:
                name = target.read_unicode_string(target.read_pointer(data.symbols["nt!KiBugCheckDriver"]))
            except (KeyError, MemoryReadError, CorruptString):
                name = None
            if name != suspect.image or not plausible_image_name(name):
                unsupported.append(suspect.label)
            continue
        if not any(_supports(target, layouts, reader, record, suspect, p1, p2) for record in report.irps):
            unsupported.append(suspect.label)
    return unsupported


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
