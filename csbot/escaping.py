"""Customer text leaving csbot for a terminal or a spreadsheet, defused.

A customer can type anything: an ANSI escape that recolours, clears or retitles an operator's
terminal (or, in some terminals, writes a file), a newline that forges the next line of a
thread, a formula that a spreadsheet runs when the export is opened. Everything csbot prints
or exports from customer text goes through one of these two functions.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["terminal_safe", "csv_cell"]

#: C0 controls (newline and tab included: a thread's layout is csbot's, not the customer's),
#: DEL, C1 controls (0x9b is an 8-bit CSI), and the bidi controls that reorder what is seen
_UNSAFE_FOR_TERMINAL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


#: the same without newline and tab, for multi-line text shown as it is (a decrypted push)
_UNSAFE_KEEPING_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: Any, *, keep_lines: bool = False) -> str:
    """``text`` with every control character shown as a visible escape (``\\x1b``, ``\\n``).

    ``keep_lines`` leaves newlines and tabs alone, for a body shown whole as a diagnosis.
    """
    return (_UNSAFE_KEEPING_LINES if keep_lines else _UNSAFE_FOR_TERMINAL).sub(_escape, str(text))


#: what makes a spreadsheet read a cell as a formula (OWASP "CSV injection"), full-width
#: forms included, which some spreadsheets fold to ASCII
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: text starting like a formula gets a leading ``'``.

    Numbers stay numbers (an ``errcode`` of -1 is data, not a formula).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
