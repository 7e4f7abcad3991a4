import pytest
from hypothesis import given
from hypothesis import strategies as st

from custode.base.times import epoch, iso, minute
from custode.base.units import format_bytes, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("14d", 1209600),
        ("2w", 1209600),
        ("250ms", 0.25),
        (" 1.5h ", 5400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5 parsecs", "1h foo", "-3s", "1x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**8))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"


@given(st.integers(min_value=0, max_value=4 * 10**9), st.integers(0, 999_999))
def test_stored_times_round_trip_to_the_microsecond(seconds: int, micros: int) -> None:
    moment = seconds + micros / 1e6
    stored = iso(moment, "microseconds")
    assert stored.endswith("+00:00")
    assert abs(epoch(stored) - moment) < 1e-6
    assert epoch(iso(moment)) == float(int(moment))  # whole seconds by default


def test_a_time_reads_the_same_whatever_its_offset() -> None:
    assert epoch("2026-01-02T03:04:05+00:00") == epoch("2026-01-02T05:04:05+02:00")
    assert minute(epoch("2026-01-02T05:04:59+02:00")) == "2026-01-02 03:04 UTC"
