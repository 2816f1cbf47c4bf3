import pytest

from services.contracts.page_spec import PageSpec, parse_page_spec


@pytest.mark.parametrize("text, ranges, normal", [
    ("1", ((1, 1),), "1"),
    ("1-3,5", ((1, 3), (5, 5)), "1-3,5"),
    (" 2 - 4 , 7- ", ((2, 4), (7, None)), "2-4,7-"),
    ("3-3", ((3, 3),), "3"),
    ("1,2,3", ((1, 1), (2, 2), (3, 3)), "1,2,3"),
])
def test_valid_specs(text, ranges, normal):
    spec = parse_page_spec(text)
    assert spec.ranges == ranges and str(spec) == normal and parse_page_spec(str(spec)) == spec


@pytest.mark.parametrize("text, says", [
    ("", "empty"), ("  ", "empty"), ("0", "from 1"), ("0-2", "from 1"), ("5-3", "backwards"),
    ("1-3,2", "overlaps"), ("3,1", "overlaps"), ("2-,5", "overlaps"), ("1,1", "overlaps"),
    ("a", "not a page"), ("1-2-3", "not a page"), ("-3", "not a page"), ("1,,2", "not a page"), ("1.5", "not a page"),
    ("1234567", "not a page"), ("1;2", "not a page"),
])
def test_invalid_specs_say_why(text, says):
    with pytest.raises(ValueError, match=says):
        parse_page_spec(text)


def test_select_and_count():
    spec = parse_page_spec("2-3,5-")
    assert spec.select(7) == [2, 3, 5, 6, 7]
    assert spec.count_at_most(7) == 5 and spec.count_at_most(3) == 2 and spec.count_at_most(1) == 0
    assert PageSpec(((1, 1),)).select(1) == [1]
    with pytest.raises(ValueError, match="asks for page 5; the document has 4 pages"):
        spec.select(4)
    with pytest.raises(ValueError, match="asks for page 2; the document has 1 page$"):
        parse_page_spec("1-2").select(1)
