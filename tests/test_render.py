"""Text and DML rendering: links on what WinDbg can act on, escaping, aligned tables."""
import re

from mocks.scenarios import case_0x76
from pykd_ext.analyses import analyze
from pykd_ext.render.text import render_dml, render_text
from pykd_ext.targets.snapshot import SnapshotTarget


def report_for(kind="irp", arch="x64"):
    scenario = case_0x76(arch, kind, noise_pages=2)
    return scenario, analyze(SnapshotTarget(scenario.data))


def strip_links(dml):
    """The DML report as plain text, without the MDL table's column of !pool links (DML only)."""
    text = re.sub(r'<link cmd="[^"]*">(.*?)</link>', r"\1", dml)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    sections = text.split("\n\n")
    for index, section in enumerate(sections):
        if section.startswith("MDLs\n"):
            lines = section.split("\n")
            lines[1] = re.sub(r" +pool$", "", lines[1])
            lines[2] = re.sub(r" +-+$", "", lines[2])
            sections[index] = "\n".join(re.sub(r" +!pool$", "", line) for line in lines)
    return "\n\n".join(sections)


def test_dml_links_the_objects_it_names():
    scenario, report = report_for()
    dml = render_dml(report)
    irp = scenario.expected["irps"][0]
    mdl = scenario.expected["locked_mdls"][0]
    assert f'<link cmd="!irp {irp:#x} 1">' in dml
    assert f'<link cmd="dt nt!_MDL {mdl:#x}">' in dml
    assert f'<link cmd="!pool {mdl:#x} 2">!pool</link>' in dml
    assert '<link cmd="lmvm leakyflt">leakyflt.sys</link>' in dml
    assert '<link cmd="!thread ' in dml and '<link cmd="!drvobj ' in dml and '<link cmd="!process ' in dml


def test_dml_without_its_markup_is_the_text_report():
    _, report = report_for()
    assert strip_links(render_dml(report)) == render_text(report)


def test_text_has_windbg_style_addresses():
    scenario, report = report_for()
    text = render_text(report)
    process = scenario.expected["process"]
    assert f"{process >> 32:08x}`{process & 0xFFFFFFFF:08x}" in text
    _, x86 = report_for(arch="x86")
    assert "`" not in render_text(x86).split("VERDICT")[0].split("P1")[1].split("\n")[0]


def test_markup_characters_in_target_strings_are_escaped():
    _, report = report_for()
    report.irps[0].file_name = '<b>&"x"'
    dml = render_dml(report)
    assert "&lt;b&gt;&amp;&quot;x&quot;" in dml and "<b>" not in dml
