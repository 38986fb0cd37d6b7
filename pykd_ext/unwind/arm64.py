"""ARM64 unwinding from an image's ``.pdata``/``.xdata`` (Microsoft, "ARM64 exception handling"), and
from the frame-pointer chain where the image is not at hand.

``.pdata`` entries are 8 bytes: the function's start RVA, then a word whose low 2 bits (Flag) say what
the rest is: 0, the RVA of an ``.xdata`` record (low bits 0); 1, packed unwind data; 2, packed data of a
fragment (no prologue, no epilogue). Packed data, from bit 2 up: FunctionLength (11 bits, times 4),
RegF (3), RegI (4), H (1), CR (2: 0 unchained, 1 unchained with lr saved, 2 chained with a signed
return address, 3 chained), FrameSize (9 bits, times 16).

An ``.xdata`` record: a word of FunctionLength (18 bits, times 4), Vers (2), X (1: exception data), E (1:
one epilogue packed in the header), Epilog Count (5: the number of epilogue scopes, or with E the
index of the epilogue's first code), Code Words (5); when both of the last two are 0, an extension
word (Epilog Count in 16 bits, Code Words in the next 8). Then one word per epilogue scope: Start
Offset (18 bits, times 4, from the function's start), 4 reserved bits, Start Index (10 bits, into the
code bytes); then the code bytes. Codes undo the prologue in reverse order, one code per instruction,
until ``end`` (0xE4). A frame in its prologue at instruction n runs only the last n prologue codes;
in an epilogue at instruction n, the epilogue's codes from its start index plus n.

The codes (first byte): 000xxxxx alloc_s; 001zzzzz save_r19r20_x; 01zzzzzz save_fplr; 10zzzzzz
save_fplr_x; 11000xxx alloc_m; 110010xx save_regp; 110011xx save_regp_x; 110100xx save_reg;
1101010x save_reg_x; 1101011x save_lrpair; 1101100x save_fregp; 1101101x save_fregp_x; 1101110x
save_freg; 11011110 save_freg_x; 0xE0 alloc_l; 0xE1 set_fp; 0xE2 add_fp; 0xE3 nop; 0xE4 end; 0xE5
end_c; 0xE6 save_next; 0xE8 trap frame, 0xE9 machine frame, 0xEA context, 0xEB EC context (custom
stacks); 0xEC clear unwound to call; 0xFC pac_sign_lr. (Older copies of the page number the custom
stacks one higher.)

Packed data stands for this prologue (the page's table), in execution order: [pacibsp when CR is 2];
the integer saves (stp x19,x20,[sp,#-savsz]! then stp pairs, an odd last one as str, merged with lr
into stp xN,lr when CR is 1; str lr alone otherwise when CR is 1); the FP saves (RegF + 1 registers
from d8, the first with the pre-decrement when nothing was saved before); four homing stores when H
(nops for the unwinder); then for a chained function stp x29,lr,[sp,#-locsz]! and mov x29,sp (locsz
<= 512) or sub sp,#locsz (in two parts beyond 4088), stp x29,lr,[sp] and add x29,sp,#0; otherwise
sub sp (in two parts beyond 4088). Its one epilogue ends the function: the same codes without set_fp
and the homing stores, then ret.

Without the image, a frame record {fp, lr} at fp gives the caller (``FRAME_POINTER``): its ip is the
saved lr, its fp the saved fp; its stack pointer is not recorded, so the frame's Child-SP is shown as
the address just above the record (the lowest the caller's stack pointer can be).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .model import (BAD_UNWIND_DATA, END_OF_STACK, EPILOGUE, FRAME_POINTER, IMAGE_UNAVAILABLE, LEAF, NO_IMAGE,
                    STACK_UNAVAILABLE, UNSUPPORTED, UNWIND_DATA, ImageView, StackReader,
                    Step, UnwindStop, image_bytes, pdata_entry, read_exact)

PDATA_ENTRY_SIZE = 8
FLAG_XDATA, FLAG_PACKED, FLAG_FRAGMENT = 0, 1, 2
CR_UNCHAINED, CR_UNCHAINED_LR, CR_CHAINED_PAC, CR_CHAINED = 0, 1, 2, 3
CALLEE_SAVED = tuple(f"x{n}" for n in range(19, 29)) + ("fp",) + tuple(f"d{n}" for n in range(8, 16))
VA_BITS = 47  # TCR_EL1.T0SZ = T1SZ = 17 on Windows: bits above 46 copy bit 55 once a PAC is stripped


@dataclass(frozen=True)
class Code:
    """One ARM64 unwind code. ``registers``: what it saves (x19..x28, fp, lr, d8..d15); ``offset``: the
    save's offset from sp, or the allocation / add_fp amount; ``writeback``: the pre-decrement of a
    ``_x`` save (its undo adds it to sp)."""

    name: str
    size: int  # bytes of the code
    registers: Tuple[str, ...] = ()
    offset: int = 0
    writeback: int = 0


@dataclass(frozen=True)
class EpilogScope:
    start: int  # byte offset from the function's start
    index: int  # index of its first code byte


@dataclass(frozen=True)
class FunctionUnwind:
    """What a ``.pdata`` entry says about one function, packed or not."""

    begin: int  # RVA
    length: int  # bytes
    codes: Tuple[Code, ...]  # in unwind order, from code byte 0
    code_starts: Tuple[int, ...]  # the byte index of each code
    epilogs: Tuple[EpilogScope, ...]
    fragment: bool = False
    packed: Optional[Dict[str, int]] = None  # the packed fields, for a packed entry
    xdata: Optional[Dict[str, int]] = None  # the header fields, for an .xdata record

    @property
    def end(self) -> int:
        return self.begin + self.length


def _x(number: int) -> str:
    return {29: "fp", 30: "lr"}.get(number, f"x{number}")


def decode_codes(data: bytes) -> List[Code]:
    """Decode the unwind code bytes of a record (its code words). The words are padded after the last
    ``end``: a code cut short by the end of the words is padding, and is dropped."""
    codes: List[Code] = []
    position = 0
    while position < len(data):
        try:
            code = _decode_one(data, position)
        except UnwindStop:
            break
        codes.append(code)
        position += code.size
    if not any(code.name == "end" for code in codes):
        raise UnwindStop(BAD_UNWIND_DATA, "the unwind codes have no end")
    return codes


def _decode_one(data: bytes, at: int) -> Code:
    first = data[at]

    def following(count: int) -> int:
        if at + count > len(data):
            raise UnwindStop(BAD_UNWIND_DATA, f"the unwind code {first:#04x} is cut short")
        return int.from_bytes(data[at + 1:at + count], "big")

    if first < 0x20:
        return Code("alloc_s", 1, offset=(first & 0x1F) * 16)
    if first < 0x40:
        return Code("save_r19r20_x", 1, ("x19", "x20"), 0, (first & 0x1F) * 8)
    if first < 0x80:
        return Code("save_fplr", 1, ("fp", "lr"), (first & 0x3F) * 8)
    if first < 0xC0:
        return Code("save_fplr_x", 1, ("fp", "lr"), 0, ((first & 0x3F) + 1) * 8)
    if first < 0xC8:
        return Code("alloc_m", 2, offset=(((first & 7) << 8) | following(2)) * 16)
    if first < 0xE0:
        word = (first << 8) | following(2)
        low, z = (word >> 6) & 0xF, word & 0x3F
        if first < 0xCC:
            return Code("save_regp", 2, (_x(19 + low), _x(20 + low)), z * 8)
        if first < 0xD0:
            return Code("save_regp_x", 2, (_x(19 + low), _x(20 + low)), 0, (z + 1) * 8)
        if first < 0xD4:
            return Code("save_reg", 2, (_x(19 + low),), z * 8)
        if first < 0xD6:
            register, z = (word >> 5) & 0xF, word & 0x1F
            return Code("save_reg_x", 2, (_x(19 + register),), 0, (z + 1) * 8)
        if first < 0xD8:
            return Code("save_lrpair", 2, (_x(19 + 2 * (low & 7)), "lr"), z * 8)
        low &= 7
        if first < 0xDA:
            return Code("save_fregp", 2, (f"d{8 + low}", f"d{9 + low}"), z * 8)
        if first < 0xDC:
            return Code("save_fregp_x", 2, (f"d{8 + low}", f"d{9 + low}"), 0, (z + 1) * 8)
        if first < 0xDE:
            return Code("save_freg", 2, (f"d{8 + low}",), z * 8)
        if first == 0xDE:
            register, z = (word >> 5) & 7, word & 0x1F
            return Code("save_freg_x", 2, (f"d{8 + register}",), 0, (z + 1) * 8)
        return Code("alloc_z", 2)  # SVE: not unwindable here
    simple = {0xE1: "set_fp", 0xE3: "nop", 0xE4: "end", 0xE5: "end_c", 0xE6: "save_next", 0xE8: "trap_frame",
              0xE9: "machine_frame", 0xEA: "context", 0xEB: "ec_context", 0xEC: "clear_unwound_to_call",
              0xFC: "pac_sign_lr"}
    if first == 0xE0:
        return Code("alloc_l", 4, offset=following(4) * 16)
    if first == 0xE2:
        return Code("add_fp", 2, offset=following(2) * 8)
    if first == 0xE7:
        return Code("save_any_reg", 3)  # newer than this decoder's description: not unwindable here
    if first in simple:
        return Code(simple[first], 1)
    return Code("reserved", 1)


# ---- reading .pdata and .xdata -----------------------------------------------------------------------




def packed_fields(word: int) -> Dict[str, int]:
    return {"Flag": word & 3, "FunctionLength": (word >> 2) & 0x7FF, "RegF": (word >> 13) & 7,
            "RegI": (word >> 16) & 0xF, "H": (word >> 20) & 1, "CR": (word >> 21) & 3, "FrameSize": word >> 23}


def read_function(image: ImageView, begin: int, word: int) -> FunctionUnwind:
    """Decode one ``.pdata`` entry (its start RVA and second word)."""
    flag = word & 3
    if flag in (FLAG_PACKED, FLAG_FRAGMENT):
        fields = packed_fields(word)
        codes = packed_codes(fields)
        starts = _starts(codes)
        length = fields["FunctionLength"] * 4
        epilogs: Tuple[EpilogScope, ...] = ()
        if flag == FLAG_PACKED:
            epilog = [code for code in codes if code.name not in ("set_fp",) and not code.name.startswith("home")]
            epilogs = (EpilogScope(length - 4 * len(epilog), -1),)
        return FunctionUnwind(begin, length, tuple(codes), starts, epilogs, flag == FLAG_FRAGMENT, fields)
    if flag != FLAG_XDATA:
        raise UnwindStop(BAD_UNWIND_DATA, f"the .pdata entry at RVA {begin:#x} has the reserved flag 3")
    xdata = word & ~3
    header = struct.unpack("<I", image_bytes(image, xdata, 4, ".xdata record"))[0]
    fields = {"FunctionLength": header & 0x3FFFF, "Vers": (header >> 18) & 3, "X": (header >> 20) & 1,
              "E": (header >> 21) & 1, "EpilogCount": (header >> 22) & 0x1F, "CodeWords": header >> 27}
    if fields["Vers"] != 0:
        raise UnwindStop(BAD_UNWIND_DATA, f"the .xdata record at RVA {xdata:#x} has version {fields['Vers']}")
    at = xdata + 4
    if fields["EpilogCount"] == 0 and fields["CodeWords"] == 0:
        extension = struct.unpack("<I", image_bytes(image, at, 4, ".xdata record"))[0]
        fields["EpilogCount"], fields["CodeWords"] = extension & 0xFFFF, (extension >> 16) & 0xFF
        at += 4
    scopes: List[EpilogScope] = []
    if not fields["E"]:
        raw = image_bytes(image, at, 4 * fields["EpilogCount"], "epilogue scopes")
        for (scope,) in struct.iter_unpack("<I", raw):
            scopes.append(EpilogScope((scope & 0x3FFFF) * 4, scope >> 22))
        at += len(raw)
    code_bytes = image_bytes(image, at, 4 * fields["CodeWords"], "unwind codes")
    codes = decode_codes(code_bytes)
    starts = _starts(codes)
    length = fields["FunctionLength"] * 4
    if fields["E"]:
        index = fields["EpilogCount"]
        scopes.append(EpilogScope(length - 4 * _run_length(codes, starts, index), index))
    return FunctionUnwind(begin, length, tuple(codes), starts, tuple(scopes), xdata=fields)


def _starts(codes: List[Code]) -> Tuple[int, ...]:
    starts, position = [], 0
    for code in codes:
        starts.append(position)
        position += code.size
    return tuple(starts)


def _run_length(codes, starts, index: int) -> int:
    """Instructions of the code run that starts at byte ``index``: its codes up to ``end``, which stands
    for the ret."""
    if index not in starts:
        raise UnwindStop(BAD_UNWIND_DATA, f"no unwind code starts at byte {index}")
    count = 0
    for code in codes[starts.index(index):]:
        count += 1
        if code.name in ("end", "end_c"):
            return count
    raise UnwindStop(BAD_UNWIND_DATA, "the unwind codes have no end")


def packed_codes(fields: Dict[str, int]) -> List[Code]:
    """The unwind codes (in unwind order, ``end`` last) that packed unwind data stands for."""
    reg_i, reg_f, home, cr = fields["RegI"], fields["RegF"], fields["H"], fields["CR"]
    chained = cr in (CR_CHAINED, CR_CHAINED_PAC)
    int_size = reg_i * 8 + (8 if cr == CR_UNCHAINED_LR else 0)
    fp_size = reg_f * 8 + (8 if reg_f else 0)
    save_size = (int_size + fp_size + 8 * home + 0xF) & ~0xF
    local_size = fields["FrameSize"] * 16 - save_size
    prologue: List[Code] = []  # execution order
    if cr == CR_CHAINED_PAC:
        prologue.append(Code("pac_sign_lr", 1))
    int_registers = [f"x{19 + n}" for n in range(reg_i)]
    if cr == CR_UNCHAINED_LR:
        int_registers.append("lr")
    offset = 0
    while offset < len(int_registers) * 8:
        pair = tuple(int_registers[offset // 8:offset // 8 + 2])
        first = offset == 0
        if pair == ("x19", "lr"):  # stp x19,lr cannot pre-decrement: sub sp first
            prologue += [Code("alloc_s", 0, offset=save_size), Code("save_lrpair", 0, pair, 0)]
        else:
            name = ("save_regp" if len(pair) == 2 else "save_reg") + ("_x" if first else "")
            if pair[-1] == "lr" and len(pair) == 2:
                name = "save_lrpair"
            prologue.append(Code(name, 0, pair, 0 if first else offset, save_size if first else 0))
        offset += 8 * len(pair)
    fp_registers = [f"d{8 + n}" for n in range(reg_f + 1)] if reg_f else []
    for index in range(0, len(fp_registers), 2):
        pair = tuple(fp_registers[index:index + 2])
        first = int_size == 0 and index == 0
        name = ("save_fregp" if len(pair) == 2 else "save_freg") + ("_x" if first else "")
        prologue.append(Code(name, 0, pair, 0 if first else int_size + 8 * index, save_size if first else 0))
    if home:  # the homing stores restore nothing; the first one allocates when nothing was saved before
        allocates = int_size == 0 and fp_size == 0
        prologue.append(Code("home_alloc" if allocates else "home_nop", 0, offset=save_size if allocates else 0))
        prologue.extend(Code("home_nop", 0) for _ in range(3))
    if chained:
        if local_size <= 512:
            prologue += [Code("save_fplr_x", 0, ("fp", "lr"), 0, local_size), Code("set_fp", 0)]
        else:
            prologue += _allocations(local_size) + [Code("save_fplr", 0, ("fp", "lr"), 0), Code("set_fp", 0)]
    elif local_size > 0:
        prologue += _allocations(local_size)
    return list(reversed(prologue)) + [Code("end", 0)]


def _allocations(size: int) -> List[Code]:
    if size <= 4088:
        return [Code("alloc_m" if size >= 512 else "alloc_s", 0, offset=size)]
    rest = size - 4088
    return [Code("alloc_m", 0, offset=4088), Code("alloc_m" if rest >= 512 else "alloc_s", 0, offset=rest)]


def find_function(image: ImageView, rva: int) -> Optional[FunctionUnwind]:
    """The function that holds ``rva`` (binary search of ``.pdata``), or None."""
    entry = pdata_entry(image, PDATA_ENTRY_SIZE, rva)
    if entry is None:
        return None
    function = read_function(image, *struct.unpack("<II", entry))
    return function if function.begin <= rva < function.end else None


# ---- one frame ---------------------------------------------------------------------------------------


def unwind_frame(image: Optional[ImageView], registers: Dict[str, int], exact: bool, read_stack: StackReader,
                 sp_exact: bool = True) -> Step:
    """Unwind one ARM64 frame: by the image's unwind data when it is at hand and the stack pointer is
    exact; by the frame record at fp otherwise (once a frame came from a frame record, the stack
    pointer is only a lower bound, so the chain goes on by frame records). Raises UnwindStop."""
    pc = registers["pc"]
    if image is None:
        raise UnwindStop(NO_IMAGE, f"{pc:#x} lies in no loaded image")
    if image.read is None or not sp_exact:
        return frame_record_step(image, registers, read_stack)
    control = (pc if exact else pc - 4) - image.base
    function = find_function(image, control)
    if function is None:
        if not exact or "lr" not in registers:
            raise UnwindStop(BAD_UNWIND_DATA, f"{image.name} has no unwind data for {pc:#x}, and its return "
                                              f"address (lr) is not known in this frame")
        caller = _callee_saved(registers)
        caller["pc"], caller["sp"] = registers["lr"], registers["sp"]
        return Step(caller, LEAF)
    offset = pc - image.base - function.begin
    codes, method = _codes_to_run(function, offset, exact)
    return _run(codes, registers, read_stack, method)


def _codes_to_run(function: FunctionUnwind, offset: int, exact: bool) -> Tuple[List[Code], str]:
    codes, starts = list(function.codes), function.code_starts
    if function.fragment:
        return codes, UNWIND_DATA
    if exact:
        for scope in function.epilogs:
            if scope.index < 0:  # packed: the prologue's codes without set_fp and the homing stores
                run = _epilog_run(codes, packed=True)
            elif scope.index in starts:
                run = _epilog_run(codes[starts.index(scope.index):], packed=False)
            else:
                raise UnwindStop(BAD_UNWIND_DATA, f"no unwind code starts at byte {scope.index}")
            if scope.start <= offset < scope.start + 4 * len(run):
                return run[(offset - scope.start) // 4:], EPILOGUE
        prologue = _prologue_run(codes)
        instruction = offset // 4
        if instruction < len(prologue) - 1:  # inside the prologue: only what it has done is undone
            return prologue[len(prologue) - 1 - instruction:], UNWIND_DATA
    return codes, UNWIND_DATA


def _epilog_run(codes: List[Code], packed: bool) -> List[Code]:
    run = []
    for code in codes:
        if packed and code.name in ("set_fp", "home_nop", "home_alloc"):
            continue
        run.append(code)
        if code.name == "end":
            break
    return run


def _prologue_run(codes: List[Code]) -> List[Code]:
    run = []
    for code in codes:
        run.append(code)
        if code.name in ("end", "end_c"):
            break
    return run


def _callee_saved(registers: Dict[str, int]) -> Dict[str, int]:
    return {name: value for name, value in registers.items() if name in CALLEE_SAVED}


def _run(codes: List[Code], registers: Dict[str, int], read_stack: StackReader, method: str) -> Step:
    """Undo the codes on a copy of the registers: the caller's registers."""
    state = dict(registers)
    sp = state["sp"]
    signed = False
    for code in _resolve_save_next(codes):
        name = code.name
        if name == "end":
            break
        if name in ("nop", "end_c", "clear_unwound_to_call", "home_nop"):
            continue
        if name in ("alloc_s", "alloc_m", "alloc_l", "home_alloc"):
            sp += code.offset
        elif name == "set_fp":
            sp = _need(state, "fp")
        elif name == "add_fp":
            sp = _need(state, "fp") - code.offset
        elif name == "pac_sign_lr":
            signed = True
        elif code.registers:
            sp = _restore(code, state, sp, read_stack)
        else:
            raise UnwindStop(UNSUPPORTED, f"the unwind code {name} is not supported")
    caller = _callee_saved(state)
    if "lr" not in state:
        raise UnwindStop(BAD_UNWIND_DATA, "the return address (lr) is not known in this frame")
    caller["pc"] = _strip_pac(state["lr"]) if signed else state["lr"]
    caller["sp"] = sp
    return Step(caller, method)


PAIR_ORDER = [(f"x{n}", f"x{n + 1}") for n in range(19, 29, 2)] + [(f"d{n}", f"d{n + 1}") for n in range(8, 16, 2)]


def _resolve_save_next(codes: List[Code]) -> List[Code]:
    """Each save_next with its registers and offset: it saves the pair after the one saved by the
    instruction before it in the prologue, in the next 16 bytes; codes are in reverse order, so that
    save is the first pair save after it in the list."""
    resolved = list(codes)
    for index, code in enumerate(codes):
        if code.name != "save_next":
            continue
        distance = 1
        while index + distance < len(codes) and codes[index + distance].name == "save_next":
            distance += 1
        base = codes[index + distance] if index + distance < len(codes) else None
        if base is None or len(base.registers) != 2 or base.registers not in PAIR_ORDER:
            raise UnwindStop(BAD_UNWIND_DATA, "save_next follows no register-pair save")
        position = PAIR_ORDER.index(base.registers) + distance
        if position >= len(PAIR_ORDER):
            raise UnwindStop(BAD_UNWIND_DATA, "save_next runs past the last register pair")
        resolved[index] = Code("save_next", 1, PAIR_ORDER[position], base.offset + 16 * distance)
    return resolved


def _restore(code: Code, state: Dict[str, int], sp: int, read_stack: StackReader) -> int:
    address = sp + code.offset
    data = read_exact(read_stack, address, 8 * len(code.registers))
    if data is None:
        raise UnwindStop(STACK_UNAVAILABLE, f"the stack at {address:#x} (saved {', '.join(code.registers)}) "
                                            f"is not available")
    for index, name in enumerate(code.registers):
        state[name] = struct.unpack_from("<Q", data, 8 * index)[0]
    return sp + code.writeback


def _need(state: Dict[str, int], name: str) -> int:
    if name not in state:
        raise UnwindStop(BAD_UNWIND_DATA, f"the unwind data needs {name}, which is not known in this frame")
    return state[name]


def _strip_pac(address: int) -> int:
    """The address without its pointer authentication code (bits above the VA size copy bit 55)."""
    low = address & ((1 << VA_BITS) - 1)
    return low | (((1 << 64) - 1) ^ ((1 << VA_BITS) - 1)) if address >> 55 & 1 else low


def frame_record_step(image: Optional[ImageView], registers: Dict[str, int], read_stack: StackReader) -> Step:
    """The caller from the frame record {fp, lr} at fp."""
    if "fp" not in registers:
        raise UnwindStop(IMAGE_UNAVAILABLE, f"the image of {image.name if image else '?'} is not at hand and fp "
                                            f"is not known")
    fp = registers["fp"]
    if fp == 0:
        raise UnwindStop(END_OF_STACK, "the frame pointer is 0: the end of the frame chain")
    data = read_exact(read_stack, fp, 16)
    if data is None:
        raise UnwindStop(STACK_UNAVAILABLE, f"the frame record at fp {fp:#x} is not available")
    saved_fp, saved_lr = struct.unpack("<QQ", data)
    # x19-x28 and d8-d15 are not known in the caller: only unwind data says where they were saved
    return Step({"fp": saved_fp, "pc": _strip_pac(saved_lr), "sp": fp + 16}, FRAME_POINTER, sp_exact=False)
