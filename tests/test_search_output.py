"""Parsing ``!search`` output: the documented x86 samples, x64 columns, missing Va, one-bit neighbours."""
import pytest

from pykd_ext.search_output import SearchOutputError, parse_search_output

# DOCS-SEARCH (windows-kernel.md §2.1), exactly as documented, trailing blanks included.
DOCS_SAMPLE = """kd> !search 0f100f0f 0 2370 237f
Searching PFNs in range 00002370 - 0000237F for [0F100F0F - 0F100F0F]

Pfn      Offset   Hit      Va       Pte      
- - - - - - - - - - - - - - - - - - -
0000237B 00000368 0F000F0F 01003368 C0004014 
0000237C 00000100 0F100F0F 01004100 C0004014 
...
Search done.
"""

# DOCS-CB-WALK: no range given, Data shown sign-extended; 16000001 is a one-bit neighbour.
CB_WALK_SAMPLE = """kd> !search 81861788
Searching PFNs in range 00000001 - 0000FF76 for [FFFFFFFF81861788 - FFFFFFFF81861788]

Pfn      Offset   Hit      Va       Pte
- - - - - - - - - - - - - - - - - - - - - - - - - - -
000008A7 00000B0C 81861788 808A7B0C C020229C
00000A04 00000224 16000001 80A04224 C0202810
00001732 000009B4 81861788 817329B4 C0205CC8
"""


def test_documented_x86_sample():
    output = parse_search_output(DOCS_SAMPLE)
    assert output.pfn_range == (0x2370, 0x237F)
    assert output.data_range == (0x0F100F0F, 0x0F100F0F)
    assert output.done
    first, second = output.rows
    assert (first.pfn, first.offset, first.hit, first.va, first.pte) == (0x237B, 0x368, 0x0F000F0F, 0x01003368,
                                                                         0xC0004014)
    assert first.physical == 0x237B368
    assert (second.hit, second.va) == (0x0F100F0F, 0x01004100)
    assert output.other_lines == ["..."]


def test_one_bit_neighbours_are_rows_too_and_an_unfinished_search_is_flagged():
    output = parse_search_output(CB_WALK_SAMPLE)
    assert output.data_range == (0xFFFFFFFF81861788, 0xFFFFFFFF81861788)
    assert [row.hit for row in output.rows] == [0x81861788, 0x16000001, 0x81861788]
    assert [row.va for row in output.rows if row.hit == 0x81861788] == [0x808A7B0C, 0x817329B4]
    assert not output.done  # no "Search done." line


@pytest.mark.parametrize("hit, va, pte", [
    ("ffffa58a`1c003308", "ffffa58a`1c003308", "fffff6d2`c50e0018"),
    ("ffffa58a1c003308", "ffffa58a1c003308", "fffff6d2c50e0018"),
    ("FFFFA58A`1C003308", "FFFFA58A`1C003308", "FFFFF6D2`C50E0018"),
])
def test_x64_columns_with_or_without_backtick(hit, va, pte):
    text = ("Searching PFNs in range 00001000 - 00004FFF for [FFFFA58A1C003308 - FFFFA58A1C003308]\n\n"
            "Pfn      Offset   Hit               Va                Pte\n- - - - - -\n"
            f"000019A7 00000308 {hit} {va} {pte}\nSearch done.\n")
    (row,) = parse_search_output(text).rows
    assert (row.pfn, row.offset, row.hit, row.va, row.pte) == (0x19A7, 0x308, 0xFFFFA58A1C003308,
                                                               0xFFFFA58A1C003308, 0xFFFFF6D2C50E0018)


@pytest.mark.parametrize("line, va, pte", [
    # Va blank: the fourth column starts where Pte does.
    ("0000237D 00000100 0F100F0F          C0004014 ", None, 0xC0004014),
    ("000019A7 00000308 ffffa58a`1c003308                   fffff6d2`c50e0018", None, 0xFFFFF6D2C50E0018),
    # Pte blank: the fourth column starts where Va does.
    ("0000237D 00000100 0F100F0F 01004100          ", 0x01004100, None),
    ("000019A7 00000308 ffffa58a`1c003308 ffffa58a`1c003308", 0xFFFFA58A1C003308, None),
    # Both blank, or printed as zero.
    ("0000237D 00000100 0F100F0F", None, None),
    ("0000237D 00000100 0F100F0F 00000000 00000000", None, None),
])
def test_missing_virtual_address(line, va, pte):
    text = "Searching PFNs in range 00002370 - 0000237F for [0F100F0F - 0F100F0F]\n" + line + "\nSearch done.\n"
    (row,) = parse_search_output(text).rows
    assert (row.va, row.pte) == (va, pte)


def test_error_text_is_kept_and_rows_need_a_header():
    text = ("Searching PFNs in range 00000001 - 0000FF76 for [81861788 - 81861788]\n"
            "Unable to read MmPfnDatabase\n")
    output = parse_search_output(text)
    assert output.rows == [] and not output.done
    assert output.other_lines == ["Unable to read MmPfnDatabase"]
    with pytest.raises(SearchOutputError):
        parse_search_output("No export search found\n")
    with pytest.raises(SearchOutputError):  # rows before (without) a header are not !search output
        parse_search_output("0000237B 00000368 0F000F0F 01003368 C0004014\n")


def test_lines_that_only_look_hexadecimal_are_not_rows():
    text = ("Searching PFNs in range 00002370 - 0000237F for [0F100F0F - 0F100F0F]\n"
            "0000237B 00000368\n"  # too few columns
            "0000237B 00000368 0F000F0F 01003368 C0004014 00000000\n"  # too many
            "0000237B: 00000368 0F000F0F\n"  # not hexadecimal
            "Search done.\n")
    output = parse_search_output(text)
    assert output.rows == [] and output.done and len(output.other_lines) == 3
