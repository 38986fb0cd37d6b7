"""The kinds of evidence against a driver: one row each, shared by every hunt.

A kind says how strongly it ties a driver to a leaked MDL (``strength``: when the evidence about one
MDL names different drivers, the strongest kind wins), how confident a driver named by it alone is
(``confidence``; a hunt may lower it, e.g. 0x76 with P1 = 1, where the MDL was not locked), how much
one piece of it weighs in the ranking (``weight``), and how the report names it when pieces disagree
(``label``). Adding a kind of evidence is one row here and one classifier that produces it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .report import CONFIDENCE_RANK, HIGH, LOW, MEDIUM


@dataclass(frozen=True)
class EvidenceKind:
    name: str  # stable key, e.g. "device_extension"
    strength: int
    confidence: str
    weight: int
    label: str


# The saved stack of the code that locked the MDL: a lock tracker (TrackLockedPages), or legacy 0xCB's
# locking call site. The kernel's own record of who locked it: nothing outweighs it.
LOCKER_STACK = EvidenceKind("locker_stack", 4, HIGH, 25, "the saved stack of the code that locked it")
# The driver that owns the current stack location of an IRP whose MDL chain reaches the MDL.
IRP_CURRENT_LOCATION = EvidenceKind("irp_current_location", 3, HIGH, 10,
                                    "the current stack location of an IRP holding it")
# The MDL's address in a device extension: the driver of that device object keeps it.
DEVICE_EXTENSION = EvidenceKind("device_extension", 3, HIGH, 10, "a device extension holding it")
# The MDL's address in a writable data section of a driver image: a global of that driver.
DRIVER_GLOBAL = EvidenceKind("driver_global", 3, HIGH, 10, "a global variable of a driver holding it")
# The MDL's address in a pool block whose tag is a constant in one driver image only.
POOL_TAG = EvidenceKind("pool_tag", 2, MEDIUM, 5, "the tag of a pool block holding it")
# The MDL's address in a pool block whose tag names nobody, and the block's address in a driver's
# device extension, global or tagged block: one level removed from the MDL.
HOLDING_BLOCK = EvidenceKind("holding_block", 2, MEDIUM, 5,
                             "a driver's own structure pointing at the pool block holding it")
# Anything else (nt!KiBugCheckDriver, a code address of the bug check, a thread's start address...).
OTHER_EVIDENCE = EvidenceKind("other", 1, LOW, 1, "other evidence")

EVIDENCE_KINDS = (LOCKER_STACK, IRP_CURRENT_LOCATION, DEVICE_EXTENSION, DRIVER_GLOBAL, POOL_TAG, HOLDING_BLOCK,
                  OTHER_EVIDENCE)


def capped(confidence: str, highest: str) -> str:
    """``confidence``, lowered to ``highest`` when it is above it."""
    return highest if CONFIDENCE_RANK[confidence] > CONFIDENCE_RANK[highest] else confidence
