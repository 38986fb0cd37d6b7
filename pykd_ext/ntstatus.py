"""NTSTATUS values, named as ntstatus.h names them, with the words ``.exr`` shows (one table, one place).

A bug check parameter that is an NTSTATUS (0x7E P1...), an exception record's code and any status a
report decodes are named through ``status_name``; a value not in the table keeps its hex alone (with
its severity and facility said, so that a customer code is recognisable as one). The values are those
of the Windows SDK's ntstatus.h (MS-ERREF 2.3.1 lists them); the short descriptions are the words a
debugger prints beside an exception code.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional


class Status(NamedTuple):
    name: str  # "STATUS_ACCESS_VIOLATION"
    words: str  # "Access violation", as .exr prints it


STATUS_ACCESS_VIOLATION = 0xC0000005

NTSTATUS: Dict[int, Status] = {
    0x00000000: Status("STATUS_SUCCESS", "The operation completed successfully"),
    0x000000C0: Status("STATUS_USER_APC", "A user-mode APC was delivered"),
    0x00000100: Status("STATUS_KERNEL_APC", "A kernel-mode APC was delivered"),
    0x00000101: Status("STATUS_ALERTED", "The wait was alerted"),
    0x00000102: Status("STATUS_TIMEOUT", "The wait timed out"),
    0x00000103: Status("STATUS_PENDING", "The operation is pending"),
    0x80000001: Status("STATUS_GUARD_PAGE_VIOLATION", "Guard page violation"),
    0x80000002: Status("STATUS_DATATYPE_MISALIGNMENT", "Data misaligned"),
    0x80000003: Status("STATUS_BREAKPOINT", "Break instruction exception"),
    0x80000004: Status("STATUS_SINGLE_STEP", "Single step exception"),
    0x80000005: Status("STATUS_BUFFER_OVERFLOW", "Buffer overflow: the data was too large for the buffer"),
    0xC0000001: Status("STATUS_UNSUCCESSFUL", "Operation unsuccessful"),
    0xC0000002: Status("STATUS_NOT_IMPLEMENTED", "Not implemented"),
    STATUS_ACCESS_VIOLATION: Status("STATUS_ACCESS_VIOLATION", "Access violation"),
    0xC0000006: Status("STATUS_IN_PAGE_ERROR", "In-page I/O error"),
    0xC0000008: Status("STATUS_INVALID_HANDLE", "Invalid handle"),
    0xC000000D: Status("STATUS_INVALID_PARAMETER", "Invalid parameter"),
    0xC000000E: Status("STATUS_NO_SUCH_DEVICE", "No such device"),
    0xC0000010: Status("STATUS_INVALID_DEVICE_REQUEST", "Invalid device request"),
    0xC0000017: Status("STATUS_NO_MEMORY", "Not enough virtual memory or paging file quota"),
    0xC000001D: Status("STATUS_ILLEGAL_INSTRUCTION", "Illegal instruction"),
    0xC0000022: Status("STATUS_ACCESS_DENIED", "Access denied"),
    0xC0000023: Status("STATUS_BUFFER_TOO_SMALL", "Buffer too small"),
    0xC0000025: Status("STATUS_NONCONTINUABLE_EXCEPTION", "Non-continuable exception"),
    0xC0000026: Status("STATUS_INVALID_DISPOSITION", "Invalid exception disposition"),
    0xC0000034: Status("STATUS_OBJECT_NAME_NOT_FOUND", "Object name not found"),
    0xC000004B: Status("STATUS_THREAD_IS_TERMINATING", "The thread is terminating"),
    0xC000007F: Status("STATUS_DISK_FULL", "The disk is full"),
    0xC000008C: Status("STATUS_ARRAY_BOUNDS_EXCEEDED", "Array bounds exceeded"),
    0xC000008D: Status("STATUS_FLOAT_DENORMAL_OPERAND", "Floating-point denormal operand"),
    0xC000008E: Status("STATUS_FLOAT_DIVIDE_BY_ZERO", "Floating-point division by zero"),
    0xC000008F: Status("STATUS_FLOAT_INEXACT_RESULT", "Floating-point inexact result"),
    0xC0000090: Status("STATUS_FLOAT_INVALID_OPERATION", "Floating-point invalid operation"),
    0xC0000091: Status("STATUS_FLOAT_OVERFLOW", "Floating-point overflow"),
    0xC0000092: Status("STATUS_FLOAT_STACK_CHECK", "Floating-point stack check"),
    0xC0000093: Status("STATUS_FLOAT_UNDERFLOW", "Floating-point underflow"),
    0xC0000094: Status("STATUS_INTEGER_DIVIDE_BY_ZERO", "Integer division by zero"),
    0xC0000095: Status("STATUS_INTEGER_OVERFLOW", "Integer overflow"),
    0xC0000096: Status("STATUS_PRIVILEGED_INSTRUCTION", "Privileged instruction"),
    0xC000009A: Status("STATUS_INSUFFICIENT_RESOURCES", "Insufficient system resources"),
    0xC000009C: Status("STATUS_DEVICE_DATA_ERROR", "Device data error"),
    0xC000009D: Status("STATUS_DEVICE_NOT_CONNECTED", "Device not connected"),
    0xC00000BB: Status("STATUS_NOT_SUPPORTED", "Not supported"),
    0xC00000E8: Status("STATUS_INVALID_USER_BUFFER", "Invalid user buffer"),
    0xC00000FD: Status("STATUS_STACK_OVERFLOW", "Stack overflow"),
    0xC000010A: Status("STATUS_PROCESS_IS_TERMINATING", "The process is terminating"),
    0xC0000120: Status("STATUS_CANCELLED", "The I/O request was cancelled"),
    0xC0000141: Status("STATUS_INVALID_ADDRESS", "Invalid address"),
    0xC0000183: Status("STATUS_DRIVER_INTERNAL_ERROR", "Driver internal error"),
    0xC0000185: Status("STATUS_IO_DEVICE_ERROR", "I/O device error"),
    0xC0000194: Status("STATUS_POSSIBLE_DEADLOCK", "Possible deadlock"),
    0xC0000374: Status("STATUS_HEAP_CORRUPTION", "Heap corruption"),
    0xC0000409: Status("STATUS_STACK_BUFFER_OVERRUN", "Security check failure or stack buffer overrun"),
    0xC0000417: Status("STATUS_INVALID_CRUNTIME_PARAMETER", "Invalid C runtime parameter"),
    0xC0000420: Status("STATUS_ASSERTION_FAILURE", "Assertion failure"),
}

_SEVERITIES = ("success", "informational", "warning", "error")


def status_of(value: int) -> Optional[Status]:
    """The table's entry for ``value`` (as a 32-bit NTSTATUS: a sign-extended parameter such as
    0xffffffffc0000005 is c0000005), or None."""
    return NTSTATUS.get(value & 0xFFFFFFFF) if value >> 32 in (0, 0xFFFFFFFF) else None


def status_text(value: int) -> str:
    """``c0000005 STATUS_ACCESS_VIOLATION`` for a known status; for another, its hex with its severity,
    facility and whether a customer (not Microsoft) defined it: ``e0434352 (error, customer-defined)``."""
    status = status_of(value)
    code = value & 0xFFFFFFFF
    if status is not None:
        return f"{code:08x} {status.name}"
    customer = ", customer-defined" if code & 0x20000000 else ""
    return f"{code:08x} ({_SEVERITIES[code >> 30]}, facility {(code >> 16) & 0xFFF:#x}{customer})"
