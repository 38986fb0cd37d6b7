"""The x64 unwinder against independent truth.

- Decoding: every RUNTIME_FUNCTION and UNWIND_INFO of the clang/lld-built test image against LLVM's
  reading of it (``llvm-readobj --unwind``: run where installed, its committed output otherwise).
- Unwinding: the test image's real code runs under an x86-64 emulator (unicorn); before every
  instruction the unwind from the emulator's registers and stack must give exactly the return
  addresses, stack pointers and non-volatile registers that the emulator recorded at each live call
  (and at the interrupt, for machine frames). That covers every prologue, body and epilogue
  instruction of every function: each unwind code, chained info, the prologue rule, epilogues ending
  in ret and in jmp, version 2 epilogue lists, leaf functions.
- Stop conditions: the same real stacks with an image, a page of unwind data or of the stack taken
  away, or a register corrupted.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from typing import Dict, List

import pytest

import unwind_harness as harness
from pykd_ext.targets.base import MemoryReadError
from pykd_ext.unwind import (BAD_UNWIND_DATA, CONTEXT, CORRUPT_SP, END_OF_STACK, EPILOGUE, FRAME_CAP,
                             IMAGE_UNAVAILABLE, LEAF, MACHINE_FRAME, NO_IMAGE, OUTSIDE_STACK_LIMITS, SCAN,
                             SP_NOT_GROWING, STACK_UNAVAILABLE, UNWIND_DATA, UNWIND_DATA_UNAVAILABLE, ImageView,
                             scan_below, unwind)
from pykd_ext.unwind import x64

V2_IMAGE = os.path.join(harness.DATA, "unwind_x64_v2.exe")
V2_MAP = os.path.join(harness.DATA, "unwind_x64_v2.map")
BASE = harness.IMAGE_BASE


@pytest.fixture(scope="module")
def pe():
    return harness.MappedPe(harness.TEST_IMAGE)


@pytest.fixture(scope="module")
def symbols():
    return harness.read_link_map()


def provider(view: ImageView):
    return lambda address: view if view.contains(address) else None


# ---- decoding, against llvm-readobj ------------------------------------------------------------------

CODE_LINE = re.compile(r"0x([0-9A-F]{2}): (\w+)(?: (.*))?$")


def parse_readobj(text: str) -> List[Dict]:
    """RuntimeFunction blocks of ``llvm-readobj --unwind`` (LLVM 14's format)."""
    functions: List[Dict] = []
    current: Dict = {}
    in_chained = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("RuntimeFunction {"):
            current = {"codes": [], "chained": None}
            functions.append(current)
            in_chained = False
        elif line.startswith("Chained {"):
            in_chained, current["chained"] = True, {}
        elif ":" in line and line.split(":")[0] in ("StartAddress", "EndAddress", "UnwindInfoAddress"):
            key, value = line.split(":", 1)
            address = int(re.search(r"0x[0-9A-Fa-f]+", value).group(0), 16)
            (current["chained"] if in_chained else current)[key] = address
        elif line.startswith(("Version:", "PrologSize:", "UnwindCodeCount:")):
            key, value = line.split(":")
            current[key] = int(value)
        elif line.startswith("FrameRegister:"):
            current["FrameRegister"] = line.split(":", 1)[1].strip().split(" ")[0]
        elif line.startswith("FrameOffset:"):
            value = line.split(":", 1)[1].strip()
            current["FrameOffset"] = None if value == "-" else int(value, 16)
        elif line.startswith("Flags ["):
            current["Flags"] = int(re.search(r"\((0x[0-9A-Fa-f]+)\)", line).group(1), 16)
        else:
            match = CODE_LINE.match(line)
            if match:
                current["codes"].append((int(match.group(1), 16), match.group(2), match.group(3) or ""))
    return functions


@pytest.fixture(scope="module")
def readobj_text():
    with open(harness.TEST_READOBJ) as handle:
        committed = handle.read()
    return committed


def test_committed_readobj_output_is_llvms_reading_of_the_committed_image(readobj_text):
    tool = shutil.which("llvm-readobj")
    if tool is None:
        pytest.skip("llvm-readobj is not installed: the committed output is used as it is")
    fresh = subprocess.run([tool, "--unwind", "unwind_x64.exe"], cwd=harness.DATA, capture_output=True,
                           text=True, check=True).stdout
    assert fresh == readobj_text


def describe(code: x64.UnwindCode, info: x64.UnwindInfo) -> tuple:
    """One of our decoded codes in llvm-readobj's words."""
    name = {0: "PUSH_NONVOL", 1: "ALLOC_LARGE", 2: "ALLOC_SMALL", 3: "SET_FPREG", 4: "SAVE_NONVOL",
            5: "SAVE_NONVOL_FAR", 8: "SAVE_XMM128", 9: "SAVE_XMM128_FAR", 10: "PUSH_MACHFRAME"}[code.op]
    if code.op == x64.UWOP_PUSH_NONVOL:
        detail = f"reg={code.register.upper()}"
    elif code.op in (x64.UWOP_ALLOC_SMALL, x64.UWOP_ALLOC_LARGE):
        detail = f"size={code.amount}"
    elif code.op == x64.UWOP_SET_FPREG:
        detail = f"reg={x64.GPR_NAMES[info.frame_register].upper()}, offset={info.frame_offset:#x}"
    elif code.op in (x64.UWOP_SAVE_NONVOL, x64.UWOP_SAVE_NONVOL_FAR):
        detail = f"reg={code.register.upper()}, offset={code.amount:#x}"
    elif code.op in (x64.UWOP_SAVE_XMM128, x64.UWOP_SAVE_XMM128_FAR):
        detail = f"reg=XMM{code.info}, offset={code.amount:#x}"
    else:
        detail = "errcode=" + ("yes" if code.amount else "no")
    return code.code_offset, name, detail


def test_unwind_data_decodes_as_llvm_reads_it(pe, readobj_text):
    expected = parse_readobj(readobj_text)
    table, size = pe.exception_directory
    entries = [x64.RuntimeFunction(*struct.unpack_from("<III", pe.mapped, table + offset))
               for offset in range(0, size, 12)]
    assert len(entries) == len(expected) >= 20
    seen_ops = set()
    for entry, llvm in zip(entries, expected):
        assert (BASE + entry.begin, BASE + entry.end, BASE + entry.unwind_info) == (
            llvm["StartAddress"], llvm["EndAddress"], llvm["UnwindInfoAddress"])
        info = x64.read_unwind_info(pe.view("t", BASE), entry.unwind_info)
        assert (info.version, info.flags, info.prolog_size, info.count_of_codes) == (
            llvm["Version"], llvm["Flags"], llvm["PrologSize"], llvm["UnwindCodeCount"])
        if info.frame_register:
            assert llvm["FrameRegister"] == x64.GPR_NAMES[info.frame_register].upper()
            assert llvm["FrameOffset"] * 16 == info.frame_offset
        else:
            assert llvm["FrameRegister"] == "-"
        assert [describe(code, info) for code in info.codes] == llvm["codes"]
        if llvm["chained"]:
            chained = info.chained
            assert (BASE + chained.begin, BASE + chained.end, BASE + chained.unwind_info) == (
                llvm["chained"]["StartAddress"], llvm["chained"]["EndAddress"], llvm["chained"]["UnwindInfoAddress"])
        else:
            assert info.chained is None
        seen_ops.update((code.op, code.info if code.op in (1, 10) else 0) for code in info.codes)
        seen_ops.update({("chained", 0)} if info.chained else set())
    # every unwind code (both forms of ALLOC_LARGE and PUSH_MACHFRAME) and chained info are in the image
    assert seen_ops >= {(0, 0), (1, 0), (1, 1), (2, 0), (3, 0), (4, 0), (5, 0), (8, 0), (9, 0), (10, 0), (10, 1),
                        ("chained", 0)}


def test_far_offsets_are_not_scaled(pe, readobj_text):
    """UWOP_SAVE_NONVOL_FAR and UWOP_SAVE_XMM128_FAR hold unscaled 32-bit offsets (llvm-readobj:
    0x88000 and 0x100010, the offsets written in src/shapes.S), the short forms scaled ones."""
    far = [code for function in parse_readobj(readobj_text) for code in function["codes"] if "_FAR" in code[1]]
    assert ("SAVE_NONVOL_FAR" , "reg=RSI, offset=0x88000") in [(name, detail) for _, name, detail in far]
    assert ("SAVE_XMM128_FAR", "reg=XMM6, offset=0x100010") in [(name, detail) for _, name, detail in far]
    # the same slots read by hand: [code][low 16 bits][high 16 bits], offset = low | high << 16
    info = x64.decode_unwind_info(bytes([1, 0x10, 3, 0, 0x10, 0x65, 0x00, 0x80, 0x08, 0x00]), 0)
    assert info.codes[0].op == x64.UWOP_SAVE_NONVOL_FAR and info.codes[0].amount == 0x88000
    info = x64.decode_unwind_info(bytes([1, 0x10, 2, 0, 0x10, 0x64, 0x00, 0x11]), 0)  # near: scaled by 8
    assert info.codes[0].op == x64.UWOP_SAVE_NONVOL and info.codes[0].amount == 0x1100 * 8


def test_version_2_epilogue_list_decodes_to_the_linked_epilogues():
    """The hand-written UWOP_EPILOG codes of src/epilog_v2.S give the two epilogues' addresses as the
    linker placed them (its map)."""
    pe = harness.MappedPe(V2_IMAGE)
    symbols = harness.read_link_map(V2_MAP)
    view = pe.view("v2", BASE)
    entry = x64.find_function(view, symbols["v2_func"] + 4 - BASE)
    info = x64.read_unwind_info(view, entry.unwind_info)
    assert info.version == 2 and BASE + entry.end == symbols["v2_func_end"]
    size = symbols["v2_func_end"] - symbols["v2_last_epilog"]
    assert sorted((BASE + start, length) for start, length in info.epilogue_starts(entry.end)) == [
        (symbols["v2_early_epilog"], size), (symbols["v2_last_epilog"], size)]
    assert [code.op for code in info.prologue_codes] == [x64.UWOP_ALLOC_SMALL, x64.UWOP_PUSH_NONVOL,
                                                         x64.UWOP_PUSH_NONVOL]


# ---- unwinding real code at every instruction ---------------------------------------------------------


def sweep(pe: harness.MappedPe, entry: int, **setup) -> Dict:
    """Run from ``entry`` and unwind before every instruction; returns what was checked and seen."""
    pytest.importorskip("unicorn")
    images = provider(pe.view("unwind_x64", BASE))
    outcome = {"checked": 0, "methods": set(), "failures": []}

    def check(emulation: harness.Emulation, address: int) -> None:
        outcome["checked"] += 1
        result = unwind("x64", emulation.registers(), emulation.read_stack, images)
        calls = emulation.live_calls()
        outcome["methods"].update(frame.method for frame in result.frames)
        got = [(frame.ip, frame.child_sp) for frame in result.frames[1:]]
        want = [(call.return_address, call.caller_sp) for call in calls]
        if result.stop.reason != END_OF_STACK or got != want:
            outcome["failures"].append((hex(address), result.stop.message, got, want))
            return
        for frame, call in zip(result.frames[1:], calls):
            wrong = {name: value for name, value in frame.registers.items()
                     if name in call.registers and call.registers[name] != value}
            if wrong:
                outcome["failures"].append((hex(address), frame.number, wrong))

    emulation = harness.Emulation(pe)
    emulation.on_instruction = check
    for key, value in setup.items():
        setattr(emulation, key, value)
    emulation.run(entry)
    return outcome


def test_every_instruction_of_the_c_chain_unwinds_to_the_recorded_calls(pe, symbols):
    outcome = sweep(pe, symbols["run_c_chain"])
    assert outcome["failures"] == []
    assert outcome["checked"] > 200
    assert {CONTEXT, UNWIND_DATA, EPILOGUE, LEAF} <= outcome["methods"]


def test_every_instruction_of_the_hand_written_shapes_unwinds_to_the_recorded_calls(pe, symbols):
    outcome = sweep(pe, symbols["asm_chain"], stop_at=symbols["finish"] + 1)
    assert outcome["failures"] == []
    assert outcome["checked"] > 80
    assert {CONTEXT, UNWIND_DATA, EPILOGUE, LEAF} <= outcome["methods"]


@pytest.mark.parametrize("trap_at, handler, done, error_code", [
    ("trap_in_body", "trap_handler", "trap_done", None),
    ("trap_in_prologue", "trap_handler_code", "trap_code_done", 0x1234),
])
def test_machine_frames_unwind_to_the_interrupted_instruction(pe, symbols, trap_at, handler, done, error_code):
    """The emulator delivers an interrupt as the CPU does (machine frame, with or without an error
    code); the unwind through the handler's UWOP_PUSH_MACHFRAME must give the interrupted rip and rsp,
    and the interrupted frame (in its body, or in its prologue) unwinds at that exact instruction."""
    outcome = sweep(pe, symbols["trap_entry"], stop_at=symbols[done], trap_at=symbols[trap_at],
                    trap_handler=symbols[handler], trap_error_code=error_code)
    assert outcome["failures"] == []
    assert MACHINE_FRAME in outcome["methods"] and outcome["checked"] > 10


def test_version_2_epilogues_unwind_at_every_instruction():
    pe = harness.MappedPe(V2_IMAGE)
    outcome = sweep(pe, harness.read_link_map(V2_MAP)["v2_entry"])
    assert outcome["failures"] == []
    assert EPILOGUE in outcome["methods"] and outcome["checked"] > 30


# ---- pitfalls, pinned --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep(pe, symbols):
    """The hand-written chain stopped in its innermost leaf: the emulator, its registers, its calls."""
    pytest.importorskip("unicorn")
    emulation = harness.Emulation(pe)
    emulation.stop_at = symbols["deepest_point"]
    emulation.run(symbols["asm_chain"])
    return emulation


def test_the_deep_stack_unwinds_completely_with_every_saved_register(pe, symbols, deep):
    result = unwind("x64", deep.registers(), deep.read_stack, provider(pe.view("unwind_x64", BASE)))
    calls = deep.live_calls()
    # deepest (leaf), loop_with_jump (tail_indirect jumped to deepest), chained_func, far_saves,
    # fp_saves, home_save, asm_chain
    assert result.complete and len(result.frames) == len(calls) + 1 == 7
    assert [frame.return_address for frame in result.frames] == [call.return_address for call in calls] + [0]
    callers = {name: address for name, address in symbols.items()}
    far_caller = next(frame for frame in result.frames if callers["fp_saves"] <= frame.ip < callers["far_saves"])
    truth = next(call for call in calls if call.return_address == far_caller.ip).registers
    # restored through UWOP_SAVE_NONVOL_FAR (rsi), UWOP_SAVE_NONVOL (rdi), and the two XMM forms
    for name in ("rsi", "rdi", "xmm6", "xmm8"):
        assert far_caller.registers[name] == truth[name]
    assert [frame.method for frame in result.frames] == [CONTEXT, LEAF] + [UNWIND_DATA] * 5


def test_a_return_address_is_looked_up_at_the_byte_before_it(pe, symbols):
    """calls_at_end ends with its call, so the return address is the first byte of the next function
    (after_call_at_end, whose unwind data differs): the caller must be unwound with calls_at_end's."""
    pytest.importorskip("unicorn")
    emulation = harness.Emulation(pe)
    emulation.stop_at = symbols["finish"]
    emulation.run(symbols["asm_chain"])
    result = unwind("x64", emulation.registers(), emulation.read_stack, provider(pe.view("unwind_x64", BASE)))
    assert result.frames[1].ip == symbols["after_call_at_end"]
    assert [frame.ip for frame in result.frames[1:]] == [call.return_address for call in emulation.live_calls()]
    assert result.complete


def test_an_in_function_jump_after_a_0x58_byte_is_not_an_epilogue(pe, symbols):
    """loop_with_jump's body has ``mov 0x58(%rdx), %rax; jmp 1b``: bytes 48 8b 42 58 eb xx. A jmp whose
    target is inside the function is a branch, not a tail call."""
    start, end = symbols["loop_with_jump"], symbols["tail_indirect"]
    code = pe.read(start - BASE, end - start)
    jump = start + code.index(bytes.fromhex("488b4258eb")) + 4
    target = jump + 2 + struct.unpack("<b", pe.read(jump - BASE + 1, 1))[0]
    assert start <= target < end
    inside = lambda address: start <= address < end  # noqa: E731
    assert x64.decode_epilogue(pe.read(jump - BASE, 16), jump, 0, inside) is None
    # the same bytes as a tail call out of the function are an epilogue
    assert x64.decode_epilogue(pe.read(jump - BASE, 16), jump, 0, lambda address: False) == [("ret", 0)]
    # and body code that merely contains epilogue-like bytes is not one
    assert x64.decode_epilogue(bytes.fromhex("488b4258eba9"), jump - 4, 0, inside) is None


def test_epilogue_forms():
    outside = lambda address: False  # noqa: E731
    assert x64.decode_epilogue(bytes.fromhex("4883c428415f5bc3"), 0, 0, outside) == [
        ("add", 0x28), ("pop", 15), ("pop", 3), ("ret", 0)]
    assert x64.decode_epilogue(bytes.fromhex("488d65405dc3"), 0, 5, outside) == [
        ("lea", 5, 0x40), ("pop", 5), ("ret", 0)]
    # lea rsp from a register that is not the frame register, or without a frame register: not an epilogue
    assert x64.decode_epilogue(bytes.fromhex("488d65405dc3"), 0, 3, outside) is None
    assert x64.decode_epilogue(bytes.fromhex("488d65405dc3"), 0, 0, outside) is None
    assert x64.decode_epilogue(bytes.fromhex("5ef3c3"), 0, 0, outside) == [("pop", 6), ("ret", 0)]
    assert x64.decode_epilogue(bytes.fromhex("c21000"), 0, 0, outside) == [("ret", 0x10)]
    assert x64.decode_epilogue(bytes.fromhex("48ff2500100000"), 0, 0, outside) == [("ret", 0)]  # jmp [rip+x]
    assert x64.decode_epilogue(bytes.fromhex("ff6008"), 0, 0, outside) is None  # jmp [rax+8]: ModRM mod 01
    assert x64.decode_epilogue(bytes.fromhex("ffe0"), 0, 0, outside) is None  # jmp rax: mod 11
    assert x64.decode_epilogue(bytes.fromhex("5c c3".replace(" ", "")), 0, 0, outside) is None  # pop rsp
    assert x64.decode_epilogue(bytes.fromhex("90c3"), 0, 0, outside) is None


# ---- stop conditions ---------------------------------------------------------------------------------


def function_of(symbols: Dict[str, int], name: str, following: str):
    return lambda address: symbols[name] <= address < symbols[following]


def test_missing_image_stops_with_the_address_and_the_scan_finds_the_rest(pe, symbols, deep):
    view = pe.view("unwind_x64", BASE)
    in_chained_func = function_of(symbols, "chained_func", "loop_with_jump")

    def images(address):
        return None if in_chained_func(address) else provider(view)(address)

    result = unwind("x64", deep.registers(), deep.read_stack, images)
    last = result.frames[-1]
    assert result.stop.reason == NO_IMAGE and in_chained_func(last.ip)
    assert result.stop.frame == last.number == 2 and last.return_address is None
    assert f"{last.ip:#x}" in result.stop.message
    scan = scan_below(result, deep.read_stack, images, harness.STACK_TOP)
    assert all(entry.method == SCAN and images(entry.value) for entry in scan)
    # the return addresses the emulator recorded above the stop are among the scan's values, in order
    values = iter(entry.value for entry in scan)
    assert all(any(value == call.return_address for value in values) for call in deep.live_calls()[2:])


def test_image_not_at_hand_stops_with_its_name(pe, symbols, deep):
    view = pe.view("unwind_x64", BASE)
    in_asm_chain = function_of(symbols, "asm_chain", "home_save")
    missing = ImageView("callers", BASE, view.size, unavailable="not on the symbol path")

    def images(address):
        return missing if in_asm_chain(address) else view

    result = unwind("x64", deep.registers(), deep.read_stack, images)
    assert result.stop.reason == IMAGE_UNAVAILABLE
    assert result.stop.message == "the image of callers is not at hand: not on the symbol path"
    assert result.frames[-1].image == "callers" and result.frames[-1].return_address is None


def test_missing_unwind_data_page_stops(pe, deep):
    xdata = next(rva for name, rva, _ in pe.sections if name == ".xdata" or name == ".rdata")

    def read(rva, size):
        if rva // 0x1000 == xdata // 0x1000:
            raise MemoryReadError(BASE + rva, size, reason="paged out")
        return pe.read(rva, size)

    view = ImageView("unwind_x64", BASE, pe.size, read, tuple(pe.exception_directory))
    result = unwind("x64", deep.registers(), deep.read_stack, provider(view))
    assert result.stop.reason == UNWIND_DATA_UNAVAILABLE
    # the leaf frame needs no unwind data; the first frame with some stops
    assert len(result.frames) == 2 and "UNWIND_INFO of unwind_x64" in result.stop.message


def test_missing_stack_page_stops_at_the_frame_that_needs_it(pe, deep):
    calls = deep.live_calls()
    page = calls[3].slot & ~0xFFF

    def read_stack(address, size):
        if address < page + 0x1000 and address + size > page:
            raise MemoryReadError(address, size)
        return deep.read_stack(address, size)

    result = unwind("x64", deep.registers(), read_stack, provider(pe.view("unwind_x64", BASE)))
    assert result.stop.reason == STACK_UNAVAILABLE
    assert [frame.ip for frame in result.frames[1:]] == [call.return_address for call in calls[:len(result.frames) - 1]]
    assert len(result.frames) <= 4


def test_corrupt_stack_pointer_stops_at_once(pe, deep):
    registers = deep.registers()
    registers["rsp"] += 4
    result = unwind("x64", registers, deep.read_stack, provider(pe.view("unwind_x64", BASE)))
    assert result.stop.reason == CORRUPT_SP and len(result.frames) == 1
    registers["rsp"] = 0x0000900000000000  # not canonical
    assert unwind("x64", registers, deep.read_stack, provider(pe.view("unwind_x64", BASE))).stop.reason == CORRUPT_SP


def test_a_frame_register_pointing_below_the_frame_stops_as_sp_not_growing(pe, symbols, deep):
    """fp_saves restores rsp from rbp (UWOP_SET_FPREG): with rbp corrupted to a lower address, its
    caller's stack pointer would be below its own."""
    registers = deep.registers()
    registers["rbp"] -= 0x200000
    result = unwind("x64", registers, deep.read_stack, provider(pe.view("unwind_x64", BASE)))
    assert result.stop.reason == SP_NOT_GROWING
    assert symbols["fp_saves"] <= result.frames[-1].ip < symbols["far_saves"]


def test_stack_limits_and_frame_cap(pe, deep):
    images = provider(pe.view("unwind_x64", BASE))
    calls = deep.live_calls()
    limits = (deep.reg("rsp"), calls[2].slot)
    result = unwind("x64", deep.registers(), deep.read_stack, images, stack_limits=limits)
    assert result.stop.reason == OUTSIDE_STACK_LIMITS and len(result.frames) == 4
    result = unwind("x64", deep.registers(), deep.read_stack, images, max_frames=3)
    assert result.stop.reason == FRAME_CAP and len(result.frames) == 3
    assert [frame.ip for frame in result.frames[1:]] == [call.return_address for call in calls[:2]]


def test_chained_unwind_info_that_loops_is_bad_data(pe, symbols, deep):
    """The chained UNWIND_INFO of chained_func made to name itself as its parent: a bounded stop."""
    view = pe.view("unwind_x64", BASE)
    entry = x64.find_function(view, symbols["chained_func"] + 0x10 - BASE)
    info = x64.read_unwind_info(view, entry.unwind_info)
    assert info.chained is not None
    parent_at = entry.unwind_info + 4 + ((info.count_of_codes + 1) & ~1) * 2
    looped = struct.pack("<III", entry.begin, entry.end, entry.unwind_info)

    def read(rva, size):
        data = bytearray(pe.read(rva, size))
        for index in range(len(data)):
            if parent_at <= rva + index < parent_at + 12:
                data[index] = looped[rva + index - parent_at]
        return bytes(data)

    broken = ImageView("unwind_x64", BASE, pe.size, read, tuple(pe.exception_directory))
    result = unwind("x64", deep.registers(), deep.read_stack, provider(broken))
    assert result.stop.reason == BAD_UNWIND_DATA and "loops" in result.stop.message
    assert symbols["chained_func"] <= result.frames[-1].ip < symbols["loop_with_jump"]


def test_unknown_unwind_codes_and_versions_are_bad_data():
    with pytest.raises(x64.UnwindStop) as error:
        x64.decode_unwind_info(bytes([3, 0, 0, 0]), 0x40)
    assert error.value.reason == BAD_UNWIND_DATA
    with pytest.raises(x64.UnwindStop):
        x64.decode_unwind_info(bytes([1, 4, 2, 0, 4, 0x0B, 0, 0]), 0)  # op 11 does not exist
    with pytest.raises(x64.UnwindStop):
        x64.decode_unwind_info(bytes([1, 4, 2, 0, 4, 0x06, 0, 0]), 0)  # op 6 exists in version 2 only
    with pytest.raises(x64.UnwindStop):
        x64.decode_unwind_info(bytes([1, 4, 1, 0, 4, 0x04]), 0)  # SAVE_NONVOL needs 2 slots


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("clang", "lld-link", "llvm-readobj")),
                    reason="clang, lld-link or llvm-readobj is not installed")
def test_the_committed_images_are_what_the_committed_sources_build(tmp_path):
    """build.sh, run on a copy of src/, gives the committed code, unwind data and link map (the debug
    data differs with the build folder, so only those are compared; the linker puts .xdata in .rdata,
    so each UNWIND_INFO is compared where .pdata points)."""
    shutil.copytree(os.path.join(harness.DATA, "src"), tmp_path / "src")
    shutil.copy(os.path.join(harness.DATA, "build.sh"), tmp_path)
    subprocess.run(["sh", str(tmp_path / "build.sh")], check=True, capture_output=True)
    for name in ("unwind_x64.exe", "unwind_x64_v2.exe"):
        built, committed = harness.MappedPe(str(tmp_path / name)), harness.MappedPe(os.path.join(harness.DATA, name))
        for section in (".text", ".pdata"):
            rva, size = next((rva, size) for title, rva, size in built.sections if title == section)
            assert built.read(rva, size) == committed.read(rva, size), (name, section)
        table, size = built.exception_directory
        for offset in range(0, size, 12):
            info = struct.unpack_from("<I", built.mapped, table + offset + 8)[0]
            length = 4 + 2 * ((built.mapped[info + 2] + 1) & ~1) + 12
            assert built.read(info, length) == committed.read(info, length), (name, hex(info))
        mapped = name.replace(".exe", ".map")
        assert harness.read_link_map(str(tmp_path / mapped)) == harness.read_link_map(os.path.join(harness.DATA, mapped))
    assert (tmp_path / "unwind_x64.readobj.txt").read_text() == open(harness.TEST_READOBJ).read()


def test_a_machine_frame_is_located_where_the_cpu_pushed_it(pe, symbols):
    """Stopped inside the handler: its frame says where the interrupted rip is on the stack (the slot the
    emulator pushed it to), and the next frame is the interrupted instruction."""
    pytest.importorskip("unicorn")
    emulation = harness.Emulation(pe)
    emulation.trap_at, emulation.trap_handler = symbols["trap_in_body"], symbols["trap_handler"]
    emulation.stop_at = symbols["trap_done"]
    emulation.run(symbols["trap_entry"])
    result = unwind("x64", emulation.registers(), emulation.read_stack, provider(pe.view("unwind_x64", BASE)))
    (trap,) = [call for call in emulation.live_calls() if call.trap]
    handler, interrupted = result.frames[0], result.frames[1]
    assert handler.machine_frame == trap.slot and interrupted.ip == trap.return_address == symbols["trap_in_body"]
    assert interrupted.method == MACHINE_FRAME and interrupted.child_sp == trap.caller_sp
    assert all(frame.machine_frame is None for frame in result.frames[1:])
