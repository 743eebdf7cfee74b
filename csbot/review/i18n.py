"""The console's languages: English and Simplified Chinese, from gettext catalogs (Babel).

Every string of the console's templates is marked (``_()`` / ``{% trans %}``); its JavaScript
gets its strings from the page (a JSON block rendered through the same catalog), so no string is
assembled in code. The catalogs live in ``locale/<lang>/LC_MESSAGES/messages.po`` with the compiled
``.mo`` committed next to them (a plain ``pip install`` needs no build step; a test checks that
each ``.mo`` matches its ``.po`` and that every marked string is translated).

Errors an agent can see (a refusal of the service layer, a sign-in error, a validation
message) are message ids too: raised as ``Invalid(N_("... %(name)s ..."), name=value)`` and
translated where they are shown (:meth:`ReviewError.localized`), in the console and in the
``/api/`` JSON errors (by the request's ``Accept-Language``; English when it asks for none). The
English catalog (``locale/en``) lists the same ids with the text left as written, so a test can
check that every id exists in both.

Which language: the ``csbot_lang`` cookie (the header's switch sets it), else the first of the
browser's ``Accept-Language`` that we have (``zh``, ``zh-CN``, ``zh-Hans``... → zh-CN), else English.

To change strings::

    pybabel extract -F csbot/review/babel.cfg -k N_ -o /tmp/messages.pot csbot/review
    pybabel update -i /tmp/messages.pot -d csbot/review/locale
    # translate the new entries in locale/zh_CN/LC_MESSAGES/messages.po, then
    pybabel compile -d csbot/review/locale
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Mapping

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


def N_(message: str) -> str:
    """Marks a message id for the catalogs (``pybabel extract -k N_``) without translating it:
    the message is translated where it is shown, in the language of the request showing it."""
    return message


def translate(message: str, params: Mapping[str, Any] | None = None) -> str:
    """A message id in the current language, its named ``%(name)s`` placeholders filled in."""
    text = gettext(message)
    return text % dict(params) if params else text


#: aiohttp's own reasons that reach an agent (an unknown address, a wrong method, a too large
#: upload): marked here so they are in the catalogs like our own messages
HTTP_REASONS = (N_("Bad Request"), N_("Unauthorized"), N_("Forbidden"), N_("Not Found"),
                N_("Method Not Allowed"), N_("Request Entity Too Large"), N_("Too Many Requests"),
                N_("Internal Server Error"))


def install(env: Any) -> None:
    """Give a Jinja2 environment (with the i18n extension) the request's language."""
    env.install_gettext_callables(gettext, ngettext, newstyle=True)


__all__ = ["LANGUAGES", "LANG_COOKIE", "N_", "activate", "current", "gettext", "install", "ngettext", "pick",
           "translate"]
