"""Quantities are parsed exactly as Kubernetes parses them, so size comparisons agree with the API server."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshard.api.quantity import is_quantity, parse_quantity

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        ("1Ki", Decimal(1024)),
        ("10Gi", Decimal(10 * 2**30)),
        ("1.5Gi", Decimal("1.5") * 2**30),
        ("500m", Decimal("0.5")),
        ("1k", Decimal(1000)),
        ("2M", Decimal(2_000_000)),
        ("1E", Decimal("1e18")),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("+3", Decimal(3)),
        ("-3", Decimal(-3)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "10 Gi", "10GB", "1,5G", "200K", "ten", "1ki", "1e"])
def test_malformed_quantities_are_refused(text: str) -> None:
    assert not is_quantity(text)
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_integers_are_quantities_but_booleans_are_not() -> None:
    assert is_quantity(3)
    assert not is_quantity(True)
    assert not is_quantity(1.5)


def test_binary_and_decimal_suffixes_compare_like_kubernetes() -> None:
    assert parse_quantity("50M") < parse_quantity("50Mi")
    assert parse_quantity("200M") == parse_quantity("0.2G")


@settings(database=None)
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["Ki", "Mi", "Gi", "Ti"]))
def test_binary_suffixes_scale_by_powers_of_1024(number: int, suffix: str) -> None:
    power = ["Ki", "Mi", "Gi", "Ti"].index(suffix) + 1
    assert parse_quantity(f"{number}{suffix}") == number * 1024**power
