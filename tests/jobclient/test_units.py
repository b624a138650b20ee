"""jobclient.units follows jobcore's rules: binary K/M/G/T/P sizes, `/s` rates, CPU cores."""

from __future__ import annotations

import pytest

from jobclient.units import format_size, parse_cpu, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("512M", 512 * 1024**2),
        ("1G", 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("2T", 2 * 1024**4),
        ("1P", 1024**5),
        (" 64 MB ", 64 * 1024**2),
        ("10KiB", 10 * 1024),
    ],
)
def test_sizes_use_binary_multiples(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1M", "12X", "1.5", "M", "1 G B", "0x10"])
def test_invalid_sizes_are_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("10M/s", 10 * 1024**2), ("10M", 10 * 1024**2), ("1g/S", 1024**3)]
)
def test_rates_accept_an_optional_per_second_suffix(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("0.5", 0.5), ("2", 2.0), (" 1.25 ", 1.25)])
def test_cpu_is_a_number_of_cores(text: str, expected: float) -> None:
    assert parse_cpu(text) == expected


@pytest.mark.parametrize("text", ["half", "", "1c"])
def test_invalid_cpu_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid CPU amount"):
        parse_cpu(text)


@pytest.mark.parametrize(
    ("n", "expected"), [(0, "0"), (1023, "1023"), (1536, "1.5K"), (1 << 30, "1G"), (5 * 1024**5, "5120T")]
)
def test_format_size_is_compact_and_binary(n: int, expected: str) -> None:
    assert format_size(n) == expected
