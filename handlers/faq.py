"""Answers frequent questions from a data file of keywords and answers.

The file is ``faq.toml`` beside this module, or ``[handlers.faq] file = "..."``
(``CSBOT_FAQ_FILE``). It is re-read when it changes, so answers can be edited without a
restart. A text that matches nothing is passed on to the next handler.
"""

import asyncio
import re
import tomllib
from pathlib import Path

from csbot import NEXT, route

_DEFAULT_FILE = Path(__file__).with_name("faq.toml")
_cache = {}


def load_entries(path):
    """Parsed entries of ``path``: (keywords, compiled patterns, answer); cached by mtime."""
    path = Path(path)
    mtime = path.stat().st_mtime
    cached = _cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    entries = []
    for i, item in enumerate(data.get("faq", [])):
        answer = item.get("answer")
        if not answer:
            raise ValueError(f"{path}: entry {i + 1} has no answer")
        keywords = [k.casefold() for k in item.get("keywords", [])]
        patterns = [re.compile(p, re.IGNORECASE) for p in item.get("patterns", [])]
        entries.append((keywords, patterns, answer))
    _cache[path] = (mtime, entries)
    return entries


def find_answer(text, entries):
    folded = text.casefold()
    for keywords, patterns, answer in entries:
        if any(k in folded for k in keywords) or any(p.search(text) for p in patterns):
            return answer
    return None


@route(msg_type="text", priority=10)
async def main(event, context):
    # stat/read off the event loop
    entries = await asyncio.to_thread(load_entries, context.options.get("file", _DEFAULT_FILE))
    answer = find_answer(event.get("Content", ""), entries)
    return answer if answer is not None else NEXT
