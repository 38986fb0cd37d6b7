"""What vertarget says beyond the dump header: the kernel's build string and the uptime.

Expected values come from the files themselves (the build string found in the dump's bytes) and from the
kernels' symbol tables (KUSER_SHARED_DATA.InterruptTime at +0x8), not from leakhunt's reader."""
import os
import re
import struct

import pytest

from mocks.scenarios import case_0x76
from pykd_ext.analyses import analyze
from pykd_ext.render.text import render_text
from pykd_ext.sources import open_dump
from pykd_ext.targets.snapshot import SnapshotTarget

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
SAMPLES = [os.path.join(SHARED, "samples", name) for name in ("triage_x64.dmp", "triage_arm64.dmp")]
needs_samples = pytest.mark.skipif(not os.path.exists(SAMPLES[0]), reason="the real sample dumps are not here")


@needs_samples
@pytest.mark.parametrize("path", SAMPLES, ids=["x64", "arm64"])
def test_the_real_small_dumps_say_who_built_their_kernel(path):
    with open(path, "rb") as handle:
        content = handle.read()
    # A build lab string as the kernel keeps it: "<build>.<revision>.<arch>fre.<branch>.<date>", NUL-ended.
    found = re.search(rb"(?<![0-9])(\d{5}\.\d+\.(?:amd64|arm64)fre\.[\x21-\x7e]+)\0", content)
    expected = found.group(1).decode("ascii")
    target = open_dump(path)
    try:
        report = analyze(target)
    finally:
        target.close()
    assert report.build_lab == expected and expected.startswith(str(report.build))
    assert f"Built by: {expected}" in render_text(report)


def test_the_uptime_is_the_interrupt_time():
    data = case_0x76("x64", "irp").data
    page = bytearray(0x1000)
    struct.pack_into("<Ii", page, 0x8, 186_400_000 & 0xFFFFFFFF, 186_400_000 >> 32)  # 18.64 s in 100 ns units
    data.pages[0xFFFFF78000000000] = bytes(page)
    data.physical[0xFFFFF78000000000] = max(data.physical.values()) + 0x1000
    report = analyze(SnapshotTarget(data))
    assert report.uptime_seconds == pytest.approx(18.64)
    assert "System uptime: 0 days 0:00:18.640" in render_text(report)
    assert report.as_dict()["system"]["uptime_seconds"] == pytest.approx(18.64)


def test_no_uptime_or_build_string_where_the_source_has_none():
    report = analyze(SnapshotTarget(case_0x76("x64", "irp").data))
    assert report.uptime_seconds is None and report.build_lab is None
    assert "System uptime" not in render_text(report) and "Built by" not in render_text(report)
