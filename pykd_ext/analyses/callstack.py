"""The crashing thread's call stack as ``k`` shows it, unwound from the images' own unwind data.

Where the unwind starts: the context a bug check hands over for the code that faulted (``.cxr`` on
0x7E's P4, 0x3B's P3: the frames of that code, which is what people want to see), else the crashing
processor's context the source recorded (a small dump's, a dump header's). The images come through the
kernel session (``KernelSession.image_view``: a recording's, the image in memory, or the image file on
the symbol path); the stack through the target. The unwind stops at the first frame it cannot unwind
and says why there; the values in images further up the stack are then listed as a scan, labelled as
one. Nothing is made up: every frame is one the unwind data (or an ARM64 frame record) gives.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from ..kernel.modules import ModuleMap
from ..layouts import LayoutError
from ..report import CallFrame, CallStack, RegisterRecord, StackCandidate
from ..targets.base import MemoryReadError, Module, TargetError
from ..unwind import ImageView, scan_below, unwind
from .common import Context

# The architectures the unwinder knows.
UNWOUND_ARCHITECTURES = ("x64", "arm64")
MAX_FRAMES = 64
# Where the scan below the last frame ends when the thread's stack end is not known: a kernel stack's size.
KERNEL_STACK_BYTES = 0x6000
MAX_SCAN_ENTRIES = 32


def context_record(context: Context) -> Optional[Tuple[int, int, Dict[str, int]]]:
    """(parameter index, address, registers) of the CONTEXT record a bug check parameter points at
    (.cxr), decoded when memory holds it, else None (a warning says why)."""
    index = context.decoded.context_record
    layout = context.target.architecture.context
    if not index or layout is None:
        return None
    address = context.bugcheck.parameters[index - 1]
    if not context.target.is_kernel_object_address(address):
        return None
    try:
        raw = context.target.read(address, layout.size)
    except (MemoryReadError, TargetError) as error:
        context.report.warn(f"the context record P{index} {context.address(address)} is not readable here ({error})")
        return None
    return index, address, dict(layout.read(raw))


def describe_call_stack(context: Context, crash_registers: Dict[str, int],
                        stack_end: Optional[int] = None) -> None:
    """Unwind the crashing thread: from the exception's context when the bug check gives one, else from
    ``crash_registers`` (the crashing processor's, when the source recorded them)."""
    report = context.report
    arch = context.target.architecture
    if arch.name not in UNWOUND_ARCHITECTURES or arch.context is None:
        return
    record = context_record(context)
    if record is not None:
        index, address, registers = record
        report.context_record_address = address
        report.context_record = [RegisterRecord(name, registers[name], _symbol(context.modules, registers[name]))
                                 for name in arch.context.shown]
        start = f"the exception's context, .cxr {context.address(address)} (P{index})"
    elif crash_registers:
        registers = crash_registers
        start = "the crashing processor's context"
    else:
        return
    if not registers.get(arch.context.program_counter) or not registers.get(arch.context.stack_pointer):
        return
    modules = context.modules

    def images(address: int) -> Optional[ImageView]:
        module = modules.find(address)
        return context.session.image_view(module) if module is not None else None

    result = unwind(arch.name, registers, context.target.read, images, max_frames=MAX_FRAMES)
    stack = CallStack(start=start, context_address=record[1] if record else None)
    for frame in result.frames:
        module = modules.find(frame.ip)
        stack.frames.append(CallFrame(frame.number, frame.child_sp, frame.ip, frame.return_address,
                                      modules.symbolize(frame.ip), module.name if module else None, frame.method,
                                      _trap_frame(context, module, frame.machine_frame)))
    first_trap = next((frame.trap_frame for frame in stack.frames if frame.trap_frame is not None), None)
    if first_trap is not None:
        _decode_trap_frame(context, first_trap)
    stack.stop_reason, stack.stop = result.stop.reason, result.stop.message
    stack.complete = result.complete
    if not result.complete:
        end = stack_end if stack_end and stack_end > result.last_sp else result.last_sp + KERNEL_STACK_BYTES
        for entry in scan_below(result, context.target.read, images, end, MAX_SCAN_ENTRIES):
            module = modules.find(entry.value)
            stack.scan.append(StackCandidate(entry.stack_address, entry.value, modules.symbolize(entry.value),
                                             module.name if module else entry.image))
    report.call_stack = stack


def _trap_frame(context: Context, module: Optional[Module], machine_frame: Optional[int]) -> Optional[int]:
    """The KTRAP_FRAME around the machine frame an x64 kernel trap handler's unwind popped: the machine
    frame is the trap frame's Rip..SegSs, so the trap frame starts Rip's offset below it. Only for a
    handler in nt or hal (whose handlers build one) and with the _KTRAP_FRAME layout (the kernel's
    symbols); else None, and the frame shows the machine frame's return only."""
    if machine_frame is None or module is None or not ModuleMap.is_kernel_or_hal(module):
        return None
    layout = context.layouts.find("_KTRAP_FRAME")
    if layout is None or not layout.has("Rip"):
        return None
    return machine_frame - layout.offset("Rip")


# The registers of a trap frame as .trap shows them (x64: the volatile ones and the machine frame).
TRAP_FRAME_REGISTERS = (("rip", "Rip"), ("rsp", "Rsp"), ("rbp", "Rbp"), ("rax", "Rax"), ("rcx", "Rcx"),
                        ("rdx", "Rdx"), ("r8", "R8"), ("r9", "R9"), ("r10", "R10"), ("r11", "R11"),
                        ("eflags", "EFlags"))


def _decode_trap_frame(context: Context, address: int) -> None:
    """The registers a trap frame holds, named where they point into an image (.trap)."""
    layout = context.layouts.get("_KTRAP_FRAME")
    try:
        view = context.layouts.view("_KTRAP_FRAME", address)
        values = [(name, view[field]) for name, field in TRAP_FRAME_REGISTERS if layout.has(field)]
    except (MemoryReadError, LayoutError) as error:
        context.report.warn(f"the trap frame {context.address(address)} is not readable here ({error})")
        return
    context.report.trap_frame_address = address
    context.report.trap_frame = [RegisterRecord(name, value, _symbol(context.modules, value)) for name, value in values]


def _symbol(modules: ModuleMap, value: int) -> Optional[str]:
    return modules.symbolize(value) if modules.find(value) is not None else None
