"""The fields of ``!analyze -v``'s summary that people and pipelines key on, for every report.

``SYMBOL_NAME`` (``amdppm!WriteIoMemRawEx+70``), ``MODULE_NAME``, ``IMAGE_NAME``, ``IMAGE_VERSION`` and a
failure bucket in the spirit of ``FAILURE_BUCKET_ID`` (``AV_amdppm!WriteIoMemRawEx``; ``0x76_leakyflt.sys``
for the hunts; ``unknown_function`` where no symbol file named the code), from one followup place:

- for a bug check whose parameters name the faulting code (0x7E P2...): that address, unless it lies in
  nt or hal (the kernel faults on what a driver gave it far more often than through a bug of its own);
  then the first frame of the unwound stack outside nt and hal, as ``!analyze`` takes its followup frame;
- for a hunt that names a driver: the most likely suspect's image (and the code that locked the pages,
  where a lock tracker's saved stack gives it);
- else nothing is followed up, and the bucket says so.
"""
from __future__ import annotations

from typing import Optional

from ..kernel.modules import ModuleMap
from ..ntstatus import STATUS_ACCESS_VIOLATION
from ..report import AnalyzeSummary
from ..targets.base import Module, SymbolicAddress, TargetError
from .common import Context


def summarize(context: Context) -> None:
    """Fill ``report.summary`` (after the suspects are ranked)."""
    report = context.report
    code = context.decoded.code
    prefix = f"0x{code:X}_"
    exception_code = report.exception.code if report.exception is not None else None
    if exception_code is None and context.decoded.status_parameters:
        exception_code = context.bugcheck.parameters[context.decoded.status_parameters[0] - 1] & 0xFFFFFFFF
    if exception_code == STATUS_ACCESS_VIOLATION:
        prefix = "AV_"
    place = _code_place(context)
    if place is not None:
        named, followup = place
        module = context.modules.find(named.address)
        function = named.function or "unknown_function"
        offset = f"+{named.offset:x}" if named.offset else ""
        report.summary = AnalyzeSummary(
            symbol_name=f"{named.module}!{named.function}{offset}" if named.function else f"{named.module}{offset}",
            module_name=named.module, image_name=module.image if module else None,
            image_version=_version(context, module), failure_bucket=f"{prefix}{named.module}!{function}",
            followup=followup)
        return
    if report.suspects:
        top = report.suspects[0]
        image = top.image or (top.driver or "").rsplit("\\", 1)[-1] or "unknown_image"
        module = context.modules.by_image(top.image) if top.image else None
        locker = _locker_frame(context, module)
        report.summary = AnalyzeSummary(
            symbol_name=locker, module_name=module.name if module else None, image_name=top.image,
            image_version=_version(context, module), failure_bucket=f"0x{code:X}_{image}",
            followup=f"the most likely suspect, {top.label}")
        return
    report.summary = AnalyzeSummary(failure_bucket=f"0x{code:X}_NO_FOLLOWUP",
                                    followup="nothing: no code address outside nt and hal, and no suspect")


def _code_place(context: Context) -> Optional[tuple]:
    """(the followup code address named, how it was chosen), or None."""
    index = context.decoded.code_parameter
    if not index:
        return None
    value = context.bugcheck.parameters[index - 1]
    module = context.modules.find(value)
    if module is not None and not ModuleMap.is_kernel_or_hal(module):
        return context.modules.describe(value), f"P{index}, {context.decoded.code_role}"
    stack = context.report.call_stack
    if module is not None and stack is not None:
        for frame in stack.frames:
            holder = context.modules.find(frame.ip)
            if holder is not None and not ModuleMap.is_kernel_or_hal(holder):
                return (context.modules.describe(frame.ip),
                        f"frame {frame.number:02x} of the unwound stack, the first outside nt and hal (P{index} is "
                        f"in {module.name})")
    return None


def _locker_frame(context: Context, module: Optional[Module]) -> Optional[str]:
    """The suspect's frame on a lock tracker's saved stack (the code that locked the pages), as
    !analyze writes a SYMBOL_NAME, or None."""
    if module is None:
        return None
    for tracker in context.report.trackers + (context.report.tracked_pages.trackers
                                              if context.report.tracked_pages is not None else []):
        for frame in tracker.stack:
            if module.contains(frame.address):
                named: SymbolicAddress = context.modules.describe(frame.address)
                if named.function:
                    return f"{named.module}!{named.function}" + (f"+{named.offset:x}" if named.offset else "")
    return None


def _version(context: Context, module: Optional[Module]) -> Optional[str]:
    """The image's file version (its version resource), where the image is at hand."""
    if module is None:
        return None
    try:
        return context.session.image_version(module)
    except TargetError:
        return None
