"""`--grid` items (SPEC §7.7): values, decimal ranges, point order and names, and every error."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from dipm_lang.errors import UsageError, render
from dipm_lang.sweeps.grid import GridError, count_points, expand, parse_grid
from dipm_lang.sweeps.points import Point, parse_point_name

PARAMS = ("t", "lam", "w")


def values(item: str, **kwargs) -> list[float]:
    (axis,) = parse_grid([item], **kwargs)
    return list(axis.values)


def grid_error(items: list[str], **kwargs) -> GridError:
    with pytest.raises(GridError) as info:
        parse_grid(items, **kwargs)
    return info.value


def caret(error: GridError) -> str:
    """The characters of the item the caret line underlines."""
    lines = str(error).split("\n")
    shown, marks = lines[1], lines[2]
    start = marks.index("^")
    return shown[start:len(marks)]


# ---------------------------------------------------------------- values


def test_list_values_are_floats_in_the_order_given():
    assert values("t=0.5,0,1e-3,-2") == [0.5, 0.0, 0.001, -2.0]
    assert all(type(v) is float for v in values("t=1,2"))


def test_spaces_around_values_are_allowed():
    assert values("t= 0.1 , 0.2") == [0.1, 0.2]


def test_decimal_range_0_1_01_has_exactly_eleven_points_with_decimal_values():
    got = values("t=0:1:0.1")
    expected = [float(Decimal(i) / Decimal(10)) for i in range(11)]  # i/10, correctly rounded
    assert got == expected
    assert len(got) == 11
    assert repr(got[3]) == "0.3" and repr(float(Decimal("0.3"))) == "0.3"
    assert 3 * 0.1 != got[3]  # what binary accumulation would have given instead
    assert got[-1] == 1.0


def test_stop_is_included_only_when_reached_exactly_in_decimal():
    assert values("t=0:1:0.3") == [0.0, 0.3, 0.6, 0.9]
    assert values("t=0:0.9:0.3") == [0.0, 0.3, 0.6, 0.9]  # float stepping would stop at 0.6000000000000001
    assert values("t=0:0.89:0.3") == [0.0, 0.3, 0.6]


def test_negative_exponent_and_single_value_ranges():
    assert values("t=-1:1:0.5") == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert values("t=1e-3:3e-3:1e-3") == [0.001, 0.002, 0.003]
    assert values("t=2:2:1") == [2.0]


def test_points_are_the_product_in_grid_order_last_fastest():
    axes = parse_grid(["t=0,0.5", "lam=1:3:1", "w=7"], parameters=PARAMS)
    points = expand(axes)
    expected = list(itertools.product([0.0, 0.5], [1.0, 2.0, 3.0], [7.0]))
    assert [tuple(v for _, v in p.params) for p in points] == expected
    assert [p.index for p in points] == list(range(6))
    assert count_points(axes) == 6
    assert points[0].name == "t=0.0,lam=1.0,w=7.0"
    assert points[4].name == "t=0.5,lam=2.0,w=7.0"


def test_folder_names_use_repr_of_the_float():
    point = Point((("t", 0.3), ("lam", 1e-05), ("w", 100.0)))
    assert point.name == f"t={0.3!r},lam={1e-05!r},w={100.0!r}" == "t=0.3,lam=1e-05,w=100.0"


def test_point_names_read_back():
    point = expand(parse_grid(["t=0:1:0.1", "lam=-2.5,1e20"]))[7]
    assert parse_point_name(point.name) == point.values
    for not_a_point in ("notes.txt", "t=0.30", "t=1", "t=nan", "t=0.5,t=0.5", "=0.5", "t=0.5,"):
        assert parse_point_name(not_a_point) is None, not_a_point


def test_continuous_ranges_only_with_search():
    (axis,) = parse_grid(["t=0:1"], search=True)
    assert axis.continuous and (axis.low, axis.high) == (0.0, 1.0)
    error = grid_error(["t=0:1"])
    assert "--search" in str(error) and caret(error) == "0:1"
    with pytest.raises(GridError, match="continuous"):
        expand([axis])


def test_point_cap_counts_before_materialising_and_can_be_raised():
    error = grid_error(["t=0:1:0.001", "w=1,2"])
    assert "2002 points" in str(error) and "--max-points" in error.hint
    assert count_points(parse_grid(["t=0:1:0.001", "w=1,2"], max_points=2002)) == 2002
    huge = grid_error(["t=0:1e30:1e-30"])  # 1e60 values: refused without building them
    assert "more than the limit" in str(huge)


# ---------------------------------------------------------------- errors point at the culprit


@pytest.mark.parametrize("item, message, culprit", [
    ("t", "expected NAME=VALUES", "t"),
    ("=1", "name is missing", "="),
    ("1t=1", "not a parameter name", "1t"),
    ("t=", "no values", "="),
    ("t=1,,2", "empty value", ","),
    ("t=1,x,2", "'x' is not a number", "x"),
    ("t=0:1:-0.1", "STEP must be positive", "-0.1"),
    ("t=0:1:0", "STEP must be positive", "0"),
    ("t=1:0:0.1", "the range is empty", "1:0"),
    ("t=0:1,2", "either a list", ":"),
    ("t=0:1:0.1:2", "more than three parts", ":"),
    ("t=nan", "not a finite number", "nan"),
    ("t=1,Infinity", "not a finite number", "Infinity"),
    ("t=1e400", "too large for a float", "1e400"),
    ("t=0:1e400:1", "too large for a float", "1e400"),
    ("t=0.5,0.50", "0.50 repeats 0.5", "0.50"),
    ("t=0:1e-400:1e-401", "below float precision", "1e-401"),
])
def test_syntax_errors_name_the_item_and_underline_the_culprit(item, message, culprit):
    error = grid_error([item], parameters=PARAMS)
    assert message in str(error)
    assert f"--grid {item}" in str(error)
    assert caret(error) == culprit
    assert isinstance(error, UsageError) and error.exit_code == 2


def test_unknown_name_suggests_the_nearest_parameters():
    error = grid_error(["lamb=1,2"], parameters=PARAMS)
    assert "no number parameter 'lamb'" in str(error) and "did you mean 'lam'" in str(error)
    assert "lam, t, w" in error.hint
    assert caret(error) == "lamb"


def test_a_name_swept_twice_is_an_error_on_the_second_item():
    error = grid_error(["t=1,2", "lam=1", "t=3"], parameters=PARAMS)
    assert "already swept by --grid #1" in str(error) and "(--grid #3)" in str(error)
    assert caret(error) == "t"


def test_no_grid_at_all():
    with pytest.raises(GridError, match="at least one --grid"):
        parse_grid([])


def test_low_must_be_below_high():
    error = grid_error(["t=1:1"], search=True)
    assert "LOW must be below HIGH" in str(error)


def test_errors_render_through_dipm_with_their_caret():
    error = grid_error(["t=0:1:0.1", "w=0:1:-1"])
    text = render(error)
    assert text.startswith("error: in --grid w=0:1:-1 (--grid #2): STEP must be positive (got -1)")
    assert text.splitlines()[2].rstrip().endswith("^~")


def test_a_very_long_item_is_windowed_around_the_caret():
    item = "t=" + ",".join(str(i) for i in range(200)) + ",x"
    error = grid_error([item])
    lines = str(error).split("\n")
    assert all(len(line) < 400 for line in lines)
    assert caret(error) == "x"
