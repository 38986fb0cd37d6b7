"""What every report says about the crash, whatever the bug check, and the suspect of a bug check
leakhunt has no hunt for.

``describe_crash`` places every bug check parameter that lies in a loaded (or unloaded) image, lists
the modules, and, when the source recorded them (a small dump's triage section), the unloaded drivers,
the image the kernel blamed, the crashing thread and process, the context record's registers and the
return-address candidates of the thread's stack.

``blame_code_address`` is what ``!analyze`` calls IMAGE_NAME: the bug check catalog says which parameter
is the address of the faulting code (0x7E P2, 0xD1 P4...), and the image holding it is named. A fault
inside nt or hal names no suspect (a fact says where it was): the kernel faults on the bad data a driver
gave it far more often than through a bug of its own; the first driver on the stack scan, if any, is
named with low confidence.
"""
from __future__ import annotations

import struct
from typing import List, Optional

from ..kernel.exception import read_exception_record
from ..kernel.modules import ModuleMap
from ..kernel.system import build_lab, uptime_seconds
from ..kernel.threads import read_process_info, read_thread
from ..layouts import LayoutError
from ..ntstatus import status_text
from ..report import (HIGH, LOW, MEDIUM, ExceptionRecord, Fact, ModuleRecord, RegisterRecord, StackCandidate,
                      StackScan, ThreadRecord, UnloadedRecord)
from ..targets.base import PAGE_SIZE, CrashFacts, TargetError, UnloadedModule
from .callstack import describe_call_stack
from .common import Context

# Return-address candidates a report keeps (a 24 KiB kernel stack has at most 3072 slots).
MAX_STACK_CANDIDATES = 256
# Suspect weights: an address in the faulting code weighs like an IRP at the driver's stack location.
CODE_ADDRESS_WEIGHT = 10
STACK_WEIGHT = 1
BROKEN_DRIVER_WEIGHT = 8
BROKEN_DRIVER = "broken driver (the small dump's copy of nt!KiBugCheckDriver)"
# What can go wrong reading a source's copies (damaged or partial data): the section is left out.
READ_ERRORS = (TargetError, LayoutError, struct.error, ValueError)


def describe_crash(context: Context) -> None:
    """Fill the report's module, parameter, thread, process, register and stack sections."""
    report = context.report
    facts = context.target.crash_facts()
    unloaded = list(facts.unloaded) if facts is not None else []
    report.modules = [ModuleRecord(m.name, m.image, m.base, m.size, m.timestamp) for m in context.modules.modules]
    report.unloaded_modules = [UnloadedRecord(u.image, u.start, u.end, u.truncated) for u in unloaded]
    for parameter in report.bugcheck.parameters:
        if parameter.index in context.decoded.status_parameters:
            parameter.status = status_text(parameter.value)
            continue
        module = context.modules.find(parameter.value)
        if module is not None:
            parameter.module, parameter.symbol = module.image, context.modules.symbolize(parameter.value)
            continue
        gone = _unloaded_at(unloaded, parameter.value)
        if gone is not None:
            parameter.module, parameter.unloaded = gone.image, True
            parameter.symbol = f"{gone.image.rsplit('.', 1)[0]}+{parameter.value - gone.start:#x}"
    if report.partial:  # an interrupted hunt reads nothing more
        return
    report.build_lab = build_lab(context.target, context.symbol("nt!NtBuildLab"),
                                 context.symbol("nt!KdDebuggerDataBlock"))
    report.uptime_seconds = uptime_seconds(context.target)
    _exception(context)
    if facts is not None:
        if facts.from_triage:
            _broken_driver(context, facts)
        _thread_and_process(context, facts)
        report.registers = [RegisterRecord(name, value, _symbol(context, value)) for name, value in facts.registers]
        if facts.stack is not None:
            _stack(context, *facts.stack)
    try:
        describe_call_stack(context, dict(facts.registers) if facts is not None else {},
                            sum(facts.stack) if facts is not None and facts.stack is not None else None)
    except READ_ERRORS as error:
        report.warn(f"the crashing thread's stack could not be unwound ({error})")


def blame_code_address(context: Context) -> None:
    """Name the image that holds the parameter the catalog marks as the faulting code address."""
    decoded = context.decoded
    index = decoded.code_parameter
    if not index or not context.modules.modules:
        return
    value = context.bugcheck.parameters[index - 1]
    role = decoded.code_role
    context.report.analysis = f"faulting code address (P{index}); no hunt for this bug check"
    if value == 0:
        context.report.warn(f"P{index}, {role}, is 0: the bug check did not record the faulting code")
        return
    module = context.modules.find(value)
    facts = context.target.crash_facts()
    if module is not None and not ModuleMap.is_kernel_or_hal(module):
        context.suspects.add(None, module.image, MEDIUM, CODE_ADDRESS_WEIGHT,
                             f"P{index}, {role}, is in {module.image} ({context.modules.symbolize(value)})",
                             image_base=module.base)
    elif module is not None:
        context.report.facts.append(Fact(f"P{index} ({role})", context.modules.symbolize(value),
                                         f"inside {module.image}: a fault in the kernel is usually caused by a driver "
                                         f"that passed it bad data, so the kernel is not named as a suspect"))
        _blame_first_driver_on_stack(context)
    else:
        gone = _unloaded_at(list(facts.unloaded) if facts is not None else [], value)
        if gone is not None:
            context.suspects.add(None, gone.image, MEDIUM, CODE_ADDRESS_WEIGHT,
                                 f"P{index}, {role}, is inside {gone.start:#x}-{gone.end:#x}, where {gone.image} was "
                                 f"loaded before it was unloaded: its code ran after it unloaded")
        else:
            context.report.warn(f"P{index}, {role}, {context.address(value)}, is in no loaded or unloaded image")


# ---- the pieces ---------------------------------------------------------------------------------

def _unloaded_at(unloaded: List[UnloadedModule], address: int) -> Optional[UnloadedModule]:
    """The most recently unloaded image whose range holds ``address`` (the list is oldest first)."""
    for entry in reversed(unloaded):
        if entry.contains(address):
            return entry
    return None


def _symbol(context: Context, value: int) -> Optional[str]:
    return context.modules.symbolize(value) if context.modules.find(value) is not None else None


def _exception(context: Context) -> None:
    """The EXCEPTION_RECORD the bug check points at (0x7E P3), decoded when memory holds it, checked
    against the parameters that repeat its code and address."""
    index = context.decoded.exception_record
    if not index:
        return
    address = context.bugcheck.parameters[index - 1]
    if not context.target.is_kernel_object_address(address):
        return
    try:
        info = read_exception_record(context.target, address)
    except READ_ERRORS as error:
        context.report.warn(f"the exception record P{index} {context.address(address)} is not readable here ({error})")
        return
    for status_index in context.decoded.status_parameters:
        stated = context.bugcheck.parameters[status_index - 1] & 0xFFFFFFFF
        if stated != info.code:
            info.problems.append(f"its code {info.code:08x} is not P{status_index}'s {stated:08x}")
    code_index = context.decoded.code_parameter
    if code_index and context.bugcheck.parameters[code_index - 1] != info.exception_address:
        info.problems.append(f"its ExceptionAddress is not P{code_index}")
    context.report.exception = ExceptionRecord(
        address=address, code=info.code, code_text=info.code_text, flags=info.flags,
        exception_address=info.exception_address, exception_symbol=_symbol(context, info.exception_address),
        parameters=info.parameters, access=info.access, accessed_address=info.accessed_address,
        io_status=status_text(info.io_status) if info.io_status is not None else None, problems=info.problems)


def _broken_driver(context: Context, facts: CrashFacts) -> None:
    """The triage copy of nt!KiBugCheckDriver; it answers what a hunt could not read ("unknown")."""
    context.report.facts = [fact for fact in context.report.facts
                            if not (fact.label == "nt!KiBugCheckDriver" and fact.value == "unknown")]
    name = facts.broken_driver
    if not name:
        context.report.facts.append(Fact(BROKEN_DRIVER, "none recorded", "the kernel named no culprit driver"))
        return
    module = context.modules.by_image(name)
    if module is None:
        context.report.facts.append(Fact(BROKEN_DRIVER, name, "not a loaded image: nobody is named from it"))
        return
    context.report.facts.append(Fact(BROKEN_DRIVER, name, "the driver the kernel itself named when it crashed"))
    context.suspects.add(None, module.image, HIGH, BROKEN_DRIVER_WEIGHT,
                         f"the small dump's copy of nt!KiBugCheckDriver names {name}", image_base=module.base)


def _thread_and_process(context: Context, facts: CrashFacts) -> None:
    """The crashing thread and its process from the source's copies, unless a hunt already decoded one."""
    report = context.report
    target = context.target
    if facts.thread is not None and report.thread is None:
        try:
            info = read_thread(target, context.layouts, facts.thread)
        except READ_ERRORS as error:
            report.warn(f"the crashing thread {context.address(facts.thread)} is unreadable ({error})")
            info = None
        if info is not None:
            record = ThreadRecord(address=facts.thread, process=info.process or facts.process,
                                  process_id=info.process_id, thread_id=info.thread_id, problems=list(info.problems))
            for name in info.missing:
                what = "its process is" if name == "_KTHREAD" else "its ids and start address are"
                record.problems.append(f"the {name} layout is unknown for {target.arch} build {target.build} without "
                                       f"symbols: {what} not decoded")
            if info.start_address:
                record.start_address = info.start_address
                record.start_symbol = context.modules.symbolize(info.start_address)
                module = context.modules.find(info.start_address)
                record.start_module = module.name if module else None
            report.thread = record
    process = report.thread.process if report.thread is not None and report.thread.process else facts.process
    if report.process is not None:  # a hunt decoded the process of the bug check
        if report.thread is not None and report.thread.process == report.process:
            report.thread.process_name = report.thread.process_name or report.process_name
        return
    if process is None:
        return
    try:
        info = read_process_info(target, context.layouts, process)
    except READ_ERRORS as error:
        report.warn(f"the crashing process {context.address(process)} is unreadable ({error})")
        return
    report.process, report.process_name, report.process_id = process, info.name, info.process_id
    for problem in info.problems:
        report.warn(f"process {context.address(process)}: {problem}")
    if report.thread is not None and report.thread.process == process:
        report.thread.process_name = info.name


def _stack(context: Context, base: int, size: int) -> None:
    target = context.target
    width = target.pointer_size
    try:
        raw = target.read(base, size - size % width)
    except READ_ERRORS as error:
        context.report.warn(f"the crashing thread's stack copy is unreadable ({error})")
        return
    scan = StackScan(base, size)
    words = struct.unpack(f"<{len(raw) // width}{'Q' if width == 8 else 'I'}", raw)
    for index, value in enumerate(words):
        module = context.modules.find(value)
        if module is None or value - module.base < PAGE_SIZE:  # an image's first page is its headers, not code
            continue
        if len(scan.candidates) == MAX_STACK_CANDIDATES:
            scan.truncated = True
            break
        scan.candidates.append(StackCandidate(base + index * width, value, context.modules.symbolize(value),
                                              module.name))
    context.report.stack = scan


def _blame_first_driver_on_stack(context: Context) -> None:
    """With the faulting code in nt or hal, the first stack candidate in a driver, with low confidence."""
    scan = context.report.stack
    if scan is None:
        return
    for candidate in scan.candidates:
        module = context.modules.find(candidate.value)
        if module is not None and not ModuleMap.is_kernel_or_hal(module):
            context.suspects.add(None, module.image, LOW, STACK_WEIGHT,
                                 f"the first value inside a driver on the crashing thread's stack (a scan, not an "
                                 f"unwound stack: it may be stale) is {candidate.symbol} at "
                                 f"{context.address(candidate.slot)}", image_base=module.base)
            return
