"""Catalog of Windows bug check codes: names, parameter meanings and documented next steps.

The locked-pages family is described in full, with one ``Variant`` per documented form:
0x76 PROCESS_HAS_LOCKED_PAGES, 0xCB DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS, 0xD9
LOCKED_PAGES_TRACKER_CORRUPTION, 0x4E PFN_LIST_CORRUPT, the AutoBoost lock-entry codes (0x153,
0x162, 0x192, 0x157, 0x152, 0x13C) and the MDL-related Driver Verifier subcodes of 0xC4. Other
common codes carry their name, a one-line summary and the generic meaning of P1..P4, so that a
report can say what a dump is even when it is not a locked-pages failure.

Everything here restates Microsoft's bug check reference (learn.microsoft.com, "Bug Check Code
Reference") in leakhunt's own words.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

_U64_MASK = (1 << 64) - 1
_MAX_CODE = 0xFFFFFFFF

# Some Windows versions report a few codes with this bit added (0x1000007E for 0x7E, 0x1000008E
# for 0x8E, ...). The "_M" codes have the same meaning and parameters as the base code.
_M_FORM_BIT = 0x10000000

_MEMORY_MANAGEMENT_KEY = (
    r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management"
)


@dataclass(frozen=True)
class Variant:
    """One documented form of a bug check, selected by P1 or (for 0xCB) by parameter format."""

    key: str
    title: str
    parameters: Tuple[str, str, str, str]
    next_steps: Tuple[str, ...] = ()


@dataclass(frozen=True)
class BugCheckEntry:
    """Catalog entry of one bug check code.

    ``selector`` says how a variant is chosen: ``"p1"`` when P1 is a subcode (variant keys are
    ``f"P1={p1:#x}"``), ``"cb_format"`` for 0xCB (keys ``"current"`` / ``"legacy"``), ``""`` when
    the code has a single form. ``code_parameter`` (1-4, 0 for none) is the parameter that the
    documentation says is the address of the faulting code, and ``code_role`` says what it is, as
    evidence reads it ("the address where the exception occurred"). ``status_parameters`` are the
    parameters the documentation says are NTSTATUS values (named through pykd_ext/ntstatus.py);
    ``exception_record`` and ``context_record`` the parameters that point at an EXCEPTION_RECORD and
    a CONTEXT (what ``.exr`` and ``.cxr`` take), 0 for none.
    """

    code: int
    name: str
    summary: str
    parameters: Tuple[str, str, str, str]
    variants: Tuple[Variant, ...] = ()
    selector: str = ""
    next_steps: Tuple[str, ...] = ()
    code_parameter: int = 0
    code_role: str = ""
    status_parameters: Tuple[int, ...] = ()
    exception_record: int = 0
    context_record: int = 0


@dataclass(frozen=True)
class DecodedParameter:
    index: int
    value: int
    meaning: str


@dataclass(frozen=True)
class DecodedBugCheck:
    code: int
    name: str
    known: bool
    summary: str
    variant: Optional[Variant]
    parameters: Tuple[DecodedParameter, ...]
    next_steps: Tuple[str, ...]
    code_parameter: int = 0  # see BugCheckEntry
    code_role: str = ""
    status_parameters: Tuple[int, ...] = ()
    exception_record: int = 0
    context_record: int = 0


TRACK_LOCKED_PAGES_STEPS: Tuple[str, ...] = (
    "Under " + _MEMORY_MANAGEMENT_KEY + " create the REG_DWORD value TrackLockedPages and set it "
    "to 1.",
    "Reboot so that the memory manager records a stack trace for every page-locking MDL.",
    "Reproduce the failure: with tracking on, the leak is raised as bug check 0xCB "
    "DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS, which names the driver on the blue screen and in "
    "KiBugCheckDriver (dx KiBugCheckDriver).",
    "Alternatively, enable Driver Verifier's Pool Tracking option on the suspected driver; it can "
    "also raise 0xCB.",
    "When the investigation is over, delete the TrackLockedPages value (delete it; do not set it "
    "to 0).",
)

_NO_MEANING = "no documented meaning"
_DEPENDS_ON_P1 = "meaning depends on P1"
_SUBCODE = "violation type (subcode that selects the meaning of P2-P4)"
_RESERVED = "reserved"
_ANALYZE = "Run !analyze -v for the debugger's own analysis of the failure."

# ---------------------------------------------------------------------------------------------
# 0x76 PROCESS_HAS_LOCKED_PAGES
# ---------------------------------------------------------------------------------------------

_BC76 = BugCheckEntry(
    code=0x76,
    name="PROCESS_HAS_LOCKED_PAGES",
    summary="A driver left pages locked in a process that is exiting, or tried to unlock process "
    "pages that were not locked.",
    parameters=(
        "subcode: 0 = pages still locked when the process exited, 1 = unlock of pages that are "
        "not locked",
        "process object (P1=0) or the MDL passed by the driver (P1=1)",
        "number of pages locked in the process",
        "lock-tracking data (driver stacks) of the process when TrackLockedPages is on, else 0",
    ),
    selector="p1",
    variants=(
        Variant(
            key="P1=0x0",
            title="The exiting process still had locked pages: a driver never unlocked memory it "
            "had locked in this process.",
            parameters=(
                "0: pages were left locked when the process exited",
                "address of the process object (EPROCESS) being torn down",
                "number of locked pages the process still has",
                "pointer to the driver stacks recorded for the process (its lock-tracking "
                "header) when TrackLockedPages is on, otherwise 0",
            ),
            next_steps=(
                "Run !search for the process address (P2) over all physical memory; the hits "
                "include the MDLs whose Process field still points at the process.",
                "Run !search for each such MDL address to find the IRP that references it; that "
                "IRP identifies the driver that leaks the locked pages.",
            )
            + TRACK_LOCKED_PAGES_STEPS,
        ),
        Variant(
            key="P1=0x1",
            title="A driver tried to unlock process pages that were not locked or were already "
            "unlocked.",
            parameters=(
                "1: unlock of process pages that are not locked",
                "address of the MDL the driver passed in",
                "current number of locked pages in that process",
                "pointer to the driver stacks recorded for that process when TrackLockedPages is "
                "on, otherwise 0",
            ),
            next_steps=(
                "Review the driver's code that locks and unlocks memory for an unlock with no "
                "matching lock, such as MmUnlockPages called twice on the same MDL.",
            ),
        ),
    ),
    next_steps=(_ANALYZE,),
)

# ---------------------------------------------------------------------------------------------
# 0xCB DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS
# ---------------------------------------------------------------------------------------------

_BCCB = BugCheckEntry(
    code=0xCB,
    name="DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS",
    summary="A driver, or the I/O manager on its behalf, left pages locked in an exiting process; "
    "this replaces 0x76 when TrackLockedPages is on or Driver Verifier Pool Tracking is active.",
    parameters=(
        "lock tracker (current format) or calling address that locked the pages (legacy format)",
        "0 (current format) or the caller of P1 / a device object (legacy format)",
        "address of the MDL holding the locked pages",
        "number of locked pages",
    ),
    selector="cb_format",
    variants=(
        Variant(
            key="current",
            title="Current format (documented since 2022): P1 points to the memory manager's lock "
            "tracker for the leaked MDL.",
            parameters=(
                "address of the lock tracker (_LOCK_TRACKER, pool tag MmLk) for the leaked MDL",
                "0 (reserved)",
                "address of the MDL holding the locked pages",
                "number of locked pages",
            ),
            next_steps=(
                "Run !lockedpages to list every MDL that still locks pages in the current "
                "process.",
            ),
        ),
        Variant(
            key="legacy",
            title="Legacy format (older documentation and Server 2003-era kernels): P1 and P2 "
            "identify the code that locked the pages.",
            parameters=(
                "calling address in the driver that locked the pages, or the dispatch routine of "
                "the top driver the IRP was sent to when the I/O manager locked them",
                "caller of that calling address, or the device object of that top driver when "
                "the I/O manager locked the pages",
                "address of the MDL holding the locked pages",
                "number of locked pages",
            ),
        ),
    ),
    next_steps=(
        _ANALYZE,
        "Run dx KiBugCheckDriver: when the responsible driver was identified, its name is stored "
        "there and shown on the blue screen.",
        "Run !search for the MDL address (P3) to find the IRP holding it: MdlAddress is at IRP+4 "
        "on x86 and IRP+8 on x64, so dump the candidate IRP start (hit minus that offset) with dd "
        "and check that its Type field is 6 (IO_TYPE_IRP).",
        "Run !irp on that IRP to see the device stack and the driver it was sent to.",
        TRACK_LOCKED_PAGES_STEPS[-1],
    ),
)

# ---------------------------------------------------------------------------------------------
# 0xD9 LOCKED_PAGES_TRACKER_CORRUPTION
# ---------------------------------------------------------------------------------------------

_BCD9 = BugCheckEntry(
    code=0xD9,
    name="LOCKED_PAGES_TRACKER_CORRUPTION",
    summary="The memory manager's locked-pages tracking data became inconsistent, for example "
    "because the same MDL was tracked twice.",
    parameters=(
        "subcode (1-4) naming the inconsistency",
        "a lock-tracking structure (depends on P1)",
        "an MDL or a lock-tracking structure (depends on P1)",
        "page count, MDL or 0 (depends on P1)",
    ),
    selector="p1",
    variants=(
        Variant(
            key="P1=0x1",
            title="The MDL is being inserted twice into the same process's tracking list.",
            parameters=(
                "1: duplicate insert into the per-process list",
                "address of the lock-tracking structure",
                "address of the MDL",
                "number of pages locked for the current process",
            ),
        ),
        Variant(
            key="P1=0x2",
            title="The MDL is being inserted twice into the system-wide tracking list.",
            parameters=(
                "2: duplicate insert into the system-wide list",
                "address of the lock-tracking structure",
                "address of the MDL",
                "number of pages locked for the current process",
            ),
        ),
        Variant(
            key="P1=0x3",
            title="When the MDL was freed it was found twice in the process's tracking list.",
            parameters=(
                "3: MDL found twice in the per-process list on free",
                "address of the first tracking structure found",
                "address of the lock-tracking structure",
                "address of the MDL",
            ),
        ),
        Variant(
            key="P1=0x4",
            title="When the MDL was freed it was still in the system-wide list, although it had "
            "already been removed.",
            parameters=(
                "4: MDL still in the system-wide list on free",
                "address of the lock-tracking structure",
                "address of the MDL",
                "0",
            ),
        ),
    ),
    next_steps=(
        "The documentation gives no resolution beyond the cause named by P1; examine the MDL "
        "(dt nt!_MDL) and the call stack (k) to find the driver that locked or freed it.",
    ),
)

# ---------------------------------------------------------------------------------------------
# 0x4E PFN_LIST_CORRUPT
# ---------------------------------------------------------------------------------------------

_BC4E = BugCheckEntry(
    code=0x4E,
    name="PFN_LIST_CORRUPT",
    summary="The page frame number (PFN) database or one of its page lists is corrupted, most "
    "often because a driver passed a bad MDL.",
    parameters=(
        _SUBCODE,
        "usually a page frame number or list entry (depends on P1)",
        _DEPENDS_ON_P1,
        _DEPENDS_ON_P1,
    ),
    selector="p1",
    variants=(
        Variant(
            key="P1=0x1",
            title="A PFN list head is corrupted.",
            parameters=(
                "0x01: list head corrupted",
                "the corrupted ListHead value",
                "number of available pages",
                "0",
            ),
        ),
        Variant(
            key="P1=0x2",
            title="An entry of a PFN list is corrupted.",
            parameters=(
                "0x02: list entry corrupted",
                "the list entry being removed",
                "highest physical page number",
                "reference count of the entry being removed",
            ),
        ),
        Variant(
            key="P1=0x6",
            title="A hardware PTE or a prototype PTE is corrupted (single-bit errors, broken DMA "
            "and the like).",
            parameters=(
                "0x06: PTE or prototype PTE corrupted",
                "page frame number (PFN)",
                "prototype PTE",
                "contents of the PTE",
            ),
            next_steps=("Suspect hardware: test the memory and look for devices doing bad DMA.",),
        ),
        Variant(
            key="P1=0x7",
            title="A driver unlocked a page more times than it locked it.",
            parameters=(
                "0x07: page unlocked more often than locked",
                "page frame number (PFN)",
                "current share count of the page",
                "0",
            ),
        ),
        Variant(
            key="P1=0x8d",
            title="The free-page list is corrupted; most likely a hardware problem.",
            parameters=(
                "0x8D: free-page list corrupted",
                "page frame number whose state is inconsistent",
                "0",
                "0",
            ),
            next_steps=("Suspect hardware first: run a memory test.",),
        ),
        Variant(
            key="P1=0x8f",
            title="The head of the free or zeroed page list is corrupted.",
            parameters=(
                "0x8F: free or zeroed page list head corrupted",
                "new page number",
                "old page number",
                "0",
            ),
        ),
        Variant(
            key="P1=0x99",
            title="A page table entry (PTE) or PFN entry is corrupted.",
            parameters=(
                "0x99: PTE or PFN corrupted",
                "page frame number (PFN)",
                "current page state",
                "0",
            ),
        ),
        Variant(
            key="P1=0x9a",
            title="A driver tried to free a page that is still locked for I/O.",
            parameters=(
                "0x9A: page freed while still locked for I/O",
                "page frame number (PFN)",
                "current page state",
                "reference count of the entry being removed",
            ),
        ),
    ),
    next_steps=(
        "Run !analyze -v, then one of the k* commands to see the call stack.",
        "Look for a driver passing a bad MDL, for example calling MmUnlockPages twice on the same "
        "MDL.",
    ),
)

# ---------------------------------------------------------------------------------------------
# AutoBoost lock entries, push locks and priority floors
# ---------------------------------------------------------------------------------------------

_LOCK_ENTRY_CODES = (
    BugCheckEntry(
        code=0x153,
        name="KERNEL_LOCK_ENTRY_LEAKED_ON_THREAD_TERMINATION",
        summary="A thread terminated before it freed all of its AutoBoost lock entries.",
        parameters=(
            "address of the thread",
            "address of the lock entry that was not freed",
            "state of the entry: 1 = lock pointer not NULL, 2 = reserved bits of the thread "
            "pointer set, 3 = thread pointer corrupted, 4 = residual I/O or CPU boosts left",
            _RESERVED,
        ),
        next_steps=(
            "Find where thread P1 acquired the lock behind entry P2 and make sure that the same "
            "thread releases it, instead of relying on another thread.",
            "Check that the thread passes a consistent set of flags to the lock APIs.",
        ),
    ),
    BugCheckEntry(
        code=0x162,
        name="KERNEL_AUTO_BOOST_INVALID_LOCK_RELEASE",
        summary="A lock tracked by AutoBoost was released by a thread that does not own it.",
        parameters=(
            "address of the releasing thread",
            "address of the lock",
            "session ID of the thread",
            _RESERVED,
        ),
        next_steps=(
            "Look for a thread releasing the lock on behalf of another thread (not allowed while "
            "AutoBoost tracks the lock) or releasing a lock it no longer owns.",
        ),
    ),
    BugCheckEntry(
        code=0x192,
        name="KERNEL_AUTO_BOOST_LOCK_ACQUISITION_WITH_RAISED_IRQL",
        summary="A lock tracked by AutoBoost was acquired at DISPATCH_LEVEL or above.",
        parameters=(
            "address of the thread",
            "address of the lock",
            "IRQL at which the lock was acquired",
            _RESERVED,
        ),
        next_steps=(
            "Acquire the lock only at APC_LEVEL or below: blocking on it at a raised IRQL can "
            "deadlock against the interrupted thread that may hold it.",
        ),
    ),
    BugCheckEntry(
        code=0x157,
        name="KERNEL_THREAD_PRIORITY_FLOOR_VIOLATION",
        summary="An illegal operation was attempted on a thread's priority floor.",
        parameters=(
            "address of the thread",
            "target priority value",
            "status: 1 = priority counter overflow, 2 = underflow, 3 = illegal target priority",
            _RESERVED,
        ),
    ),
    BugCheckEntry(
        code=0x152,
        name="INVALID_PUSH_LOCK_FLAGS",
        summary="A push-lock API was called with invalid flags.",
        parameters=("the invalid flags", "address of the push lock", _RESERVED, _RESERVED),
    ),
    BugCheckEntry(
        code=0x13C,
        name="INVALID_IO_BOOST_STATE",
        summary="A thread exited with a non-zero I/O boost state.",
        parameters=(
            "address of the thread",
            "current boost state or throttle count",
            _RESERVED,
            _RESERVED,
        ),
    ),
)

# ---------------------------------------------------------------------------------------------
# 0xC4 DRIVER_VERIFIER_DETECTED_VIOLATION (only the MDL / locked-page subcodes as variants)
# ---------------------------------------------------------------------------------------------

_BCC4 = BugCheckEntry(
    code=0xC4,
    name="DRIVER_VERIFIER_DETECTED_VIOLATION",
    summary="Driver Verifier caught a driver breaking a rule; P1 names the check that failed.",
    parameters=(_SUBCODE, _DEPENDS_ON_P1, _DEPENDS_ON_P1, _DEPENDS_ON_P1),
    selector="p1",
    variants=(
        Variant(
            key="P1=0x6f",
            title="MmProbeAndLockPages was called on physical pages that are not in the PFN "
            "database.",
            parameters=(
                "0x6F: locking pages outside the PFN database",
                "address of the MDL",
                "physical page being locked",
                "highest physical page",
            ),
        ),
        Variant(
            key="P1=0x78",
            title="MmUnlockPages was called at an IRQL above DISPATCH_LEVEL.",
            parameters=(
                "0x78: MmUnlockPages at raised IRQL",
                "current IRQL",
                "address of the MDL",
                "0",
            ),
        ),
        Variant(
            key="P1=0x7c",
            title="MmUnlockPages was passed an MDL whose pages were never locked.",
            parameters=(
                "0x7C: unlock of an MDL that was never locked",
                "address of the MDL",
                "MDL flags",
                "0",
            ),
        ),
        Variant(
            key="P1=0x7d",
            title="MmUnlockPages was passed an MDL describing nonpaged pool, which must never be "
            "unlocked.",
            parameters=(
                "0x7D: unlock of an MDL built on nonpaged pool",
                "address of the MDL",
                "MDL flags",
                "0",
            ),
        ),
        Variant(
            key="P1=0xb0",
            title="MmProbeAndLockPages was called for an MDL with wrong flags (for example one "
            "built by MmBuildMdlForNonPagedPool).",
            parameters=(
                "0xB0: MmProbeAndLockPages with wrong MDL flags",
                "address of the MDL",
                "MDL flags",
                "the incorrect flags",
            ),
        ),
        Variant(
            key="P1=0xb1",
            title="MmProbeAndLockProcessPages was called for an MDL with wrong flags.",
            parameters=(
                "0xB1: MmProbeAndLockProcessPages with wrong MDL flags",
                "address of the MDL",
                "MDL flags",
                "the incorrect flags",
            ),
        ),
        Variant(
            key="P1=0xb4",
            title="MmUnlockPages was called for a partial MDL (one built by IoBuildPartialMdl).",
            parameters=(
                "0xB4: unlock of a partial MDL",
                "address of the MDL",
                "MDL flags",
                "the unexpected partial-MDL flag",
            ),
        ),
        Variant(
            key="P1=0xb8",
            title="IoFreeMdl was called while the MDL's pages were still mapped; the driver must "
            "unmap them first.",
            parameters=(
                "0xB8: MDL freed while its pages are still mapped",
                "address of the MDL",
                "MDL flags",
                _RESERVED,
            ),
        ),
    ),
    next_steps=(
        "Run !analyze -v and !verifier; with Driver Verifier active the violating driver is "
        "usually named.",
    ),
)

# ---------------------------------------------------------------------------------------------
# Other common codes: name, summary and generic parameter meanings
# ---------------------------------------------------------------------------------------------

_COMMON_CODES = (
    BugCheckEntry(
        code=0x0A,
        name="IRQL_NOT_LESS_OR_EQUAL",
        summary="Kernel code touched an invalid or pageable address while running at a raised "
        "IRQL, usually through a bad pointer or a pageability mistake.",
        parameters=(
            "virtual address that could not be accessed",
            "IRQL at the time of the fault (2 = DISPATCH_LEVEL)",
            "operation bit field: bit 0 set = write, bit 3 set = execute",
            "instruction pointer at the time of the fault",
        ),
        next_steps=(
            "Run !pool, !pte and !address on P1 to see what memory it is; a value below 0x1000 "
            "points to a NULL dereference.",
            "Run ln on P4 to name the faulting function.",
        ),
        code_parameter=4,
        code_role="the instruction pointer at the time of the fault",
    ),
    BugCheckEntry(
        code=0x19,
        name="BAD_POOL_HEADER",
        summary="A pool header was found corrupted.",
        parameters=(_SUBCODE, _DEPENDS_ON_P1, _DEPENDS_ON_P1, _DEPENDS_ON_P1),
        next_steps=(
            "Enable Driver Verifier's Special Pool option (or special pool by tag) on suspected "
            "drivers to catch the corruption as it happens.",
        ),
    ),
    BugCheckEntry(
        code=0x1A,
        name="MEMORY_MANAGEMENT",
        summary="The memory manager detected a severe error; P1 identifies which check failed.",
        parameters=(_SUBCODE, _DEPENDS_ON_P1, _DEPENDS_ON_P1, _DEPENDS_ON_P1),
    ),
    BugCheckEntry(
        code=0x1E,
        name="KMODE_EXCEPTION_NOT_HANDLED",
        summary="A kernel-mode exception was not caught by any handler.",
        parameters=(
            "exception code that was not handled",
            "address where the exception occurred",
            "exception parameter 0",
            "exception parameter 1 (for an access violation, the address accessed)",
        ),
        next_steps=("Run ln on P2 (the exception address) to find the driver or function.",),
        code_parameter=2,
        code_role="the address where the exception occurred",
        status_parameters=(1,),
    ),
    BugCheckEntry(
        code=0x3B,
        name="SYSTEM_SERVICE_EXCEPTION",
        summary="An exception occurred while running a routine that switches from unprivileged "
        "to privileged code.",
        parameters=(
            "exception code",
            "address of the instruction that raised the exception",
            "address of the context record of the exception",
            "0",
        ),
        next_steps=("Run .cxr with P3, then kb, to see the stack of the faulting code.",),
        code_parameter=2,
        code_role="the address of the instruction that raised the exception",
        status_parameters=(1,),
        context_record=3,
    ),
    BugCheckEntry(
        code=0x50,
        name="PAGE_FAULT_IN_NONPAGED_AREA",
        summary="Invalid system memory was referenced, typically through a bad pointer or a "
        "pointer to freed memory.",
        parameters=(
            "memory address referenced",
            "access type: 0 = read, 1 = write, 2 or 8 = execute",
            "address of the instruction that referenced the memory, if known",
            "type of page fault (for example 3 = wrong session, 4 = non-canonical address)",
        ),
        next_steps=(
            "Run !address and u on P3 to find the code that made the reference.",
            "Run dx KiBugCheckDriver to see the responsible driver when it was identified.",
        ),
        code_parameter=3,
        code_role="the address of the instruction that referenced the memory",
    ),
    BugCheckEntry(
        code=0x7E,
        name="SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
        summary="A system thread raised an exception that no handler caught.",
        parameters=(
            "exception code that was not handled",
            "address where the exception occurred",
            "address of the exception record",
            "address of the context record",
        ),
        next_steps=(
            "Run .exr on P3 and .cxr on P4, then kb, to see where the exception happened.",
        ),
        code_parameter=2,
        code_role="the address where the exception occurred",
        status_parameters=(1,),
        exception_record=3,
        context_record=4,
    ),
    BugCheckEntry(
        code=0x7F,
        name="UNEXPECTED_KERNEL_MODE_TRAP",
        summary="The CPU raised a trap the kernel did not catch, such as a double fault or a "
        "trap the kernel may not handle.",
        parameters=(
            "trap number (for example 0 = divide error, 6 = invalid opcode, 8 = double fault)",
            _NO_MEANING,
            _NO_MEANING,
            _NO_MEANING,
        ),
        next_steps=(
            "For a double fault (P1 = 8) check for a kernel stack overflow: !thread for the stack "
            "limits, then kb with a large frame count.",
        ),
    ),
    BugCheckEntry(
        code=0x8E,
        name="KERNEL_MODE_EXCEPTION_NOT_HANDLED",
        summary="A kernel-mode exception was not caught by any handler.",
        parameters=(
            "exception code that was not handled",
            "address where the exception occurred",
            "address of the trap frame",
            _RESERVED,
        ),
        next_steps=("Run ln on P2 (the exception address) to find the driver or function.",),
        code_parameter=2,
        code_role="the address where the exception occurred",
        status_parameters=(1,),
    ),
    BugCheckEntry(
        code=0x9C,
        name="MACHINE_CHECK_EXCEPTION",
        summary="A fatal machine check exception occurred and was reported without WHEA (since "
        "Vista most machine checks arrive as 0x124 instead).",
        parameters=(
            "MCA bank number (low 32 bits of P5_MC_TYPE on old MCE-only x86)",
            "address of the MCA_EXCEPTION structure",
            "high 32 bits of the bank's MCi_STATUS MSR (of P5_MC_ADDR on old x86)",
            "low 32 bits of the bank's MCi_STATUS MSR (of P5_MC_ADDR on old x86)",
        ),
    ),
    BugCheckEntry(
        code=0x9F,
        name="DRIVER_POWER_STATE_FAILURE",
        summary="A driver left a power request in an inconsistent or invalid state, for example "
        "by holding a power IRP for too long.",
        parameters=(
            _SUBCODE,
            "depends on P1; for P1 = 3, the physical device object (PDO) of the stack",
            "depends on P1; for P1 = 3, nt!TRIAGE_9F_POWER (Windows 7 and later)",
            "depends on P1; for P1 = 3, the blocked IRP",
        ),
        next_steps=(
            "For P1 = 3 run !irp on P4 and !devstack on P2 to see which driver holds the power "
            "IRP.",
        ),
    ),
    BugCheckEntry(
        code=0xA0,
        name="INTERNAL_POWER_ERROR",
        summary="The power policy manager hit a fatal error.",
        parameters=(_SUBCODE, _DEPENDS_ON_P1, _DEPENDS_ON_P1, _DEPENDS_ON_P1),
    ),
    BugCheckEntry(
        code=0xC2,
        name="BAD_POOL_CALLER",
        summary="The current thread made an invalid pool request, such as a call at a bad IRQL "
        "or freeing the same block twice.",
        parameters=(_SUBCODE, _DEPENDS_ON_P1, _DEPENDS_ON_P1, _DEPENDS_ON_P1),
        next_steps=(
            "Enable Driver Verifier with its pool options on suspected drivers to catch the bad "
            "request at its source.",
        ),
    ),
    BugCheckEntry(
        code=0xC5,
        name="DRIVER_CORRUPTED_EXPOOL",
        summary="The kernel touched invalid memory at a raised IRQL, almost always because a "
        "driver corrupted the system pool.",
        parameters=(
            "memory address referenced",
            "IRQL at the time of the reference",
            "0 = read, 1 = write",
            "address of the code that referenced the memory",
        ),
        next_steps=(
            "Enable Driver Verifier's Special Pool option (or special pool by tag) to catch the "
            "driver that corrupts the pool.",
        ),
        code_parameter=4,
        code_role="the address of the code that referenced the memory",
    ),
    BugCheckEntry(
        code=0xCE,
        name="DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
        summary="A driver unloaded without cancelling its pending work such as DPCs, worker "
        "threads or lookaside lists.",
        parameters=(
            "memory address referenced",
            "0 = read, 1 = write",
            "address of the code that referenced the memory, if known",
            _RESERVED,
        ),
        code_parameter=3,
        code_role="the address of the code that referenced the memory",
    ),
    BugCheckEntry(
        code=0xD1,
        name="DRIVER_IRQL_NOT_LESS_OR_EQUAL",
        summary="A driver accessed a pageable or invalid address while the IRQL was too high.",
        parameters=(
            "memory address referenced",
            "IRQL at the time of the reference",
            "access type: 0 = read, 1 = write, 2 or 8 = execute",
            "address of the code that referenced the memory",
        ),
        next_steps=(
            "Run ln on P4 to name the function, and !pool or !pte on P1 to see what the address "
            "is.",
        ),
        code_parameter=4,
        code_role="the address of the code that referenced the memory",
    ),
    BugCheckEntry(
        code=0xD5,
        name="DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL",
        summary="Driver Verifier's special pool caught a driver touching memory it had already "
        "freed.",
        parameters=(
            "memory address referenced",
            "0 = read, 1 = write",
            "address of the code that referenced the memory, if known",
            _RESERVED,
        ),
        code_parameter=3,
        code_role="the address of the code that referenced the memory",
    ),
    BugCheckEntry(
        code=0xD6,
        name="DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION",
        summary="Driver Verifier's special pool caught a driver touching memory past the end of its "
        "allocation.",
        parameters=(
            "memory address referenced",
            "0 = read, 1 = write",
            "address of the code that referenced the memory, if known",
            _RESERVED,
        ),
        code_parameter=3,
        code_role="the address of the code that referenced the memory",
    ),
    BugCheckEntry(
        code=0xD8,
        name="DRIVER_USED_EXCESSIVE_PTES",
        summary="The system ran out of system page table entries (PTEs), usually because a "
        "driver did not clean up its mappings.",
        parameters=(
            "pointer to the name (UNICODE_STRING) of the driver using the most PTEs, or 0",
            "number of PTEs used by that driver (when P1 is not 0)",
            "total free system PTEs",
            "total system PTEs",
        ),
    ),
    BugCheckEntry(
        code=0xE2,
        name="MANUALLY_INITIATED_CRASH",
        summary="A crash dump was forced on purpose from the kernel debugger or the keyboard.",
        parameters=(_NO_MEANING, _NO_MEANING, _NO_MEANING, _NO_MEANING),
    ),
    BugCheckEntry(
        code=0xEA,
        name="THREAD_STUCK_IN_DEVICE_DRIVER",
        summary="A thread in a device driver is spinning endlessly, often waiting for hardware "
        "(typically a display driver or video card).",
        parameters=(
            "address of the stuck thread",
            "address of the DEFERRED_WATCHDOG object",
            "pointer to the name of the offending driver",
            "number of times the intercepted bug check was hit (1 on the blue screen)",
        ),
        next_steps=("Run .thread with P1, then kb, to see where the thread spins.",),
    ),
    BugCheckEntry(
        code=0xEF,
        name="CRITICAL_PROCESS_DIED",
        summary="A process or thread that Windows cannot run without has terminated.",
        parameters=(
            "the process object",
            "0 = a process died, 1 = a thread died",
            _RESERVED,
            _RESERVED,
        ),
    ),
    BugCheckEntry(
        code=0x101,
        name="CLOCK_WATCHDOG_TIMEOUT",
        summary="A secondary processor did not receive an expected clock interrupt in time, "
        "usually because it hung.",
        parameters=(
            "clock interrupt time-out interval, in nominal clock ticks",
            "0",
            "address of the PRCB of the unresponsive processor",
            "0",
        ),
    ),
    BugCheckEntry(
        code=0x124,
        name="WHEA_UNCORRECTABLE_ERROR",
        summary="A fatal hardware error was reported through the Windows Hardware Error "
        "Architecture (WHEA).",
        parameters=(
            "type of error source (for example 0 = machine check, 4 = PCI Express)",
            "address of the WHEA_ERROR_RECORD",
            "depends on P1 (for a machine check, high 32 bits of MCi_STATUS)",
            "depends on P1 (for a machine check, low 32 bits of MCi_STATUS)",
        ),
        next_steps=("Run !errrec on P2 to display the error record.",),
    ),
    BugCheckEntry(
        code=0x133,
        name="DPC_WATCHDOG_VIOLATION",
        summary="A single DPC or ISR ran too long, or a processor spent too long in total at "
        "DISPATCH_LEVEL or above.",
        parameters=(
            "0 = one DPC or ISR exceeded its time allotment, 1 = too much cumulative time at "
            "DISPATCH_LEVEL or above",
            "P1 = 0: DPC time count in ticks; P1 = 1: the watchdog period",
            "P1 = 0: DPC time allotment in ticks; otherwise reserved",
            _RESERVED,
        ),
    ),
    BugCheckEntry(
        code=0x139,
        name="KERNEL_SECURITY_CHECK_FAILURE",
        summary="The kernel detected corruption of a critical data structure, such as a broken "
        "LIST_ENTRY or an overrun stack buffer.",
        parameters=(
            "type of corruption (for example 3 = corrupted LIST_ENTRY)",
            "address of the trap frame of the exception",
            "address of the exception record",
            _RESERVED,
        ),
    ),
    BugCheckEntry(
        code=0x1C8,
        name="MANUALLY_INITIATED_POWER_BUTTON_HOLD",
        summary="The power button was held down on a system configured to bug check then, to "
        "capture a dump before a hard reset.",
        parameters=(
            "time in milliseconds the power button was held",
            "pointer to nt!_POP_POWER_BUTTON_TRIAGE_BLOCK",
            _RESERVED,
            _RESERVED,
        ),
    ),
    BugCheckEntry(
        code=0xDEADDEAD,
        name="MANUALLY_INITIATED_CRASH1",
        summary="A crash dump was forced on purpose from the kernel debugger or the keyboard.",
        parameters=(_NO_MEANING, _NO_MEANING, _NO_MEANING, _NO_MEANING),
    ),
)

_ENTRIES: Tuple[BugCheckEntry, ...] = (
    (_BC76, _BCCB, _BCD9, _BC4E) + _LOCK_ENTRY_CODES + (_BCC4,) + _COMMON_CODES
)
_BY_CODE: Dict[int, BugCheckEntry] = {entry.code: entry for entry in _ENTRIES}


def _check_code(code: int) -> int:
    code = operator.index(code)
    if code < 0 or code > _MAX_CODE:
        raise ValueError(f"bug check code {code:#x} is outside 0..0xFFFFFFFF")
    return code


def _resolve(code: int) -> Tuple[Optional[BugCheckEntry], bool]:
    """Return (entry, is_m_form). A code listed as itself wins over the "_M" reading, so
    0xDEADDEAD stays MANUALLY_INITIATED_CRASH1."""
    entry = _BY_CODE.get(code)
    if entry is not None:
        return entry, False
    if code & _M_FORM_BIT:
        entry = _BY_CODE.get(code & ~_M_FORM_BIT)
        if entry is not None:
            return entry, True
    return None, False


def _unknown_name(code: int) -> str:
    return f"UNKNOWN_BUGCHECK_0x{code:X}"


def lookup(code: int) -> Optional[BugCheckEntry]:
    """Catalog entry of ``code``, or None. An "_M" code (base code | 0x10000000) returns the
    entry of its base code. Raises ValueError for a negative code or one above 32 bits."""
    return _resolve(_check_code(code))[0]


def name_of(code: int) -> str:
    """Symbolic name of ``code``: the catalog name, with "_M" appended for the "_M" form, or
    ``UNKNOWN_BUGCHECK_0x...`` for codes the catalog does not know."""
    code = _check_code(code)
    entry, m_form = _resolve(code)
    if entry is None:
        return _unknown_name(code)
    return entry.name + "_M" if m_form else entry.name


def _select_variant(
    entry: BugCheckEntry, values: Tuple[int, ...], variant_key: Optional[str]
) -> Optional[Variant]:
    """An explicit ``variant_key`` wins when the entry has that variant; otherwise P1 picks the
    variant for "p1" entries, and for 0xCB a zero P2 means the current format (P2 is reserved
    and 0 there) while a non-zero P2 means the legacy format (caller or device object)."""
    by_key = {variant.key: variant for variant in entry.variants}
    if variant_key is not None and variant_key in by_key:
        return by_key[variant_key]
    if entry.selector == "p1":
        return by_key.get(f"P1={values[0]:#x}")
    if entry.selector == "cb_format":
        return by_key["current" if values[1] == 0 else "legacy"]
    return None


def decode(
    code: int, parameters: Sequence[int], variant_key: Optional[str] = None
) -> DecodedBugCheck:
    """Describe a bug check and its four parameters.

    ``parameters`` must hold exactly P1..P4; each is masked to 64 bits, so sign-extended or
    negative values read from a debugger are accepted. ``variant_key`` forces a variant (for
    0xCB, "current" or "legacy") when the entry has it; otherwise the variant is chosen from the
    parameters. Raises ValueError for a code outside 0..0xFFFFFFFF or a parameter count other
    than four.
    """
    code = _check_code(code)
    values = tuple(operator.index(value) & _U64_MASK for value in parameters)
    if len(values) != 4:
        raise ValueError(f"a bug check has 4 parameters, got {len(values)}")

    entry, m_form = _resolve(code)
    if entry is None:
        return DecodedBugCheck(
            code=code,
            name=_unknown_name(code),
            known=False,
            summary=f"Bug check 0x{code:X} is not in leakhunt's catalog; check Microsoft's bug "
            "check code reference for its meaning.",
            variant=None,
            parameters=tuple(
                DecodedParameter(
                    index,
                    value,
                    f"parameter {index} (no documented meaning in leakhunt's catalog)",
                )
                for index, value in enumerate(values, start=1)
            ),
            next_steps=(
                f"Run !analyze -show {code:#x} in WinDbg, or look the code up in Microsoft's "
                "bug check code reference.",
            ),
        )

    variant = _select_variant(entry, values, variant_key)
    if variant is not None:
        meanings = variant.parameters
        steps = variant.next_steps + entry.next_steps
    else:
        meanings = entry.parameters
        steps = entry.next_steps
        if entry.selector == "p1":
            meanings = (f"subcode {values[0]:#x} (not documented)",) + meanings[1:]

    summary = entry.summary
    if m_form:
        summary += (
            f" Reported as 0x{code:X}, the \"_M\" form of 0x{entry.code:X}: same meaning and "
            "parameters."
        )
    return DecodedBugCheck(
        code=entry.code,
        name=entry.name + "_M" if m_form else entry.name,
        known=True,
        summary=summary,
        variant=variant,
        parameters=tuple(
            DecodedParameter(index, value, meaning)
            for index, (value, meaning) in enumerate(zip(values, meanings), start=1)
        ),
        next_steps=steps,
        code_parameter=entry.code_parameter,
        code_role=entry.code_role,
        status_parameters=entry.status_parameters,
        exception_record=entry.exception_record,
        context_record=entry.context_record,
    )
