"""Bucket keys from real reports: code, variant where it is a different bug, culprit image; no addresses."""
import os
import re

import pytest

from pykd_ext.fleet.analysis import analyze_file
from pykd_ext.fleet.buckets import BUCKET_VERSION, bucket_hash, bucket_key, variant_of
from pykd_ext.fleet.inputs import STATUS_ANALYZED, STATUS_CRASHED, STATUS_INPUT_ERROR, STATUS_TIMEOUT
from test_fleet_inputs import SNAPSHOTS, write_case


@pytest.fixture
def folder(tmp_path):
    return str(tmp_path)


def key_of(path):
    _, report, _ = analyze_file(path)
    return bucket_key(STATUS_ANALYZED, report)


@pytest.mark.parametrize("snapshot, key", [
    ("0x76-irp-x64.snap", "0x76_0_leakyflt.sys"),
    ("0x76-irp-x86.snap", "0x76_0_leakyflt.sys"),
    ("0x76-orphan-x64.snap", "0x76_0_NO_SUSPECT"),
    ("0x76-nothing-x64.snap", "0x76_0_NO_SUSPECT"),
    ("0x76-unlock-x64.snap", "0x76_1_leakyflt.sys"),
    ("0xcb-current-x64.snap", "0xcb_current_leakyflt.sys"),
    ("0xcb-legacy-x64.snap", "0xcb_legacy_leakyflt.sys"),
    ("0xcb-nothing-x64.snap", "0xcb_current_NO_SUSPECT"),
    ("0x4e-07-x64.snap", "0x4e_7_leakyflt.sys"),
    ("0xd9-1-x64.snap", "0xd9_1_leakyflt.sys"),
])
def test_bundled_cases_fall_into_their_buckets(snapshot, key):
    assert key_of(os.path.join(SNAPSHOTS, snapshot)) == key


def test_lock_entry_bug_checks_have_no_variant():
    key = key_of(os.path.join(SNAPSHOTS, "0x153-image-lock-x64.snap"))
    assert re.fullmatch(r"0x153_[a-z0-9_.-]+\.sys", key), key


def test_the_same_bug_with_other_counts_and_objects_is_the_same_bucket(folder):
    _, report_one, _ = analyze_file(write_case(os.path.join(folder, "one.dmp"), leaked=1))
    _, report_two, _ = analyze_file(write_case(os.path.join(folder, "two.dmp"), leaked=5))
    assert report_one["bugcheck"]["parameters"][2]["value"] != report_two["bugcheck"]["parameters"][2]["value"]  # P3
    assert len(report_one["irps"]) != len(report_two["irps"])
    assert bucket_key(STATUS_ANALYZED, report_one) == bucket_key(STATUS_ANALYZED, report_two) == "0x76_0_leakyflt.sys"


def test_keys_hold_no_addresses_counts_or_paths():
    for name in sorted(os.listdir(SNAPSHOTS)):
        key = key_of(os.path.join(SNAPSHOTS, name))
        assert not re.search(r"0x[0-9a-f]{5,}|ffff|/|\\", key), (name, key)


def minimal_report(code, parameters=(0, 0, 0, 0), variant="", suspects=()):
    return {"bugcheck": {"code": f"{code:#x}", "variant": variant,
                         "parameters": [{"index": i + 1, "value": f"{p:#x}"} for i, p in enumerate(parameters)]},
            "suspects": list(suspects)}


def test_the_m_form_folds_into_its_base_code_and_images_are_lower_case():
    suspect = {"driver": "\\Driver\\Foo", "image": "FOO.SYS", "confidence": "low"}
    assert bucket_key(STATUS_ANALYZED, minimal_report(0x1000007E, suspects=[suspect])) == "0x7e_foo.sys"


def test_a_suspect_without_an_image_is_named_by_its_driver():
    suspect = {"driver": "\\Driver\\Weird Name", "image": None, "confidence": "medium"}
    assert bucket_key(STATUS_ANALYZED, minimal_report(0xD1, suspects=[suspect])) == "0xd1_weird_name"


def test_variants_are_only_where_the_catalog_has_forms():
    assert variant_of(minimal_report(0x76, (1, 0, 0, 0))) == "1"
    assert variant_of(minimal_report(0x4E, (0x99, 0, 0, 0))) == "99"
    assert variant_of(minimal_report(0xCB, (0x1000, 0x2000, 0, 0))) == "legacy"
    assert variant_of(minimal_report(0xD1)) is None
    assert variant_of(minimal_report(0xDEAD0001)) is None  # not in the catalog


def test_failures_have_their_own_buckets():
    assert bucket_key(STATUS_INPUT_ERROR, None) == "INPUT_ERROR"
    assert bucket_key(STATUS_TIMEOUT, None) == "TIMEOUT"
    assert bucket_key(STATUS_CRASHED, None) == "CRASHED"


def test_bucket_hashes_are_stable_per_key_and_rules_version():
    assert BUCKET_VERSION >= 1
    assert bucket_hash("0x76_0_leakyflt.sys") == bucket_hash("0x76_0_leakyflt.sys")
    assert bucket_hash("0x76_0_leakyflt.sys") != bucket_hash("0x76_1_leakyflt.sys")
    assert re.fullmatch(r"[0-9a-f]{16}", bucket_hash("TIMEOUT"))
