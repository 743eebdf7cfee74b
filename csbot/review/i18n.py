"""The console's languages: English and Simplified Chinese, from gettext catalogs (Babel).

Every string of the console's templates is marked (``_()`` / ``{% trans %}``); its JavaScript
gets its strings from the page (a JSON block rendered through the same catalog), so no string is
assembled in code. The catalogs live in ``locale/<lang>/LC_MESSAGES/messages.po`` with the compiled
``.mo`` committed next to them (a plain ``pip install`` needs no build step; a test checks that
each ``.mo`` matches its ``.po`` and that every marked string is translated).

Which language: the ``csbot_lang`` cookie (the header's switch sets it), else the first of the
browser's ``Accept-Language`` that we have (``zh``, ``zh-CN``, ``zh-Hans``... → zh-CN), else English.

To change strings::

    pybabel extract -F csbot/review/babel.cfg -o /tmp/messages.pot csbot/review
    pybabel update -i /tmp/messages.pot -d csbot/review/locale
    # translate the new entries in locale/zh_CN/LC_MESSAGES/messages.po, then
    pybabel compile -d csbot/review/locale
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).parent / "locale"
LANG_COOKIE = "csbot_lang"
#: language code → its name in itself (for the header's switch)
LANGUAGES = {"en": "English", "zh_CN": "简体中文"}
DEFAULT = "en"

_catalogs: dict[str, NullTranslations] = {}
_current: contextvars.ContextVar[str] = contextvars.ContextVar("csbot_console_lang", default=DEFAULT)


def catalog(lang: str) -> NullTranslations:
    if lang not in _catalogs:
        if lang == "en":
            _catalogs[lang] = NullTranslations()
        else:
            _catalogs[lang] = Translations.load(str(LOCALE_DIR), [lang], domain="messages")
    return _catalogs[lang]


def from_accept_language(header: str | None) -> str | None:
    """The first language of an ``Accept-Language`` header we have, by its quality order."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, index, tag.strip().lower()))
    for neg_q, _, tag in sorted(ranked):
        if neg_q >= 0:
            continue
        if tag == "zh" or tag.startswith("zh-") or tag.startswith("zh_"):
            return "zh_CN"
        if tag == "en" or tag.startswith("en-"):
            return "en"
    return None


def pick(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return str(cookie)
    return from_accept_language(accept_language) or DEFAULT


def activate(lang: str) -> None:
    """Use this language for the rest of the current request (a context variable)."""
    _current.set(lang if lang in LANGUAGES else DEFAULT)


def current() -> str:
    return _current.get()


def gettext(message: str) -> str:
    return catalog(_current.get()).ugettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return catalog(_current.get()).ungettext(singular, plural, n)


def install(env: Any) -> None:
    """Give a Jinja2 environment (with the i18n extension) the request's language."""
    env.install_gettext_callables(gettext, ngettext, newstyle=True)


__all__ = ["LANGUAGES", "LANG_COOKIE", "activate", "current", "gettext", "install", "ngettext", "pick"]
