"""The README's sample report is the command's real output on the bundled case it names."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_sample_report_is_what_the_command_prints():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    match = re.search(r"<!-- sample-report: leakhunt (.+?) -->\n```\n\$ leakhunt \1\n(.*?)```", readme, re.S)
    assert match, "the README's sample report block is missing"
    printed = subprocess.run([sys.executable, "-m", "pykd_ext"] + match.group(1).split(), cwd=ROOT,
                             capture_output=True, text=True).stdout  # a pipe: 100 columns
    assert match.group(2) == printed
