"""Test support for the unwinder: PE files mapped as the loader maps them, the linker's map of the test
image, and an x86-64 emulator (unicorn) that runs the test image's real code and records, at every
call, the return address and the caller's non-volatile registers: the truth an unwind is checked
against. Nothing here uses the unwinder's own tables or logic.

PE layout (Microsoft PE format): e_lfanew at 0x3C; the COFF header's NumberOfSections at +6 and
SizeOfOptionalHeader at +20 after the signature; PE32+ optional header ImageBase at 24, SizeOfImage at 56,
SizeOfHeaders at 60, NumberOfRvaAndSizes at 108, data directories from 112 (8 bytes each; entry 3 is
the exception directory); section headers of 40 bytes: VirtualSize at 8, VirtualAddress at 12,
SizeOfRawData at 16, PointerToRawData at 20.
"""
from __future__ import annotations

import os
import re
import struct
from typing import Dict, List, Optional, Tuple

from pykd_ext.targets.base import MemoryReadError
from pykd_ext.unwind import ImageView

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "unwind")
TEST_IMAGE = os.path.join(DATA, "unwind_x64.exe")
TEST_MAP = os.path.join(DATA, "unwind_x64.map")
TEST_READOBJ = os.path.join(DATA, "unwind_x64.readobj.txt")
IMAGE_BASE = 0x140000000


class MappedPe:
    """A PE file's sections laid out at their RVAs, as the loader maps them."""

    def __init__(self, path: str):
        with open(path, "rb") as handle:
            raw = handle.read()
        nt = struct.unpack_from("<I", raw, 0x3C)[0]
        assert raw[nt:nt + 4] == b"PE\0\0"
        self.machine, sections = struct.unpack_from("<HH", raw, nt + 4)
        optional_size = struct.unpack_from("<H", raw, nt + 20)[0]
        optional = nt + 24
        self.image_base = struct.unpack_from("<Q", raw, optional + 24)[0]
        self.size, headers = struct.unpack_from("<II", raw, optional + 56)
        directories = struct.unpack_from("<I", raw, optional + 108)[0]
        self.exception_directory = struct.unpack_from("<II", raw, optional + 112 + 3 * 8) if directories > 3 else (0, 0)
        self.mapped = bytearray(self.size)
        self.mapped[:headers] = raw[:headers]
        self.sections: List[Tuple[str, int, int]] = []
        for index in range(sections):
            at = optional + optional_size + 40 * index
            name = raw[at:at + 8].rstrip(b"\0").decode()
            virtual_size, rva, raw_size, raw_at = struct.unpack_from("<IIII", raw, at + 8)
            take = min(virtual_size or raw_size, raw_size)
            self.mapped[rva:rva + take] = raw[raw_at:raw_at + take]
            self.sections.append((name, rva, max(virtual_size, raw_size)))

    def read(self, rva: int, size: int) -> bytes:
        if rva < 0 or rva + size > self.size:
            raise MemoryReadError(rva, size, reason="outside the image")
        return bytes(self.mapped[rva:rva + size])

    def view(self, name: str, base: int) -> ImageView:
        return ImageView(name, base, self.size, self.read, tuple(self.exception_directory))


def read_link_map(path: str = TEST_MAP) -> Dict[str, int]:
    """Symbol -> address, from the 'Rva+Base' column of lld-link's /map output."""
    symbols = {}
    pattern = re.compile(r"^\s*[0-9a-f]{4}:[0-9a-f]{8}\s+(\S+)\s+([0-9a-f]{16})\s", re.I)
    with open(path) as handle:
        for line in handle:
            match = pattern.match(line)
            if match:
                symbols[match.group(1)] = int(match.group(2), 16)
    return symbols


def crash_in_scene(data, emulation: "Emulation", module) -> None:
    """The emulator's stopped run as a scene's crash: the test image where it ran, as ``module`` of the
    module list; the used part of its stack; its registers as the crashing processor's context."""
    from mocks.memory import add_pages
    from pykd_ext.targets.base import CrashFacts

    data.modules = [m for m in data.modules if m.name != module.name] + [module]
    add_pages(data, emulation.base, bytes(emulation.pe.mapped))
    registers = emulation.registers(with_xmm=False)
    stack = registers["rsp"] & ~0xFFF
    add_pages(data, stack, emulation.read_stack(stack, STACK_TOP - stack))
    data.crash_facts = CrashFacts(registers=tuple(registers.items()), from_triage=False)


# ---- the emulator ---------------------------------------------------------------------------------

STACK_BOTTOM = 0x20000000
STACK_SIZE = 0x800000
STACK_TOP = STACK_BOTTOM + STACK_SIZE
NONVOLATILE = ("rbx", "rbp", "rsi", "rdi", "r12", "r13", "r14", "r15")
XMM_SAVED = tuple(f"xmm{n}" for n in range(6, 16))
# The interrupt stack frame the CPU pushes in 64-bit mode (AMD64 Architecture Programmer's Manual,
# volume 2, "Long-Mode Stack": RSP aligned down to 16 bytes, then SS, RSP, RFLAGS, CS, RIP, error code).
TRAP_SS, TRAP_CS, TRAP_RFLAGS = 0x18, 0x10, 0x246


class CallRecord:
    """One live call, as the emulator saw it: where its return address is, the return address, and
    the caller's registers at the call (for a trap, at the interrupted instruction)."""

    def __init__(self, slot: int, return_address: int, registers: Dict[str, int], trap: bool = False):
        self.slot = slot
        self.return_address = return_address
        self.registers = registers
        self.trap = trap

    @property
    def caller_sp(self) -> int:
        return self.registers["rsp"]


class Emulation:
    """The test image under unicorn. ``on_instruction(emulation, address)`` is called before each
    instruction once the shadow stack is up to date; ``trap_at`` delivers an interrupt (a machine
    frame, with an error code when ``trap_error_code`` is not None) to ``trap_handler`` when the
    instruction at that address is reached the first time."""

    def __init__(self, pe: MappedPe, base: int = IMAGE_BASE):
        from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, Uc
        from unicorn import x86_const
        self.x86 = x86_const
        self.pe = pe
        self.base = base
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc.mem_map(base, (pe.size + 0xFFF) & ~0xFFF)
        self.uc.mem_write(base, bytes(pe.mapped))
        self.uc.mem_map(STACK_BOTTOM, STACK_SIZE)
        self.calls: List[CallRecord] = []
        self.on_instruction = None
        self.stop_at: Optional[int] = None
        self.trap_at: Optional[int] = None
        self.trap_handler = 0
        self.trap_error_code: Optional[int] = None
        self.instructions = 0
        self.uc.hook_add(UC_HOOK_CODE, self._hook)

    # registers
    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(self.x86, f"UC_X86_REG_{name.upper()}"))

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(getattr(self.x86, f"UC_X86_REG_{name.upper()}"), value)

    def registers(self, with_xmm: bool = True) -> Dict[str, int]:
        names = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
                 "r13", "r14", "r15", "rip")
        values = {name: self.reg(name) for name in names}
        if with_xmm:
            values.update({name: self.reg(name) for name in XMM_SAVED})
        return values

    def read_stack(self, address: int, size: int) -> bytes:
        from unicorn import UcError
        try:
            return bytes(self.uc.mem_read(address, size))
        except UcError:
            raise MemoryReadError(address, size, reason="not mapped in the emulator") from None

    def run(self, entry: int, argument: int = 0) -> None:
        rsp = STACK_TOP - 0x100 - 8
        self.uc.mem_write(rsp, struct.pack("<Q", 0))  # the first frame's return address: 0
        for number, name in enumerate(NONVOLATILE):
            self.set_reg(name, 0x1111111111111111 * (number + 1) & 0xFFFFFFFFFFFFFFFF)
        for number, name in enumerate(XMM_SAVED):
            self.set_reg(name, (0xA0 + number) * 0x0102030405060708090A0B0C0D0E0F10 & ((1 << 128) - 1))
        self.set_reg("rsp", rsp)
        self.set_reg("rcx", argument)
        self.calls = [CallRecord(rsp, 0, {**self._nonvolatile(), "rsp": rsp + 8})]
        self.uc.emu_start(entry, 0)

    def _nonvolatile(self) -> Dict[str, int]:
        return {name: self.reg(name) for name in NONVOLATILE + XMM_SAVED}

    def _hook(self, uc, address: int, size: int, _user) -> None:
        self.instructions += 1
        rsp = self.reg("rsp")
        while len(self.calls) > 1 and self.calls[-1].slot < rsp:
            self.calls.pop()
        if address == self.stop_at:
            uc.emu_stop()
            if self.on_instruction is not None:
                self.on_instruction(self, address)
            return
        if address == self.trap_at:
            self.trap_at = None
            self._deliver_trap(address, rsp)
            return
        if self.on_instruction is not None:
            self.on_instruction(self, address)
        code = bytes(uc.mem_read(address, size))
        position = 0
        while position < len(code) and (0x40 <= code[position] <= 0x4F or code[position] in (0x66, 0xF2, 0xF3)):
            position += 1
        opcode = code[position:position + 2]
        if opcode[:1] == b"\xe8" or (len(opcode) == 2 and opcode[0] == 0xFF and (opcode[1] >> 3) & 7 == 2):
            self.calls.append(CallRecord(rsp - 8, address + size, {**self._nonvolatile(), "rsp": rsp}))

    def _deliver_trap(self, address: int, rsp: int) -> None:
        registers = {**self._nonvolatile(), "rsp": rsp}
        new = rsp & ~0xF
        words = [TRAP_SS, rsp, TRAP_RFLAGS, TRAP_CS, address]
        if self.trap_error_code is not None:
            words.append(self.trap_error_code)
        for word in words:
            new -= 8
            self.uc.mem_write(new, struct.pack("<Q", word))
        rip_slot = new + (8 if self.trap_error_code is not None else 0)
        self.calls.append(CallRecord(rip_slot, address, registers, trap=True))
        self.set_reg("rsp", new)
        self.set_reg("rip", self.trap_handler)

    def live_calls(self) -> List[CallRecord]:
        """The live calls, innermost first, without the first frame's 0."""
        return [record for record in reversed(self.calls) if record.return_address]
