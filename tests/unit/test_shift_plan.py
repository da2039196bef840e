"""
Unit tests for the shift plan file (``_utils/shift_plan.py``): the format ops
export, and every way a bad file is refused with the row and field named.
"""

import pytest

import shift_plan

KNOWN = {"LON": {"sales", "support"}, "MAN": {"sales"}}
HEADER = "site,department,start,end,expected\n"


def csv(*rows, header=HEADER):
    return (header + "".join(r + "\n" for r in rows)).encode()


GOOD = csv(
    "LON,sales,2026-11-30T08:00:00Z,2026-11-30T12:00:00Z,40",
    "LON,sales,2026-11-30T12:00:00+00:00,2026-11-30T18:00:00Z,25",
    "LON,support,2026-11-30T09:00:00+01:00,2026-11-30T19:00:00+01:00,10",  # same span, other offset
    "MAN,sales,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,0",
)
T0 = 1_796_025_600.0  # 2026-11-30T08:00:00Z


def refused(data, known=KNOWN):
    with pytest.raises(shift_plan.PlanError) as err:
        shift_plan.parse(data, known)
    return err.value


def test_a_good_plan_parses_with_its_span_and_pairs():
    plan = shift_plan.parse(GOOD, KNOWN)
    assert plan["start"] == T0 and plan["end"] == T0 + 10 * 3600
    assert plan["pairs"] == [("LON", "sales"), ("LON", "support"), ("MAN", "sales")]
    assert len(plan["slots"]) == 4 and len(plan["digest"]) == 64
    look = shift_plan.Lookup([s[:5] for s in plan["slots"]])
    assert look.expected(("LON", "sales"), T0) == 40
    assert look.expected(("LON", "sales"), T0 + 4 * 3600 - 1) == 40
    assert look.expected(("LON", "sales"), T0 + 4 * 3600) == 25  # a slot's end belongs to the next
    assert look.expected(("LON", "sales"), T0 + 10 * 3600) is None  # past the plan
    assert look.expected(("LON", "billing"), T0) is None


def test_excel_exports_bom_semicolons_extra_columns_and_blank_lines():
    data = "\ufeffSite;Department;Start;End;Expected;Comment\n" \
        "LON;sales;2026-11-30T08:00:00Z;2026-11-30T18:00:00Z;3;early shift\n\n"
    plan = shift_plan.parse(data.encode(), KNOWN)
    assert plan["slots"][0][:5] == ("LON", "sales", T0, T0 + 36000, 3)


def test_unknown_department_and_site_name_row_and_field():
    err = refused(csv("LON,sales,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4",
                      "LON,sale,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4",
                      "PAR,sales,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4"))
    assert {(e["row"], e["field"]) for e in err.errors} == {(3, "department"), (4, "site")}
    assert "unknown department 'sale' at site LON" in str(err) and "row 3, department" in str(err)


def test_gap_between_slots_names_the_row_after_it():
    err = refused(csv("LON,sales,2026-11-30T08:00:00Z,2026-11-30T12:00:00Z,4",
                      "LON,sales,2026-11-30T13:00:00Z,2026-11-30T18:00:00Z,4"), {"LON": {"sales"}})
    assert [(e["row"], e["field"]) for e in err.errors] == [(3, "start")]
    assert "gap" in err.errors[0]["error"] and "2026-11-30T12:00:00Z" in err.errors[0]["error"]


def test_a_department_that_does_not_cover_the_plan_span_is_a_gap():
    err = refused(csv("LON,sales,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4",
                      "LON,support,2026-11-30T10:00:00Z,2026-11-30T16:00:00Z,4"))
    assert [(e["row"], e["field"]) for e in err.errors] == [(3, "end"), (3, "start")]


def test_overlap_and_duplicate_rows_are_refused():
    err = refused(csv("MAN,sales,2026-11-30T08:00:00Z,2026-11-30T12:00:00Z,4",
                      "MAN,sales,2026-11-30T11:00:00Z,2026-11-30T18:00:00Z,4",
                      "MAN,sales,2026-11-30T11:00:00Z,2026-11-30T18:00:00Z,4"), {"MAN": {"sales"}})
    assert [(e["row"], e["field"]) for e in err.errors] == [(3, "start"), (4, "start")]
    assert all("overlap" in e["error"] for e in err.errors)


@pytest.mark.parametrize(
    "row, field, words",
    [
        ("LON,sales,2026-11-30T08:00:00,2026-11-30T18:00:00Z,4", "start", "offset"),
        ("LON,sales,tomorrow,2026-11-30T18:00:00Z,4", "start", "not a valid start"),
        ("LON,sales,2026-11-30T18:00:00Z,2026-11-30T08:00:00Z,4", "end", "not after start"),
        ("LON,sales,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,-1", "expected", "between 0"),
        ("LON,sales,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4.5", "expected", "not a valid expected"),
        ("LON,,2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4", "department", "empty"),
    ],
)
def test_bad_fields(row, field, words):
    err = refused(csv(row))
    assert [(e["row"], e["field"]) for e in err.errors] == [(2, field)], err.errors
    assert words in err.errors[0]["error"]


def test_missing_columns_and_files_that_are_not_plans():
    err = refused(csv("LON,sales,2026-11-30T08:00:00Z,4", header="site,department,start,expected\n"))
    assert [(e["row"], e["field"]) for e in err.errors] == [(1, "end")]
    assert "no slot" in str(refused(HEADER.encode()))
    assert "not UTF-8" in str(refused(b"site,department\n\xff\xfe"))
    assert "over" in str(refused(b"x" * (shift_plan.MAX_BYTES + 1)))


def test_every_error_is_listed_not_just_the_first():
    rows = [f"LON,nope{i},2026-11-30T08:00:00Z,2026-11-30T18:00:00Z,4" for i in range(80)]
    err = refused(csv(*rows))
    assert err.total == 80 and len(err.errors) == shift_plan.MAX_ERRORS
    assert "80 error(s)" in str(err)


def test_without_a_reference_any_name_is_accepted():
    assert shift_plan.parse(csv("XYZ,anything,2026-11-30T08:00:00Z,2026-11-30T09:00:00Z,1"), None)["pairs"] == [
        ("XYZ", "anything")]


def test_gaps_are_found_in_the_same_pass_as_bad_rows_but_a_bad_row_is_no_gap():
    err = refused(csv("LON,sales,2026-11-30T08:00:00Z,2026-11-30T12:00:00Z,4",
                      "LON,sales,2026-11-30T12:00:00Z,2026-11-30T18:00:00Z,-4",
                      "LON,support,2026-11-30T08:00:00Z,2026-11-30T10:00:00Z,1"))
    assert [(e["row"], e["field"]) for e in err.errors] == [(3, "expected"), (4, "end")]
