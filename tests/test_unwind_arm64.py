"""The ARM64 unwinder against independent truth.

- Decoding: every ``.pdata`` entry of the four MSVC-built ARM64 images in ../shared/msvc/ARM64 against
  LLVM's reading of it (``llvm-readobj --unwind``): packed fields, ``.xdata`` headers, epilogue scopes,
  and each unwind code's bytes and meaning. LLVM 14 predates two facts the decoder knows: code 0xFC
  (pac_sign_lr, which it calls a bad opcode) and packed CR = 2 (a chained function whose return address
  is signed; LLVM 14 expands it as if unchained), so for those only the raw fields are compared.
- Unwinding: the same images' real prologues and epilogues run under an ARM64 emulator (unicorn): before
  each prologue instruction, the unwind must give back the registers the function was entered with;
  before each epilogue instruction, the state the epilogue reaches at its return.
- The frame-pointer chain: frame records {fp, lr} laid out as the page's stack-frame section describes
  them (fp points at the record, the saved fp first), with no image at hand.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
from typing import Dict, List

import pytest

import unwind_harness as harness
from pykd_ext.targets.base import MemoryReadError
from pykd_ext.unwind import (CONTEXT, FRAME_POINTER, NO_IMAGE, SP_NOT_GROWING, STACK_UNAVAILABLE, ImageView,
                             unwind)
from pykd_ext.unwind import arm64
from pykd_ext.unwind.model import UnwindStop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSVC = os.path.join(ROOT, "..", "shared", "msvc", "ARM64")
IMAGES = sorted(glob.glob(os.path.join(MSVC, "*.exe")) + glob.glob(os.path.join(MSVC, "*.dll")))

needs_images = pytest.mark.skipif(not IMAGES, reason="the MSVC ARM64 images are not beside the checkout")


# ---- decoding, against llvm-readobj ------------------------------------------------------------------


def normalise_llvm(text: str) -> tuple:
    """One opcode line of llvm-readobj (prologue or epilogue form) as (kind, registers, offset, writeback)."""
    text = text.strip().replace("x29", "fp").replace("x30", "lr")
    if text in ("end", "end_c", "nop"):
        return (text,)
    if text in ("mov fp, sp", "mov sp, fp"):
        return ("set_fp",)
    if text == "clear unwound to call":
        return ("clear_unwound_to_call",)
    if text == "Bad opcode!":
        return ("unknown to LLVM 14",)
    match = re.fullmatch(r"(?:add fp, sp|sub sp, fp), #(\d+)", text)
    if match:
        return ("add_fp", int(match.group(1)))
    match = re.fullmatch(r"(?:sub|add) sp,(?: sp,)? #(\d+)", text)
    if match:
        return ("alloc", int(match.group(1)))
    match = re.fullmatch(r"(?:stp|ldp|str|ldr) ([^\[]+), \[sp(?:, #(-?\d+))?\](!)?(?:, #(\d+))?", text)
    assert match, text
    registers = tuple(part.strip() for part in match.group(1).split(","))
    offset = int(match.group(2) or 0)
    if match.group(3):  # pre-indexed store: [sp, #-n]!
        return ("save", registers, 0, -offset)
    if match.group(4):  # post-indexed load: [sp], #n
        return ("save", registers, 0, int(match.group(4)))
    return ("save", registers, offset, 0)


def normalise_ours(code: arm64.Code) -> tuple:
    if code.name in ("end", "end_c", "nop", "set_fp", "clear_unwound_to_call"):
        return (code.name,)
    if code.name == "pac_sign_lr":
        return ("unknown to LLVM 14",)
    if code.name.startswith("alloc"):
        return ("alloc", code.offset)
    if code.name == "add_fp":
        return ("add_fp", code.offset)
    return ("save", code.registers, code.offset, code.writeback)


def parse_readobj_arm64(text: str) -> List[Dict]:
    functions: List[Dict] = []
    current: Dict = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("RuntimeFunction {"):
            current = {"prologue": [], "scopes": [], "epilogue": []}
            functions.append(current)
            section = None
        elif line.startswith("Function:"):
            current["Function"] = int(line.split()[1], 16)
        elif line.startswith("ExceptionRecord:"):
            current["ExceptionRecord"] = int(line.split()[1], 16)
        elif line.startswith("Prologue ["):
            section = current["prologue"]
        elif line.startswith("Epilogue ["):
            section = current["epilogue"]
        elif line.startswith("EpilogueScope {"):
            current["scopes"].append({"opcodes": []})
        elif line.startswith("Opcodes ["):
            section = current["scopes"][-1]["opcodes"]
        elif line == "]":
            section = None
        elif line.startswith(("StartOffset:", "EpilogueStartIndex:")):
            key, value = line.split(":")
            current["scopes"][-1][key] = int(value)
        elif section is not None and line:
            if line.startswith("0x"):
                hexbytes, meaning = line.split(";", 1)
                section.append((bytes.fromhex(hexbytes.strip()[2:]), normalise_llvm(meaning)))
            else:
                section.append((None, normalise_llvm(line)))
        elif ":" in line:
            key, value = line.split(":", 1)
            value = value.strip()
            current[key] = {"Yes": 1, "No": 0}.get(value, int(value) if value.lstrip("-").isdigit() else value)
    return functions


@pytest.fixture(scope="module", params=[os.path.basename(path) for path in IMAGES] or ["none"])
def image(request):
    if not IMAGES:
        pytest.skip("the MSVC ARM64 images are not beside the checkout")
    return harness.MappedPe(os.path.join(MSVC, request.param)), os.path.join(MSVC, request.param)


def entries(pe: harness.MappedPe):
    table, size = pe.exception_directory
    return [struct.unpack_from("<II", pe.mapped, table + offset) for offset in range(0, size, 8)]


@needs_images
@pytest.mark.skipif(shutil.which("llvm-readobj") is None, reason="llvm-readobj is not installed")
def test_arm64_unwind_data_decodes_as_llvm_reads_it(image):
    pe, path = image
    llvm = parse_readobj_arm64(subprocess.run(["llvm-readobj", "--unwind", path], capture_output=True, text=True,
                                              check=True).stdout)
    ours = entries(pe)
    assert len(ours) == len(llvm) > 30
    base = pe.image_base
    view = pe.view("image", base)
    for (begin, word), expected in zip(ours, llvm):
        assert base + begin == expected["Function"]
        function = arm64.read_function(view, begin, word)
        if function.packed is not None:
            fields = function.packed
            assert (fields["Flag"] == 2, fields["FunctionLength"] * 4, fields["RegF"], fields["RegI"], fields["H"],
                    fields["CR"], fields["FrameSize"] * 16) == (
                expected["Fragment"], expected["FunctionLength"], expected["RegF"], expected["RegI"],
                expected["HomedParameters"], expected["CR"], expected["FrameSize"])
            if fields["CR"] != arm64.CR_CHAINED_PAC:
                assert [normalise_ours(code) for code in function.codes] == [
                    meaning for _, meaning in expected["prologue"]]
            continue
        assert base + (word & ~3) == expected["ExceptionRecord"]
        header = function.xdata
        assert (function.length, header["Vers"], header["X"], header["E"]) == (
            expected["FunctionLength"], expected["Version"], expected["ExceptionData"], expected["EpiloguePacked"])
        codes = list(function.codes)
        prologue = arm64._prologue_run(codes)
        assert [normalise_ours(code) for code in prologue] == [meaning for _, meaning in expected["prologue"]]
        assert [len(raw) for raw, _ in expected["prologue"]] == [code.size for code in prologue]
        if header["E"]:
            assert expected["EpilogueOffset"] == header["EpilogCount"]
            start = function.code_starts.index(header["EpilogCount"])
            # LLVM prints no epilogue when it starts at code 0: it is then the prologue's codes
            listed = expected["epilogue"] if header["EpilogCount"] else expected["prologue"]
            assert [normalise_ours(code) for code in arm64._epilog_run(codes[start:], False)] == [
                meaning for _, meaning in listed]
        else:
            assert len(function.epilogs) == expected["EpilogueScopes"] == len(expected["scopes"])
            for scope, llvm_scope in zip(function.epilogs, expected["scopes"]):
                assert (scope.start // 4, scope.index) == (llvm_scope["StartOffset"], llvm_scope["EpilogueStartIndex"])
                run = arm64._epilog_run(codes[function.code_starts.index(scope.index):], False)
                assert [normalise_ours(code) for code in run] == [meaning for _, meaning in llvm_scope["opcodes"]]


# ---- unwinding real prologues and epilogues under an emulator -----------------------------------------

SAVED = tuple(f"x{n}" for n in range(19, 29)) + ("fp",) + tuple(f"d{n}" for n in range(8, 16))
ENTRY_LR = 0x7777000
STACK, STACK_SIZE = 0x70000000, 0x10000
BL_MASK, BL = 0xFC000000, 0x94000000


class Arm64Cpu:
    """One function of a mapped image under unicorn, entered with marker values in every callee-saved
    register, lr and sp."""

    def __init__(self, pe: harness.MappedPe):
        unicorn = pytest.importorskip("unicorn")
        from unicorn import arm64_const
        self.names = arm64_const
        self.uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        self.uc.mem_map(pe.image_base, (pe.size + 0xFFF) & ~0xFFF)
        self.uc.mem_write(pe.image_base, bytes(pe.mapped))
        self.uc.mem_map(STACK, STACK_SIZE)
        self.top = STACK + STACK_SIZE - 0x1000
        self.markers = {name: 0x1000 + 0x111 * index for index, name in enumerate(SAVED)}
        for name, value in self.markers.items():
            self.set(name, value)
        self.set("lr", ENTRY_LR)
        self.set("sp", self.top)

    def _id(self, name: str) -> int:
        return getattr(self.names, {"fp": "UC_ARM64_REG_X29", "lr": "UC_ARM64_REG_X30"}.get(
            name, f"UC_ARM64_REG_{name.upper()}"))

    def get(self, name: str) -> int:
        return self.uc.reg_read(self._id(name))

    def set(self, name: str, value: int) -> None:
        self.uc.reg_write(self._id(name), value)

    def registers(self) -> Dict[str, int]:
        return {name: self.get(name) for name in SAVED + ("lr", "sp", "pc")}

    def read(self, address: int, size: int) -> bytes:
        from unicorn import UcError
        try:
            return bytes(self.uc.mem_read(address, size))
        except UcError:
            raise MemoryReadError(address, size) from None

    def step(self, count: int = 1) -> None:
        """Run to the instruction ``count`` words on (over a call: some epilogues call a helper that
        pops the stack-protection cookie), within a bound."""
        pc = self.get("pc")
        self.uc.emu_start(pc, pc + 4 * count, count=10000)


def caller_of(view: ImageView, cpu: Arm64Cpu) -> Dict[str, int]:
    step = arm64.unwind_frame(view, cpu.registers(), True, cpu.read)
    return step.registers


@needs_images
def test_real_prologues_and_epilogues_unwind_at_every_instruction(image):
    """Every function with a prologue (packed or .xdata): before each of its prologue instructions the
    unwind gives the entry state (lr, sp, x19-x28, fp, d8-d15); then, from the state the prologue built,
    before each instruction of each epilogue, the state that epilogue reaches at its return."""
    from unicorn import UcError
    pe, _ = image
    base = pe.image_base
    view = pe.view("image", base)
    checked = {"prologue": 0, "epilogue": 0, "packed": 0}
    for begin, word in entries(pe):
        function = arm64.read_function(view, begin, word)
        if function.fragment or any(code.name == "end_c" for code in function.codes):
            continue
        cpu = Arm64Cpu(pe)
        cpu.set("pc", base + begin)
        prologue = arm64._prologue_run(list(function.codes))
        ran = True
        for _ in range(len(prologue)):  # the prologue's instructions, then the first of the body
            caller = caller_of(view, cpu)
            assert (caller["pc"], caller["sp"]) == (ENTRY_LR, cpu.top), hex(cpu.get("pc"))
            assert {name: caller[name] for name in SAVED} == cpu.markers, hex(cpu.get("pc"))
            checked["prologue"] += 1
            if cpu.get("pc") - base - begin >= 4 * (len(prologue) - 1):
                break
            if struct.unpack("<I", pe.read(cpu.get("pc") - base, 4))[0] & BL_MASK == BL:
                ran = False  # a call in the prologue (stack probe): not emulated
                break
            cpu.step()
        if not ran:
            continue
        checked["packed"] += function.packed is not None
        built = (cpu.read(STACK, STACK_SIZE), cpu.registers())
        frame = cpu.read(built[1]["sp"], cpu.top - built[1]["sp"])
        stored = set(struct.unpack(f"<{len(frame) // 8}Q", frame))  # what the prologue saved
        for scope in function.epilogs:
            codes = list(function.codes)
            run = arm64._epilog_run(codes if scope.index < 0 else codes[function.code_starts.index(scope.index):],
                                    scope.index < 0)
            cpu.uc.mem_write(STACK, built[0])
            for name, value in built[1].items():
                cpu.set(name, value)
            for index, name in enumerate(SAVED + ("lr",)):  # the body's changes to what the prologue saved
                if name != "fp" and (cpu.markers.get(name, ENTRY_LR) in stored):
                    cpu.set(name, 0xDEAD0000 + index)
            start = base + begin + scope.start
            cpu.set("pc", start)
            before = (cpu.read(STACK, STACK_SIZE), cpu.registers())
            try:
                cpu.step(len(run) - 1)
            except UcError:
                continue  # an epilogue that reads outside the emulated memory
            truth = cpu.registers()
            cpu.uc.mem_write(STACK, before[0])
            for name, value in before[1].items():
                cpu.set(name, value)
            for _ in range(len(run)):
                caller = caller_of(view, cpu)
                assert (caller["pc"], caller["sp"]) == (truth["lr"], truth["sp"]), hex(cpu.get("pc"))
                assert {name: caller[name] for name in SAVED} == {name: truth[name] for name in SAVED}
                checked["epilogue"] += 1
                if cpu.get("pc") < start + 4 * (len(run) - 1):
                    cpu.step()
    assert checked["prologue"] > 50 and checked["epilogue"] > 50 and checked["packed"] > 0


# ---- the frame-pointer chain ---------------------------------------------------------------------------


def test_frame_pointer_chain_over_frame_records_without_images():
    """A stack of frame records as ARM64 code lays them out (fp points at {saved fp, saved lr}), the
    images known by range only: each caller comes from the record, labelled as such, up to a record
    whose saved lr is 0."""
    kernel = ImageView("nt", 0xFFFFF80000000000, 0x100000, unavailable="not on the symbol path")
    driver = ImageView("drv", 0xFFFFF80100000000, 0x10000, unavailable="not on the symbol path")
    images = lambda address: next((view for view in (kernel, driver) if view.contains(address)), None)  # noqa: E731
    stack_base = 0xFFFF800000010000
    memory = bytearray(0x1000)
    records = [(0x200, 0xFFFFF80100001234), (0x300, 0xFFFFF80000045678), (0x500, 0xFFFFF80000012340), (0x700, 0)]
    for index, (offset, return_address) in enumerate(records):
        saved_fp = stack_base + records[index + 1][0] if index + 1 < len(records) else 0
        struct.pack_into("<QQ", memory, offset, saved_fp, return_address)

    def read_stack(address, size):
        if not stack_base <= address and address + size <= stack_base + len(memory):
            raise MemoryReadError(address, size)
        return bytes(memory[address - stack_base:address - stack_base + size])

    start = {"pc": 0xFFFFF80100000500, "sp": stack_base + 0x100, "fp": stack_base + 0x200, "lr": 0xFFFFF80100001234}
    result = unwind("arm64", start, read_stack, images)
    assert [frame.ip for frame in result.frames] == [0xFFFFF80100000500, 0xFFFFF80100001234, 0xFFFFF80000045678,
                                                      0xFFFFF80000012340]
    assert [frame.method for frame in result.frames] == [CONTEXT] + [FRAME_POINTER] * 3
    assert [frame.child_sp for frame in result.frames[1:]] == [stack_base + 0x210, stack_base + 0x310,
                                                               stack_base + 0x510]
    assert result.complete and result.frames[-1].return_address == 0

    # a record that points below itself, an address in no image, a record the source lacks
    looped = dict(start, fp=stack_base + 0x300)
    struct.pack_into("<Q", memory, 0x300, stack_base + 0x200)
    assert unwind("arm64", looped, read_stack, images).stop.reason == SP_NOT_GROWING
    assert unwind("arm64", dict(start, pc=0x1234), read_stack, images).stop.reason == NO_IMAGE
    assert unwind("arm64", dict(start, fp=stack_base + 0x2000), read_stack, images).stop.reason == STACK_UNAVAILABLE


def test_packed_unwind_data_expands_as_the_documented_prologues():
    """The page's examples: CR 3 with a small local area (stp fp,lr pre-indexed; mov fp,sp), and the
    'only r19 saved' unchained non-leaf form (sub sp then stp x19,lr)."""
    chained = arm64.packed_codes({"RegI": 2, "RegF": 0, "H": 0, "CR": 3, "FrameSize": 4})  # 64 bytes
    assert [(code.name, code.registers, code.offset, code.writeback) for code in chained] == [
        ("set_fp", (), 0, 0), ("save_fplr_x", ("fp", "lr"), 0, 48), ("save_regp_x", ("x19", "x20"), 0, 16),
        ("end", (), 0, 0)]
    only_r19 = arm64.packed_codes({"RegI": 1, "RegF": 0, "H": 0, "CR": 1, "FrameSize": 2})  # 32 bytes
    assert [(code.name, code.registers, code.offset) for code in only_r19] == [
        ("alloc_s", (), 16), ("save_lrpair", ("x19", "lr"), 0), ("alloc_s", (), 16), ("end", (), 0)]
    assert [code.name for code in arm64.decode_codes(bytes([0xC8, 0x02, 0xE4, 0xC8]))] == ["save_regp", "end"]
    with pytest.raises(UnwindStop):
        arm64.decode_codes(bytes([0xC8, 0x02, 0xE3, 0xE3]))  # no end
