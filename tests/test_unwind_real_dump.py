"""The exception context of the real x64 small dump, unwound through the real images of its symbol store.

../shared/samples/triage_x64.dmp is bug check 0x1000007E in amdppm.sys; P4 is the exception's CONTEXT
record, which lies in the dump's copy of the crashing thread's stack. ../shared/symstore holds the
amdppm.sys and Wdf01000.sys images that were loaded (same TimeDateStamp and SizeOfImage), not
ntoskrnl.exe. The adapter here is the test's own: the small dump's memory through SmallDumpTarget, the
store's images laid out by section (tests/unwind_harness.py), the CONTEXT layout of winnt.h (Rax at
0x78, the sixteen integer registers in order, Rip at 0xF8).

Expected frames: amdppm's return addresses were checked with llvm-objdump (the instruction that ends
at each is a call) and llvm-symbolizer with amdppm.pdb (the functions below); the tests repeat those
checks where the tools are installed.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess

import pytest

import unwind_harness as harness
from pykd_ext.sources import open_dump
from pykd_ext.unwind import IMAGE_UNAVAILABLE, UNWIND_DATA, ImageView, scan_below, unwind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
DUMP = os.path.join(SHARED, "samples", "triage_x64.dmp")
STORE = os.path.join(SHARED, "symstore")
STORE_IMAGES = {"amdppm": os.path.join(STORE, "amdppm.sys", "c9c030003b000", "amdppm.sys"),
                "Wdf01000": os.path.join(STORE, "Wdf01000.sys", "a9a9d36ed1000", "Wdf01000.sys")}
AMDPPM_PDB = os.path.join(STORE, "amdppm.pdb", "1C19FDDB27BB3399D9B45973EFEAFCF31", "amdppm.pdb")
CONTEXT_REGISTERS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                     "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CONTEXT_RAX, CONTEXT_RIP = 0x78, 0xF8
PREFERRED_BASE = {"amdppm": 0x1C0000000, "Wdf01000": 0x1C0000000}

pytestmark = pytest.mark.skipif(not (os.path.exists(DUMP) and all(map(os.path.exists, STORE_IMAGES.values()))),
                                reason="the real small dump and its symbol store are not beside the checkout")

# (module, RVA of the frame's ip, Child-SP) from frame 0 to the first frame in nt, where it stops.
EXPECTED = [
    ("amdppm", 0x334C, 0xFFFF850429892120),  # WriteIoMemRawEx+0x70, the faulting instruction
    ("amdppm", 0x313F, 0xFFFF850429892150),  # WriteGenAddrEx
    ("amdppm", 0x3234, 0xFFFF850429892180),  # WriteGenAddrMaybeHiddenEx
    ("amdppm", 0x20E8F, 0xFFFF8504298921B0),  # InitAcpiCpc
    ("amdppm", 0x283F6, 0xFFFF850429892210),  # ProcLibDeviceStart
    ("amdppm", 0x1F852, 0xFFFF850429892340),  # EvtDevicePrepareHardware
    ("Wdf01000", 0x7C027, 0xFFFF850429892380),
    ("Wdf01000", 0x16F81, 0xFFFF8504298923D0),
    ("Wdf01000", 0x7B227, 0xFFFF850429892410),
    ("Wdf01000", 0x79E21, 0xFFFF850429892460),
    ("Wdf01000", 0x799DA, 0xFFFF8504298924A0),
    ("Wdf01000", 0x7B6B1, 0xFFFF850429892530),
    ("Wdf01000", 0x7B47A, 0xFFFF8504298925A0),
    ("Wdf01000", 0x8299E, 0xFFFF850429892630),
    ("Wdf01000", 0xCC5F, 0xFFFF850429892660),
    ("Wdf01000", 0xA866, 0xFFFF8504298926D0),
    ("nt", 0x252F55, 0xFFFF850429892730),
]
AMDPPM_FUNCTIONS = ["WriteIoMemRawEx", "WriteGenAddrEx", "WriteGenAddrMaybeHiddenEx", "InitAcpiCpc",
                    "ProcLibDeviceStart", "EvtDevicePrepareHardware"]


@pytest.fixture(scope="module")
def crash():
    target = open_dump(DUMP)
    mapped = {name: harness.MappedPe(path) for name, path in STORE_IMAGES.items()}
    views = []
    for module in target.modules():
        pe = mapped.get(module.name)
        if pe is not None and pe.size == module.size:
            views.append(ImageView(module.name, module.base, module.size, pe.read, tuple(pe.exception_directory)))
        else:
            views.append(ImageView(module.name, module.base, module.size,
                                   unavailable=f"{module.image} is not in the symbol store"))

    def images(address):
        return next((view for view in views if view.contains(address)), None)

    context = target.read(target.bugcheck().parameters[3], 0x100)
    registers = {name: struct.unpack_from("<Q", context, CONTEXT_RAX + 8 * index)[0]
                 for index, name in enumerate(CONTEXT_REGISTERS)}
    registers["rip"] = struct.unpack_from("<Q", context, CONTEXT_RIP)[0]
    yield target, images, registers
    target.close()


def test_the_exception_context_unwinds_through_amdppm_and_wdf_into_nt(crash):
    target, images, registers = crash
    result = unwind("x64", registers, target.read, images)
    got = [(frame.image, frame.ip - images(frame.ip).base, frame.child_sp) for frame in result.frames]
    assert got == EXPECTED
    assert all(frame.method == UNWIND_DATA for frame in result.frames[1:])
    assert [frame.return_address for frame in result.frames[:-1]] == [frame.ip for frame in result.frames[1:]]
    assert result.stop.reason == IMAGE_UNAVAILABLE and result.stop.frame == 16
    assert result.stop.message == "the image of nt is not at hand: ntoskrnl.exe is not in the symbol store"
    # the scan of the rest of the stack starts where the unwind stopped and is labelled so
    stack_top, stack_size = target.crash_facts().stack
    scan = scan_below(result, target.read, images, stack_top + stack_size)
    assert scan and scan[0].stack_address >= result.last_sp and {entry.method for entry in scan} == {"scan"}


def disassembly_before(image: str, rva: int) -> str:
    """llvm-objdump's listing of the bytes just before ``rva`` (64 bytes are enough to synchronise)."""
    address = PREFERRED_BASE[image] + rva
    return subprocess.run(["llvm-objdump", "-d", f"--start-address={address - 64:#x}", f"--stop-address={address:#x}",
                           STORE_IMAGES[image]], capture_output=True, text=True, check=True).stdout


def guard_dispatch_slot(image: str) -> int:
    """The image's GuardCFCheckDispatch pointer (llvm-readobj's reading of its load configuration)."""
    output = subprocess.run(["llvm-readobj", "--coff-load-config", STORE_IMAGES[image]], capture_output=True,
                            text=True, check=True).stdout
    return int(re.search(r"GuardCFCheckDispatch: (0x[0-9A-Fa-f]+)", output).group(1), 16)


@pytest.mark.skipif(shutil.which("llvm-objdump") is None or shutil.which("llvm-readobj") is None,
                    reason="llvm-objdump or llvm-readobj is not installed")
def test_every_return_address_follows_a_call_in_llvms_disassembly():
    """The instruction that ends at each return address (frames 1 to 15, in the images at hand) is a
    call; where it is direct, its target is at or before the frame below's ip (the callee's start).
    Calls through the Control Flow Guard dispatch pointer (``call [rip+x]``, 6 bytes in the file) are
    rewritten by the kernel's loader into a 5-byte direct call and a 1-byte nop (Microsoft, "Mitigating
    Spectre variant 2 with Retpoline on Windows"; the images carry the Dynamic Value Relocation Table
    for it), so their return address is one byte before the end of the file's instruction."""
    for number in range(1, 16):
        image, rva, _ = EXPECTED[number]
        address = PREFERRED_BASE[image] + rva
        listing = disassembly_before(image, rva + 1).splitlines()
        instructions = [line for line in listing if re.match(r"\s*[0-9a-f]+:", line)]
        last = [line for line in instructions if int(line.split(":")[0], 16) < address][-1]
        end = int(last.split(":")[0], 16) + len(last.split(":", 1)[1].split("\t")[0].split())
        assert "call" in last, (number, last)
        if end == address + 1:
            assert f"# {guard_dispatch_slot(image):#x}" in last and last.split(":", 1)[1].split()[:2] == ["ff", "15"]
            continue
        assert end == address, (number, last)
        target = re.search(r"call\S*\s+0x([0-9a-f]+)", last)
        below_image, below_rva, _ = EXPECTED[number - 1]
        if target and below_image == image:
            assert int(target.group(1), 16) <= PREFERRED_BASE[image] + below_rva


@pytest.mark.skipif(shutil.which("llvm-symbolizer") is None or not os.path.exists(AMDPPM_PDB),
                    reason="llvm-symbolizer or amdppm.pdb is not at hand")
def test_amdppm_frames_are_the_functions_its_pdb_names(tmp_path):
    for source in (STORE_IMAGES["amdppm"], AMDPPM_PDB):
        shutil.copy(source, tmp_path)
    addresses = [f"{PREFERRED_BASE['amdppm'] + rva - (1 if number else 0):#x}"
                 for number, (image, rva, _) in enumerate(EXPECTED) if image == "amdppm"]
    output = subprocess.run(["llvm-symbolizer", f"--obj={tmp_path / 'amdppm.sys'}", *addresses],
                            capture_output=True, text=True, check=True).stdout
    names = [line for line in output.splitlines() if line and not line.startswith("??")]
    assert names == AMDPPM_FUNCTIONS


@pytest.mark.skipif(shutil.which("llvm-objdump") is None, reason="llvm-objdump is not installed")
def test_version_2_epilogue_lists_of_a_real_msvc_image_match_llvms_disassembly():
    """amdppm.sys (MSVC) uses version 2 unwind info for most functions. Every epilogue its UWOP_EPILOG
    codes list, as decoded here, is in LLVM's disassembly a run of pops ending with ret exactly at the
    listed start plus the listed size."""
    from pykd_ext.unwind import x64
    pe = harness.MappedPe(STORE_IMAGES["amdppm"])
    view = pe.view("amdppm", 0)
    listing = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", STORE_IMAGES["amdppm"]],
                             capture_output=True, text=True, check=True).stdout
    instructions = {}
    for line in listing.splitlines():
        match = re.match(r"\s*([0-9a-f]+):\s+(\S+)", line)
        if match:
            instructions[int(match.group(1), 16) - PREFERRED_BASE["amdppm"]] = match.group(2)
    ordered = sorted(instructions)
    position = {rva: index for index, rva in enumerate(ordered)}
    table, size = pe.exception_directory
    checked = 0
    for offset in range(0, size, 12):
        entry = x64.RuntimeFunction(*struct.unpack_from("<III", pe.mapped, table + offset))
        info = x64.read_unwind_info(view, entry.unwind_info)
        for start, length in info.epilogue_starts(entry.end):
            assert start in position, f"{start:#x} is not an instruction boundary"
            run = []
            index = position[start]
            while ordered[index] < start + length:
                run.append(instructions[ordered[index]])
                index += 1
            assert ordered[index] == start + length, f"the epilogue at {start:#x} does not end at its size"
            assert run[-1].startswith("ret") and all(mnemonic.startswith("pop") for mnemonic in run[:-1]), (start, run)
            checked += 1
    assert checked > 400


ARM64_DUMP = os.path.join(SHARED, "samples", "triage_arm64.dmp")
# ARM64_NT_CONTEXT (winnt.h): X0..X28 from 0x8, Fp 0xF0, Lr 0xF8, Sp 0x100, Pc 0x108; the dump header's
# ContextRecord is at 0x348 (../shared/reference/arm64-kernel.md).
ARM64_CONTEXT_AT = 0x348


@pytest.mark.skipif(not os.path.exists(ARM64_DUMP), reason="the real ARM64 small dump is not beside the checkout")
def test_the_arm64_small_dump_unwinds_by_its_frame_records():
    """No ARM64 image is at hand: the walk follows the frame records of the dump's stack copy. What is
    checked is what the dump itself shows: every record lies in the stack copy, above the one before,
    every return address lies in a loaded image, and the chain ends at a frame pointer of 0."""
    target = open_dump(ARM64_DUMP)
    try:
        with open(ARM64_DUMP, "rb") as handle:
            handle.seek(ARM64_CONTEXT_AT)
            context = handle.read(0x110)
        registers = {f"x{n}": struct.unpack_from("<Q", context, 8 + 8 * n)[0] for n in range(19, 29)}
        registers.update(fp=struct.unpack_from("<Q", context, 0xF0)[0], lr=struct.unpack_from("<Q", context, 0xF8)[0],
                         sp=struct.unpack_from("<Q", context, 0x100)[0], pc=struct.unpack_from("<Q", context, 0x108)[0])
        assert dict(target.crash_facts().registers)["pc"] == registers["pc"]
        views = [ImageView(module.name, module.base, module.size, unavailable="no ARM64 image on the symbol path")
                 for module in target.modules()]

        def images(address):
            return next((view for view in views if view.contains(address)), None)

        stack_top, stack_size = target.crash_facts().stack
        result = unwind("arm64", registers, target.read, images, stack_limits=(stack_top, stack_top + stack_size))
    finally:
        target.close()
    assert result.complete and result.stop.message == "the frame pointer is 0: the end of the frame chain"
    assert len(result.frames) >= 3
    assert all(frame.method == "frame pointer chain" for frame in result.frames[1:])
    assert all(images(frame.ip) is not None for frame in result.frames)
    records = [frame.child_sp - 16 for frame in result.frames[1:]]
    assert records == sorted(records) and all(stack_top <= record < stack_top + stack_size for record in records)
