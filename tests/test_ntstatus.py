"""NTSTATUS names: values from Microsoft's documentation (MS-ERREF 2.3.1, and the bug check reference's
own examples), not read back from leakhunt's table."""
from pykd_ext.ntstatus import status_of, status_text


def test_documented_values_are_named():
    # Values as MS-ERREF 2.3.1 lists them.
    assert status_text(0xC0000005) == "c0000005 STATUS_ACCESS_VIOLATION"
    assert status_text(0xC0000006) == "c0000006 STATUS_IN_PAGE_ERROR"
    assert status_text(0x80000003) == "80000003 STATUS_BREAKPOINT"
    assert status_text(0xC000001D) == "c000001d STATUS_ILLEGAL_INSTRUCTION"
    assert status_text(0xC0000094) == "c0000094 STATUS_INTEGER_DIVIDE_BY_ZERO"
    assert status_text(0xC0000409) == "c0000409 STATUS_STACK_BUFFER_OVERRUN"


def test_a_sign_extended_parameter_is_the_same_status():
    """Bug check parameters are 64-bit: 0x7E's P1 is written ffffffff`c0000005 by WinDbg."""
    assert status_of(0xFFFFFFFFC0000005) == status_of(0xC0000005) is not None
    assert status_of(0x1C0000005) is None  # not a sign extension: not a status


def test_an_unknown_status_says_its_severity_and_whether_a_customer_made_it():
    assert status_text(0xE0434352) == "e0434352 (error, facility 0x43, customer-defined)"  # the CLR's exception
    assert status_text(0x40001234) == "40001234 (informational, facility 0x0)"
