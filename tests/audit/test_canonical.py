"""RFC 8785 (JCS) canonical JSON: the RFC's examples, its number table, and properties."""

from __future__ import annotations

import json
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sharing_api.audit.canonical import canonical_json

# RFC 8785 §3.2.2 (and cyberphone/json-canonicalization testdata/input/values.json).
VALUES_IN = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
VALUES_OUT = (
    r"""{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"""
    r""""string":"€$\u000f\nA'B\"\\\\\"/"}"""
)

# RFC 8785 §3.2.3: names sort by UTF-16 code units, so U+1F600 (D83D DE00) comes before U+FB33.
SORTING_IN = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
SORTING_OUT = (
    '{"\\r":"Carriage Return","1":"One","\u0080":"Control","ö":"Latin Small Letter O With Diaeresis",'
    '"€":"Euro Sign","😀":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
)

# cyberphone/json-canonicalization testdata (the RFC author's reference implementation).
STRUCTURES_IN = """{
  "1": {"f": {"f": "hi","F": 5} ,"\\n": 56.0},
  "10": { },
  "": "empty",
  "a": { },
  "111": [ {"e": "yes","E": "no" } ],
  "A": { }
}"""
STRUCTURES_OUT = (
    '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{"E":"no","e":"yes"}],"A":{},"a":{}}'
)
FRENCH_IN = '{"peach": "This sorting order", "péché": "is wrong according to French", "pêche": "but canonicalization MUST", "sin": "ignore locale"}'  # noqa: E501
FRENCH_OUT = '{"peach":"This sorting order","péché":"is wrong according to French","pêche":"but canonicalization MUST","sin":"ignore locale"}'  # noqa: E501


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(VALUES_IN, VALUES_OUT, id="rfc8785-3.2.2-values"),
        pytest.param(SORTING_IN, SORTING_OUT, id="rfc8785-3.2.3-sorting"),
        pytest.param(STRUCTURES_IN, STRUCTURES_OUT, id="structures"),
        pytest.param(
            '[56, {"d": true, "10": null, "1": [ ]}]', '[56,{"1":[],"10":null,"d":true}]', id="arrays"
        ),
        pytest.param(FRENCH_IN, FRENCH_OUT, id="french"),
        pytest.param(
            '{"Unnormalized Unicode":"A\\u030a"}', '{"Unnormalized Unicode":"A\u030a"}', id="no-nfc"
        ),
    ],
)
def test_reference_examples(text: str, expected: str) -> None:
    assert canonical_json(json.loads(text)) == expected.encode()


# RFC 8785 Appendix B: IEEE 754 doubles (hex) and their canonical form.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("ieee", "expected"), APPENDIX_B, ids=[h for h, _ in APPENDIX_B])
def test_appendix_b_numbers(ieee: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(ieee))
    assert canonical_json(value) == expected.encode()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param(2**53, id="int-beyond-2**53-1"),
        pytest.param(-(2**53), id="int-below--(2**53-1)"),
        pytest.param({1: "x"}, id="non-string-key"),
        pytest.param({"\ud800": 1}, id="lone-surrogate-key"),
        pytest.param(["\udc00"], id="lone-surrogate-string"),
        pytest.param(b"bytes", id="bytes"),
        pytest.param({"a": {1, 2}}, id="set"),
        pytest.param(Decimal("1.5"), id="decimal"),
    ],
)
def test_rejects_what_jcs_cannot_represent(value: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is ValueError, whatever its subclass
        canonical_json(value)


def test_safe_integer_bounds_are_accepted() -> None:
    assert canonical_json([2**53 - 1, -(2**53 - 1)]) == b"[9007199254740991,-9007199254740991]"


def es_number_to_string(x: float) -> str:
    """ECMAScript Number::toString(x) (ECMA-262 §7.1.12.1, §6.1.6.1.20), which RFC 8785 §3.2.2.3 adopts.

    Python's ``repr`` gives the same shortest round-tripping digits; only the layout differs.
    """
    if x == 0:
        return "0"
    if x < 0:
        return "-" + es_number_to_string(-x)
    _sign, digit_tuple, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = exponent + k  # x = 0.digits × 10**n
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = f"e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return digits + e if k == 1 else digits[0] + "." + digits[1:] + e


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_print_as_ecmascript(x: float) -> None:
    assert canonical_json(x) == es_number_to_string(x).encode()


def test_ecmascript_oracle_agrees_with_appendix_b() -> None:
    for ieee, expected in APPENDIX_B:
        (value,) = struct.unpack(">d", bytes.fromhex(ieee))
        assert es_number_to_string(value) == expected


def json_values(*, floats: bool) -> st.SearchStrategy[Any]:
    scalars: st.SearchStrategy[Any] = (
        st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text()
    )
    if floats:
        scalars |= st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
        max_leaves=20,
    )


def _utf16_sorted(value: Any) -> Any:
    """``value`` with every object's members in RFC 8785 §3.2.3 order (dicts keep insertion order)."""
    if isinstance(value, dict):
        return {k: _utf16_sorted(value[k]) for k in sorted(value, key=lambda k: k.encode("utf-16-be"))}
    if isinstance(value, list):
        return [_utf16_sorted(v) for v in value]
    return value


@given(json_values(floats=True))
def test_round_trips_and_is_idempotent(value: Any) -> None:
    text = canonical_json(value)
    parsed = json.loads(text, parse_int=float)  # canonical numbers are doubles; ints up to 2**53 are exact
    assert parsed == value
    assert canonical_json(parsed) == text


@given(json_values(floats=False))
def test_matches_compact_json_dumps_in_utf16_key_order_when_there_are_no_floats(value: Any) -> None:
    expected = json.dumps(_utf16_sorted(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert canonical_json(value) == expected.encode()
