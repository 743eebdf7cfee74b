"""Customer text leaving csbot for a terminal or a spreadsheet, defused.

A customer can type anything: an ANSI escape that recolours, clears or retitles an operator's
terminal (or, in some terminals, writes a file), a newline that forges the next line of a
thread, a formula that a spreadsheet runs when the export is opened. Everything csbot prints
or exports from customer text goes through one of these functions; JSON output (``--json``,
JSON lines) through :func:`json_text`, which escapes what ``json.dumps`` leaves raw.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["terminal_safe", "csv_cell", "json_text"]

#: C0 controls (newline and tab included: a thread's layout is csbot's, not the customer's),
#: DEL, C1 controls (0x9b is an 8-bit CSI), the bidi controls that reorder what is seen, and
#: the Unicode line and paragraph separators (a forged line break where one is rendered)
_UNSAFE_FOR_TERMINAL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


#: the same without newline and tab, for multi-line text shown as it is (a decrypted push)
_UNSAFE_KEEPING_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


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


#: what ``json.dumps(..., ensure_ascii=False)`` leaves raw but a terminal acts on: DEL, the C1
#: controls (0x9b is an 8-bit CSI), the bidi controls, the line/paragraph separators, and lone
#: surrogates (which no terminal encoding can print)
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")


def json_text(value: Any, **dumps: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **dumps)`` that is inert on a terminal.

    Readable text stays as it is (Chinese included); the characters above become ``\\u`` escapes
    (``\\u202e``), so the JSON decodes to exactly the same value.
    """
    text = json.dumps(value, ensure_ascii=False, **dumps)
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
