"""x64 unwinding from an image's own unwind data (Microsoft, "x64 exception handling" and "x64 prolog
and epilog").

``.pdata`` is a sorted table of RUNTIME_FUNCTION {BeginAddress, EndAddress, UnwindData}, 12 bytes, all
RVAs. UnwindData points at an UNWIND_INFO: a byte of Version (low 3 bits) and Flags (high 5 bits:
UNW_FLAG_EHANDLER 1, UNW_FLAG_UHANDLER 2, UNW_FLAG_CHAININFO 4), SizeOfProlog, CountOfCodes, a byte of
FrameRegister (low 4 bits) and FrameOffset (high 4 bits, times 16), then CountOfCodes 2-byte slots
(padded to an even count); with UNW_FLAG_CHAININFO the RUNTIME_FUNCTION of the parent unwind info
follows the slots. A code's first slot is CodeOffset (the prologue offset just after its instruction)
and a byte of UnwindOp (low 4 bits) and OpInfo (high 4 bits); codes are sorted by descending
CodeOffset. Registers are numbered RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.

A function with no RUNTIME_FUNCTION is a leaf: its return address is at [rsp]. Otherwise the codes
undo the prologue: only those whose CodeOffset is at most the frame's offset in the function (the rest
were not executed yet); the offsets of saves count from the bottom of the fixed stack allocation (the
frame register minus 16 * FrameOffset once UWOP_SET_FPREG is executed). In a frame whose instruction
pointer is exact (the first frame, or one interrupted under a machine frame) the code at rip is read
first: when it matches the rest of an epilogue (``add rsp, n`` or ``lea rsp, [framereg + n]``, pops,
then ``ret`` or a ``jmp`` that leaves the function), those instructions are simulated instead. Version 2
unwind info lists its epilogues (UWOP_EPILOG, code 6: the first gives the epilogues' size, and in bit 0
of OpInfo whether one ends the function; each further one the epilogue's distance from the function's
end, OpInfo:CodeOffset as 12 bits, 0 being padding), so no guess is made there. A return address is
looked up at ``address - 1``: a call may be a function's last instruction.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..targets.base import MemoryReadError
from .model import (BAD_UNWIND_DATA, EPILOGUE, LEAF, MACHINE_FRAME, STACK_UNAVAILABLE, UNWIND_DATA,
                    ImageView, StackReader, Step, UnwindStop, image_bytes, pdata_entry, read_exact)

GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# Preserved across calls (Microsoft x64 calling convention): known in a caller when known in its callee.
NONVOLATILE = ("rbx", "rbp", "rsi", "rdi", "r12", "r13", "r14", "r15") + tuple(f"xmm{n}" for n in range(6, 16))

UNW_FLAG_EHANDLER = 0x1
UNW_FLAG_UHANDLER = 0x2
UNW_FLAG_CHAININFO = 0x4

UWOP_PUSH_NONVOL = 0
UWOP_ALLOC_LARGE = 1
UWOP_ALLOC_SMALL = 2
UWOP_SET_FPREG = 3
UWOP_SAVE_NONVOL = 4
UWOP_SAVE_NONVOL_FAR = 5
UWOP_EPILOG = 6  # version 2 only
UWOP_SAVE_XMM128 = 8
UWOP_SAVE_XMM128_FAR = 9
UWOP_PUSH_MACHFRAME = 10

RUNTIME_FUNCTION_SIZE = 12
UNWIND_INFO_HEADER = 4
MAX_CHAIN = 32  # chained unwind infos followed for one function
EPILOGUE_BYTES = 64  # longer than any epilogue: a deallocation, ten pops, a terminator
# The machine frame: RIP, CS, EFLAGS, old RSP, SS from the stack pointer (after an error code if any).
MACHINE_FRAME_RIP = 0
MACHINE_FRAME_RSP = 24


@dataclass(frozen=True)
class RuntimeFunction:
    begin: int  # RVAs
    end: int
    unwind_info: int

    def contains(self, rva: int) -> bool:
        return self.begin <= rva < self.end


@dataclass(frozen=True)
class UnwindCode:
    """One decoded unwind operation. ``value`` is the register number for pushes, saves and
    UWOP_SET_FPREG's frame register; ``amount`` the allocation size or the save offset in bytes (the
    scaling already applied), the machine frame's error-code flag, or an epilogue's size or distance."""

    code_offset: int
    op: int
    info: int
    amount: int = 0

    @property
    def register(self) -> str:
        return GPR_NAMES[self.info]


@dataclass(frozen=True)
class UnwindInfo:
    rva: int
    version: int
    flags: int
    prolog_size: int
    frame_register: int  # 0: none
    frame_offset: int  # in bytes (the scaled field times 16)
    codes: Tuple[UnwindCode, ...]
    count_of_codes: int
    chained: Optional[RuntimeFunction] = None
    handler: Optional[int] = None  # RVA of the language-specific handler

    @property
    def epilogs(self) -> Tuple[UnwindCode, ...]:
        return tuple(code for code in self.codes if code.op == UWOP_EPILOG)

    @property
    def prologue_codes(self) -> Tuple[UnwindCode, ...]:
        return tuple(code for code in self.codes if code.op != UWOP_EPILOG)

    def epilogue_starts(self, function_end: int) -> Tuple[Tuple[int, int], ...]:
        """Version 2: (start RVA, size) of each epilogue the unwind info lists."""
        headers = self.epilogs
        if self.version < 2 or not headers:
            return ()
        size = headers[0].code_offset
        starts = [function_end - size] if headers[0].info & 1 else []
        for code in headers[1:]:
            distance = code.info << 8 | code.code_offset
            if distance:
                starts.append(function_end - distance)
        return tuple((start, size) for start in starts)


def decode_unwind_info(data: bytes, rva: int) -> UnwindInfo:
    """Decode the UNWIND_INFO whose bytes start ``data`` (at least its header and code slots, and
    the 12 bytes after them when chained). Raises UnwindStop(BAD_UNWIND_DATA) on what cannot be."""
    if len(data) < UNWIND_INFO_HEADER:
        raise _bad(rva, "it is cut short")
    version, flags = data[0] & 7, data[0] >> 3
    if version not in (1, 2):
        raise _bad(rva, f"version {version}")
    prolog_size, count = data[1], data[2]
    frame_register, frame_offset = data[3] & 0xF, (data[3] >> 4) * 16
    slot_bytes = ((count + 1) & ~1) * 2
    if len(data) < UNWIND_INFO_HEADER + count * 2:
        raise _bad(rva, "its codes are cut short")
    slots = struct.unpack_from(f"<{count}H", data, UNWIND_INFO_HEADER)
    codes: List[UnwindCode] = []
    index = 0
    while index < count:
        code_offset, op, info = slots[index] & 0xFF, (slots[index] >> 8) & 0xF, slots[index] >> 12
        width = _slots(op, info, version)
        if width == 0:
            raise _bad(rva, f"unwind code {op} with info {info} at slot {index}")
        if index + width > count:
            raise _bad(rva, f"unwind code {op} at slot {index} runs past its {count} slots")
        operand = slots[index + 1:index + width]
        codes.append(UnwindCode(code_offset, op, info, _amount(op, info, operand)))
        index += width
    chained = handler = None
    tail = UNWIND_INFO_HEADER + slot_bytes
    if flags & UNW_FLAG_CHAININFO:
        if len(data) < tail + RUNTIME_FUNCTION_SIZE:
            raise _bad(rva, "its chained RUNTIME_FUNCTION is cut short")
        chained = RuntimeFunction(*struct.unpack_from("<III", data, tail))
    elif flags & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER) and len(data) >= tail + 4:
        handler = struct.unpack_from("<I", data, tail)[0]
    return UnwindInfo(rva, version, flags, prolog_size, frame_register, frame_offset, tuple(codes), count,
                      chained, handler)


def _slots(op: int, info: int, version: int) -> int:
    """How many slots a code takes; 0 for a code that does not exist."""
    if op in (UWOP_PUSH_NONVOL, UWOP_ALLOC_SMALL, UWOP_SET_FPREG):
        return 1
    if op == UWOP_ALLOC_LARGE:
        return {0: 2, 1: 3}.get(info, 0)
    if op in (UWOP_SAVE_NONVOL, UWOP_SAVE_XMM128):
        return 2
    if op in (UWOP_SAVE_NONVOL_FAR, UWOP_SAVE_XMM128_FAR):
        return 3
    if op == UWOP_EPILOG and version >= 2:
        return 1
    if op == UWOP_PUSH_MACHFRAME and info <= 1:
        return 1
    return 0


def _amount(op: int, info: int, operand: Tuple[int, ...]) -> int:
    if op == UWOP_ALLOC_SMALL:
        return info * 8 + 8
    if op == UWOP_ALLOC_LARGE:
        return operand[0] * 8 if info == 0 else operand[0] | operand[1] << 16
    if op == UWOP_SAVE_NONVOL:
        return operand[0] * 8
    if op == UWOP_SAVE_XMM128:
        return operand[0] * 16
    if op in (UWOP_SAVE_NONVOL_FAR, UWOP_SAVE_XMM128_FAR):  # unscaled: the pitfall is to scale them
        return operand[0] | operand[1] << 16
    if op == UWOP_PUSH_MACHFRAME:
        return info
    return 0


def _bad(rva: int, what: str) -> UnwindStop:
    return UnwindStop(BAD_UNWIND_DATA, f"the UNWIND_INFO at RVA {rva:#x} is invalid: {what}")


# ---- reading an image's unwind data ------------------------------------------------------------


def find_function(image: ImageView, rva: int) -> Optional[RuntimeFunction]:
    """The RUNTIME_FUNCTION of ``.pdata`` that holds ``rva`` (binary search), or None for a leaf."""
    entry = pdata_entry(image, RUNTIME_FUNCTION_SIZE, rva)
    found = RuntimeFunction(*struct.unpack("<III", entry)) if entry is not None else None
    return found if found is not None and found.contains(rva) else None


def read_unwind_info(image: ImageView, rva: int) -> UnwindInfo:
    header = image_bytes(image, rva, UNWIND_INFO_HEADER, "UNWIND_INFO")
    slots = ((header[2] + 1) & ~1) * 2
    extra = RUNTIME_FUNCTION_SIZE if (header[0] >> 3) & UNW_FLAG_CHAININFO else 0
    data = header + image_bytes(image, rva + UNWIND_INFO_HEADER, slots + extra, "UNWIND_INFO") \
        if slots + extra else header
    return decode_unwind_info(data, rva)


def unwind_chain(image: ImageView, entry: RuntimeFunction) -> List[Tuple[RuntimeFunction, UnwindInfo]]:
    """The function's unwind info, then each parent it is chained to (bounded, no cycle)."""
    chain: List[Tuple[RuntimeFunction, UnwindInfo]] = []
    seen = set()
    current: Optional[RuntimeFunction] = entry
    while current is not None:
        if current.unwind_info in seen or len(chain) >= MAX_CHAIN:
            raise _bad(current.unwind_info, f"its chain of parents loops or is longer than {MAX_CHAIN}")
        seen.add(current.unwind_info)
        info = read_unwind_info(image, current.unwind_info)
        chain.append((current, info))
        current = info.chained
    return chain


# ---- one frame ----------------------------------------------------------------------------------


def unwind_frame(image: ImageView, registers: Dict[str, int], exact: bool, read_stack: StackReader) -> Step:
    """Unwind one x64 frame of ``image``: the caller's registers. Raises UnwindStop."""
    rip, rsp = registers["rip"], registers["rsp"]
    control = (rip if exact else rip - 1) - image.base
    entry = find_function(image, control)
    caller = {name: value for name, value in registers.items() if name in NONVOLATILE}
    if entry is None:
        caller["rip"], caller["rsp"] = _read_u64(read_stack, rsp, "return address"), rsp + 8
        return Step(caller, LEAF)
    chain = unwind_chain(image, entry)
    note = ""
    if exact:
        epilogue, note = _epilogue_at(image, rip, chain)
        if epilogue is not None:
            return Step(_simulate_epilogue(epilogue, registers, caller, read_stack), EPILOGUE, note=note)
    return _undo_prologue(image, rip - image.base, chain, registers, caller, read_stack, note)


def _undo_prologue(image: ImageView, offset_rva: int, chain: List[Tuple[RuntimeFunction, UnwindInfo]],
                   registers: Dict[str, int], caller: Dict[str, int], read_stack: StackReader, note: str) -> Step:
    first_entry, first_info = chain[0]
    prologue_offset = offset_rva - first_entry.begin
    applied: List[UnwindCode] = []
    skipped_stack = 0  # bytes of pushes and allocations the frame has not executed yet
    for position, (_, info) in enumerate(chain):
        for code in info.prologue_codes:
            if position == 0 and code.code_offset > prologue_offset:
                if code.op == UWOP_PUSH_NONVOL:
                    skipped_stack += 8
                elif code.op in (UWOP_ALLOC_SMALL, UWOP_ALLOC_LARGE):
                    skipped_stack += code.amount
                continue
            applied.append(code)
    primary = chain[-1][1]
    rsp = registers["rsp"]
    if any(code.op == UWOP_SET_FPREG for code in applied):
        if not primary.frame_register:
            raise _bad(primary.rva, "UWOP_SET_FPREG without a frame register")
        frame_name = GPR_NAMES[primary.frame_register]
        if frame_name not in registers:
            raise UnwindStop(BAD_UNWIND_DATA, f"the frame register {frame_name} is not known in this frame")
        base = registers[frame_name] - primary.frame_offset
    else:
        base = rsp - skipped_stack
    for code in applied:
        if code.op == UWOP_PUSH_NONVOL:
            caller[code.register] = _read_u64(read_stack, rsp, f"saved {code.register}")
            rsp += 8
        elif code.op in (UWOP_ALLOC_SMALL, UWOP_ALLOC_LARGE):
            rsp += code.amount
        elif code.op == UWOP_SET_FPREG:
            rsp = base
        elif code.op in (UWOP_SAVE_NONVOL, UWOP_SAVE_NONVOL_FAR):
            caller[code.register] = _read_u64(read_stack, base + code.amount, f"saved {code.register}")
        elif code.op in (UWOP_SAVE_XMM128, UWOP_SAVE_XMM128_FAR):
            saved = _read(read_stack, base + code.amount, 16, f"saved xmm{code.info}")
            caller[f"xmm{code.info}"] = int.from_bytes(saved, "little")
        elif code.op == UWOP_PUSH_MACHFRAME:
            frame = rsp + 8 * code.amount  # past the error code
            caller["rip"] = _read_u64(read_stack, frame + MACHINE_FRAME_RIP, "interrupted rip")
            caller["rsp"] = _read_u64(read_stack, frame + MACHINE_FRAME_RSP, "interrupted rsp")
            return Step(caller, MACHINE_FRAME, exact=True, note=note, machine_frame=frame + MACHINE_FRAME_RIP)
    caller["rip"], caller["rsp"] = _read_u64(read_stack, rsp, "return address"), rsp + 8
    return Step(caller, UNWIND_DATA, note=note)


# ---- epilogues ----------------------------------------------------------------------------------

# Epilogue operations: ("add", amount), ("lea", register number, displacement), ("pop", register
# number), ("ret", bytes popped after the return address).
EpilogueOp = Tuple


def _epilogue_at(image: ImageView, rip: int, chain) -> Tuple[Optional[List[EpilogueOp]], str]:
    """The rest of the epilogue that starts at ``rip``, or None when rip is not in an epilogue."""
    entry, info = chain[0]
    primary_entry, primary = chain[-1]
    rva = rip - image.base
    listed = info.epilogue_starts(entry.end)
    if info.version >= 2 and listed:
        if not any(start <= rva < start + size for start, size in listed):
            return None, ""
    code = _code_at(image, rva)
    if code is None:
        return None, (f"the code of {image.name} at {rip:#x} is not available: the frame is taken as not in "
                      f"an epilogue")

    def inside(target: int) -> bool:
        target_rva = target - image.base
        return entry.contains(target_rva) or primary_entry.contains(target_rva)

    return decode_epilogue(code, rip, primary.frame_register, inside), ""


def _code_at(image: ImageView, rva: int) -> Optional[bytes]:
    size = min(EPILOGUE_BYTES, image.size - rva)
    if size <= 0:
        return None
    for length in (size, min(size, 0x1000 - rva % 0x1000)):
        try:
            data = image.read(rva, length)
        except MemoryReadError:
            continue
        if data:
            return bytes(data)
    return None


def decode_epilogue(code: bytes, rip: int, frame_register: int, inside) -> Optional[List[EpilogueOp]]:
    """Match ``code`` (the bytes at ``rip``) against the documented epilogue forms: an optional
    ``add rsp, imm`` or ``lea rsp, [framereg + disp]``, pops, then ``ret``, ``ret imm16``, ``rep ret``,
    a ``jmp rel`` whose target is not inside the function (``inside(target)``) or an indirect ``jmp``
    through memory with ModRM mod 00. None when it does not match."""
    ops: List[EpilogueOp] = []
    position = _deallocation(code, frame_register, ops)
    while position < len(code):
        byte = code[position]
        if 0x58 <= byte <= 0x5F and byte != 0x5C:
            ops.append(("pop", byte - 0x58))
            position += 1
        elif byte == 0x41 and position + 1 < len(code) and 0x58 <= code[position + 1] <= 0x5F:
            ops.append(("pop", 8 + code[position + 1] - 0x58))
            position += 2
        else:
            break
    rest = code[position:position + 8]
    if not rest:
        return None
    if rest[0] == 0xC3 or rest[:2] == b"\xf3\xc3":
        return ops + [("ret", 0)]
    if rest[0] == 0xC2 and len(rest) >= 3:
        return ops + [("ret", struct.unpack_from("<H", rest, 1)[0])]
    if rest[0] == 0xE9 and len(rest) >= 5:
        target = rip + position + 5 + struct.unpack_from("<i", rest, 1)[0]
        return None if inside(target) else ops + [("ret", 0)]
    if rest[0] == 0xEB and len(rest) >= 2:
        target = rip + position + 2 + struct.unpack_from("<b", rest, 1)[0]
        return None if inside(target) else ops + [("ret", 0)]
    if 0x40 <= rest[0] <= 0x4F:
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == 0xFF and rest[1] >> 6 == 0 and (rest[1] >> 3) & 7 == 4:
        return ops + [("ret", 0)]
    return None


def _deallocation(code: bytes, frame_register: int, ops: List[EpilogueOp]) -> int:
    """Append the epilogue's ``add rsp`` / ``lea rsp`` when ``code`` starts with one; its length."""
    if code[:3] == b"\x48\x83\xc4" and len(code) >= 4:
        ops.append(("add", struct.unpack_from("<b", code, 3)[0]))
        return 4
    if code[:3] == b"\x48\x81\xc4" and len(code) >= 7:
        ops.append(("add", struct.unpack_from("<i", code, 3)[0]))
        return 7
    if frame_register and len(code) >= 3 and code[0] in (0x48, 0x49) and code[1] == 0x8D:
        modrm = code[2]
        mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        if reg != 4 or mod == 3 or (mod == 0 and rm == 5):
            return 0
        position = 3
        if rm == 4:  # a SIB byte: only [rsp] / [r12] with no index
            if len(code) < 4 or code[3] != 0x24:
                return 0
            position = 4
        base = rm | (code[0] & 1) << 3
        if base != frame_register:
            return 0
        displacement, width = 0, 0
        if mod == 1 and len(code) >= position + 1:
            displacement, width = struct.unpack_from("<b", code, position)[0], 1
        elif mod == 2 and len(code) >= position + 4:
            displacement, width = struct.unpack_from("<i", code, position)[0], 4
        elif mod != 0:
            return 0
        ops.append(("lea", base, displacement))
        return position + width
    return 0


def _simulate_epilogue(ops: List[EpilogueOp], registers: Dict[str, int], caller: Dict[str, int],
                       read_stack: StackReader) -> Dict[str, int]:
    rsp = registers["rsp"]
    for op in ops:
        if op[0] == "add":
            rsp += op[1]
        elif op[0] == "lea":
            name = GPR_NAMES[op[1]]
            if name not in registers:
                raise UnwindStop(BAD_UNWIND_DATA, f"the epilogue restores rsp from {name}, which is not known")
            rsp = registers[name] + op[2]
        elif op[0] == "pop":
            caller[GPR_NAMES[op[1]]] = _read_u64(read_stack, rsp, f"saved {GPR_NAMES[op[1]]}")
            rsp += 8
        else:
            caller["rip"], caller["rsp"] = _read_u64(read_stack, rsp, "return address"), rsp + 8 + op[1]
    return caller


# ---- stack reads --------------------------------------------------------------------------------


def _read(read_stack: StackReader, address: int, size: int, what: str) -> bytes:
    data = read_exact(read_stack, address, size)
    if data is None:
        raise UnwindStop(STACK_UNAVAILABLE, f"the stack at {address:#x} (the {what}) is not available")
    return data


def _read_u64(read_stack: StackReader, address: int, what: str) -> int:
    return struct.unpack("<Q", _read(read_stack, address, 8, what))[0]
