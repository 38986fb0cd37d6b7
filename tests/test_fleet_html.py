"""report.html: self-contained, and rendered by a real headless Chromium with its buckets and charts."""
import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser

import pytest

from pykd_ext.fleet.html import render_html
from test_fleet_inputs import write_case
from test_fleet_local import triage


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def triaged(folder):
    """A run over dumps of three days and two buckets, plus a snapshot and a bad file."""
    inputs = os.path.join(folder, "in")
    os.mkdir(inputs)
    for number, day in enumerate((1, 1, 2, 3)):
        write_case(os.path.join(inputs, f"irp-{number}.dmp"), when=datetime(2026, 11, day, 9, tzinfo=timezone.utc))
    write_case(os.path.join(inputs, "orphan.dmp"), kind="orphan", when=datetime(2026, 11, 3, 9, tzinfo=timezone.utc))
    with open(os.path.join(inputs, "junk.dmp"), "wb") as handle:
        handle.write(b"<script>alert(1)</script>" * 10)
    out = os.path.join(folder, "out")
    assert triage([inputs, "--out", out]).returncode == 1
    return out


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def elements(html):
    parser = Elements()
    parser.feed(html)
    return parser.found


def test_the_page_needs_nothing_from_the_network(triaged):
    with open(os.path.join(triaged, "report.html"), encoding="utf-8") as handle:
        html = handle.read()
    for tag, attrs in elements(html):
        assert tag not in ("script", "link", "img", "iframe", "object", "embed"), tag
        assert "src" not in attrs, (tag, attrs)
        if "href" in attrs:  # only the inputs' own reports, beside the page
            assert tag == "a" and attrs["href"].startswith("reports/") and ":" not in attrs["href"], attrs
            assert os.path.isfile(os.path.join(triaged, attrs["href"])), attrs
    assert not re.search(r"url\(|@import", html)
    assert "<script>alert" not in html  # the input's bytes never reach the page unescaped


def test_each_bucket_links_its_inputs_reports_and_days_carry_the_year(triaged):
    with open(os.path.join(triaged, "report.html"), encoding="utf-8") as handle:
        html = handle.read()
    with open(os.path.join(triaged, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    links = [attrs["href"] for tag, attrs in elements(html) if tag == "a"]
    analyzed = [b for b in summary["buckets"] if b["bucket"].startswith("0x76")]
    expected = [report for bucket in analyzed for report in bucket["example_reports"]]
    assert expected and sorted(links) == sorted(expected)  # every analyzed example, to its own report
    for bucket in analyzed:
        for path, report in zip(bucket["examples"], bucket["example_reports"]):
            with open(os.path.join(triaged, report), encoding="utf-8") as handle:
                assert json.load(handle)["source"].startswith(os.path.basename(path))
    days = re.findall(r">(\d{4}-\d\d-\d\d)</text>", html)  # the day chart's labels, year included
    assert days == sorted(summary["per_day"]) and days[:3] == ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_the_day_chart_is_left_out_when_the_dumps_are_of_one_day():
    summary = {"inputs": 1, "by_status": {"analyzed": 1}, "leakhunt_version": "0", "bucket_version": 1,
               "written": "now", "per_day": {"2026-11-01": {"B": 1}},
               "buckets": [{"bucket": "B", "bucket_hash": "0" * 16, "count": 1, "share": 1.0, "first_seen": None,
                            "last_seen": None, "culprit_image": None, "culprit_driver": None, "confidence_min": None,
                            "confidence_max": None, "examples": ["/a.dmp"]}]}
    html = render_html(summary)
    assert 'id="bucket-chart"' in html and 'id="day-chart"' not in html


def test_headless_chromium_shows_the_buckets_and_the_charts(triaged, tmp_path):
    executable = browser()
    if executable is None:
        pytest.skip("no chromium is installed (apt-get install chromium); .ci/run installs it")
    page = "file://" + os.path.join(triaged, "report.html")
    result = subprocess.run([executable] + BROWSER_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    with open(os.path.join(triaged, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    found = elements(dom)
    rows = {attrs["data-bucket"] for tag, attrs in found if tag == "tr" and "data-bucket" in attrs}
    assert rows == {"0x76_0_leakyflt.sys", "0x76_0_NO_SUSPECT", "INPUT_ERROR"}
    bars = {attrs["data-bucket"]: int(attrs["data-count"]) for tag, attrs in found
            if tag == "rect" and attrs.get("class") == "bar"}
    assert bars == {b["bucket"]: b["count"] for b in summary["buckets"]} == \
        {"0x76_0_leakyflt.sys": 4, "0x76_0_NO_SUSPECT": 1, "INPUT_ERROR": 1}
    day_bars = [(attrs["data-day"], attrs["data-bucket"], int(attrs["data-count"])) for tag, attrs in found
                if tag == "rect" and attrs.get("class") == "day-bar"]
    assert ("2026-11-01", "0x76_0_leakyflt.sys", 2) in day_bars and ("2026-11-03", "0x76_0_NO_SUSPECT", 1) in day_bars
    assert {day for day, _, _ in day_bars} >= {"2026-11-01", "2026-11-02", "2026-11-03"}
    # And it is drawn: a screenshot of the page is a real image with content.
    shot = tmp_path / "page.png"
    subprocess.run([executable] + BROWSER_FLAGS + [f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1200,1400", page], capture_output=True, timeout=120)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10000
