"""The console's languages: zh-CN for Accept-Language zh*, the header's switch wins, every
marked string translated, the committed .mo files match their .po; links only for http(s)."""

import re
from pathlib import Path

import aiohttp
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from csbot.review import i18n
from csbot.review.console import linkify

from .support import add_agent, console_sign_in, start

REVIEW = Path(i18n.__file__).parent
PO = REVIEW / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")


@pytest.mark.parametrize("header, expected", [
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh_CN"), ("zh", "zh_CN"), ("zh-TW", "zh_CN"), ("zh-Hans-CN", "zh_CN"),
    ("en-US,en;q=0.9", "en"), ("fr-FR, en;q=0.5, zh;q=0.7", "zh_CN"), ("fr", None), ("", None),
    ("en;q=0.2, zh;q=0", "en"), ("zh;q=garbage", None),
])
def test_accept_language(header, expected):
    assert i18n.from_accept_language(header) == expected


def test_the_cookie_beats_accept_language_and_english_is_the_default():
    assert i18n.pick("en", "zh-CN") == "en"
    assert i18n.pick("zh_CN", "en-US") == "zh_CN"
    assert i18n.pick("xx", "de-DE") == "en"


def test_every_marked_string_has_a_chinese_translation_and_the_mo_matches_the_po():
    catalog = read_po(PO.open("rb"))
    translated = {(m.id if isinstance(m.id, str) else m.id[0]):
                  (m.string if isinstance(m.string, str) else all(m.string) and m.string) for m in catalog if m.id}
    marked = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(REVIEW), method_map=[("**.py", "python"), ("**/templates/**.html", "jinja2")],
            options_map={"**/templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "True",
                                                   "lstrip_blocks": "True"}},
            keywords={"_": None, "gettext": None, "ngettext": (1, 2)}):
        marked.add(message if isinstance(message, str) else message[0])
    assert marked, "no marked strings found"
    missing = sorted(m for m in marked if not translated.get(m))
    assert not missing, f"untranslated (run the steps in csbot/review/i18n.py): {missing}"
    def entries(cat):
        return {(m.id if isinstance(m.id, str) else tuple(m.id)):
                (m.string if isinstance(m.string, str) else tuple(m.string)) for m in cat if m.id}
    assert entries(read_mo(MO.open("rb"))) == entries(catalog), \
        "messages.mo is older than messages.po: run pybabel compile"


def test_templates_have_no_unmarked_english_words_between_tags():
    """A cheap guard: text between tags is a {{ }} expression or a marked string."""
    for template in (REVIEW / "templates").glob("*.html"):
        text = re.sub(r"{%-? *trans.*?endtrans *-?%}|{%.*?%}|{{.*?}}|<script.*?</script>|<code>.*?</code>", "", template.read_text(), flags=re.S)
        words = [w for w in re.findall(r">([^<>]*[A-Za-z]{3,}[^<>]*)<", text) if w.strip()]
        assert not [w for w in words if re.sub(r"\b(OpenID|csbot|MediaId)\b|[·\s]", "", w)], (template.name, words)


def test_links_are_made_for_http_and_https_only_and_the_rest_is_escaped():
    html = str(linkify('see https://shop.example/a?b=1&c=2。 or HTTP://x.test/y, not javascript:alert(1) <b>'))
    assert '<a href="https://shop.example/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">' in html
    assert '<a href="HTTP://x.test/y" target="_blank" rel="noopener noreferrer">' in html
    assert "javascript:alert(1) &lt;b&gt;" in html and "<b>" not in html
    assert str(linkify('http://e.test/"onmouseover="x')).count('"') == 6  # the quote stays out of the URL
    assert str(linkify(None)) == ""


async def test_the_console_speaks_chinese_to_a_chinese_browser_and_the_switch_wins():
    async with start() as bot, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
        zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
        async with web.get(bot.url + "/admin/login", headers=zh) as r:
            page = await r.text()
            assert '<html lang="zh-CN">' in page and "创建第一个管理员" in page
        await add_agent(bot, "ada")
        assert (await console_sign_in(bot, web, "ada")).status == 303
        async with web.get(bot.url + "/admin/", headers=zh) as r:
            assert "未分配" in await r.text()
        async with web.get(bot.url + "/admin/lang/en?next=/admin/", headers=zh, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/admin/"
        async with web.get(bot.url + "/admin/", headers=zh) as r:
            page = await r.text()
            assert "Unassigned" in page and "未分配" not in page
        async with web.get(bot.url + "/admin/lang/xx") as r:
            assert r.status == 404
        async with web.get(bot.url + "/admin/lang/en?next=https://evil.test/", allow_redirects=False) as r:
            assert r.headers["Location"] == "/admin/"
