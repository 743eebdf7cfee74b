"""csbot.escaping: customer text leaving for a terminal or a spreadsheet, defused."""

import json

from hypothesis import given, strategies as st

from csbot.escaping import json_text

HOSTILE = "a\u202etxt.exe\u2066\x9b31m\x1b]0;owned\x07\x7f\u2028\u2029\x85\ud800 退款"
#: what a terminal acts on: C0, DEL and C1 controls, bidi overrides and isolates, separators
TERMINAL_ACTIVE = set(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F,
                                *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]))


def test_json_text_escapes_what_a_terminal_would_act_on_and_keeps_readable_text():
    text = json_text({"reason": HOSTILE, HOSTILE: 1})

    assert not TERMINAL_ACTIVE & set(text)
    assert "\\u202e" in text and "\\u009b" in text and "\\u001b" in text and "\\ud800" in text
    assert "退款" in text  # Chinese stays readable, not \\u escapes
    assert json.loads(text) == {"reason": HOSTILE, HOSTILE: 1}  # the same JSON value


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12))
def test_json_text_is_always_the_same_json_and_never_terminal_active(value):
    text = json_text(value)
    assert json.loads(text) == value
    assert not TERMINAL_ACTIVE & set(text)
    text.encode("utf-8")  # printable: no lone surrogate left raw
