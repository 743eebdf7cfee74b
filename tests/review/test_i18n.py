"""The console's languages: zh-CN for Accept-Language zh*, the header's switch wins, every
marked string translated, the committed .mo files match their .po; links only for http(s)."""

import re
import time
from pathlib import Path

import aiohttp
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from csbot.review import i18n
from csbot.review.console import linkify

from .support import add_agent, agents_of, console_sign_in, start

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


# --------------------------------------------------------------------------- errors an agent sees


EN_PO = REVIEW / "locale" / "en" / "LC_MESSAGES" / "messages.po"
#: the exceptions whose message an agent or an API caller sees
SHOWN_ERRORS = {"ReviewError", "Invalid", "NotFound", "Conflict", "NotYours", "Forbidden", "SignInRefused",
                "RateLimited"}


def service_message_ids() -> set[str]:
    """Every message id the review package marks with N_ (errors, HTTP reasons)."""
    ids = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(REVIEW), method_map=[("**.py", "python")], keywords={"N_": None}):
        ids.add(message)
    return ids


def placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\((\w+)\)[sr]", text))


def test_every_message_id_the_service_layer_uses_is_in_both_catalogs_with_the_same_placeholders():
    ids = service_message_ids()
    assert {"this conversation is assigned to %(agent)s; ask an admin to reassign it",
            "wrong name or password", "a shortcut is 1 to 32 letters, digits, - or _", "Not Found"} <= ids
    zh = {m.id: m for m in read_po(PO.open("rb")) if m.id}
    en = {m.id: m for m in read_po(EN_PO.open("rb")) if m.id}
    assert not sorted(ids - en.keys()), "not in the English catalog (run the steps in csbot/review/i18n.py)"
    assert not sorted(ids - zh.keys()), "not in the Chinese catalog (run the steps in csbot/review/i18n.py)"
    for message_id in ids:
        assert zh[message_id].string and not zh[message_id].fuzzy, f"untranslated: {message_id!r}"
        assert placeholders(zh[message_id].string) == placeholders(message_id), message_id
        assert not en[message_id].string or placeholders(en[message_id].string) == placeholders(message_id)
    assert read_mo((EN_PO.with_suffix(".mo")).open("rb")) is not None


def test_every_shown_error_and_http_reason_in_the_review_package_is_a_marked_message_id():
    """No f-string or concatenation reaches an agent: the first argument of each shown error
    (and each ``reason=``) is ``N_("a literal")``, so it is extracted into the catalogs."""
    import ast

    unmarked = []
    for path in REVIEW.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            given = []
            if name in SHOWN_ERRORS and node.args:
                given.append(node.args[0])
            if name.startswith("HTTP"):
                given += [k.value for k in node.keywords if k.arg == "reason"]
            for arg in given:
                marked = (isinstance(arg, ast.Call) and getattr(arg.func, "id", "") == "N_"
                          and len(arg.args) == 1 and isinstance(arg.args[0], ast.Constant))
                # a variable holding one of the tables' N_ ids (check_name's, check_text's) is fine too
                if not marked and not isinstance(arg, ast.Name):
                    unmarked.append(f"{path.name}:{node.lineno}")
    assert not unmarked, unmarked


def test_a_refusal_reads_in_english_by_default_and_in_chinese_when_asked():
    from csbot.review.service import NotYours

    exc = NotYours(i18n.N_("this conversation is assigned to %(agent)s; ask an admin to reassign it"), agent="bob")
    assert str(exc) == "this conversation is assigned to bob; ask an admin to reassign it"
    i18n.activate("zh_CN")
    try:
        assert exc.localized() == "此会话已分配给 bob；如需接手，请管理员重新分配"
    finally:
        i18n.activate("en")
    assert exc.localized() == str(exc)


async def test_the_console_and_the_api_show_refusals_in_the_agents_language():
    from .support import AUTH, api, review_of

    async with start() as bot, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
        await bot.send_text("oAnn", "我想退货")
        await bot.wait_idle()
        await add_agent(bot, "ada")
        await add_agent(bot, "bob")
        await review_of(bot).set_status("default", "oAnn", "human", agent="bob")
        zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
        # a wrong password, on the sign-in page
        resp = await console_sign_in(bot, web, "ada", "not the password")
        assert resp.status == 401 and "wrong name or password" in await resp.text()
        async with web.get(bot.url + "/admin/login", headers=zh) as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
        async with web.post(bot.url + "/admin/login", headers=zh, allow_redirects=False,
                            data={"name": "ada", "password": "not the password", "csrf": csrf}) as r:
            assert r.status == 401 and "名字或密码错误" in await r.text()
        assert (await console_sign_in(bot, web, "ada")).status == 303
        # bob's conversation: ada is refused, in her language
        async with web.get(bot.url + "/admin/c/default/oAnn", headers=zh) as r:
            page = await r.text()
            assert r.status == 403 and "此会话已分配给 bob；如需接手，请管理员重新分配" in page
            assert "assigned to" not in page
        async with web.get(bot.url + "/admin/c/default/oAnn") as r:
            assert r.status == 403 and "this conversation is assigned to bob" in await r.text()
        async with web.get(bot.url + "/admin/no-such-page", headers=zh) as r:
            assert r.status == 404 and "找不到该页面" in await r.text()
        # the API: English unless the caller asks for Chinese
        token = await agents_of(bot).issue_token("ada")
        as_ada = {"Authorization": f"Bearer {token}"}
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/status", headers=as_ada,
                                 json={"status": "human"})
        assert (status, body) == (403, {"error": "this conversation is assigned to bob; ask an admin to reassign it"})
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/status", headers={**as_ada, **zh},
                                 json={"status": "human"})
        assert (status, body) == (403, {"error": "此会话已分配给 bob；如需接手，请管理员重新分配"})
        status, body = await api(bot, "GET", "/api/conversations?limit=0", headers={**AUTH, **zh})
        assert (status, body) == (400, {"error": "limit 必须在 1 到 500 之间"})
        status, body = await api(bot, "GET", "/api/nothing-here", headers={**AUTH, **zh})
        assert (status, body) == (404, {"error": "找不到该页面"})
        status, body = await api(bot, "GET", "/api/conversations", headers=zh)
        assert (status, body) == (401, {"error": "缺少 Bearer 令牌或令牌错误"})


async def test_a_chinese_thread_tells_what_agents_did_in_chinese():
    from .support import review_of

    async with start() as bot, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
        await bot.send_text("oAnn", "我想退货")
        await bot.wait_idle()
        review = review_of(bot)
        await add_agent(bot, "ada", role="admin")
        await add_agent(bot, "bob")
        await review.set_status("default", "oAnn", "human", agent="bob", actor="ada")  # assigned to bob
        await review.return_idle_to_bot(0, now=time.time() + 5)  # no agent reply: back to the bot
        await review.assign("default", "oAnn", "bob")  # to bob
        await review.assign("default", "oAnn", None)  # unassigned
        bot.fake.inject("/cgi-bin/message/custom/send", errcode=40003, times=1)
        failed = await review.send("default", "oAnn", {"msgtype": "text", "text": {"content": "您好"}})
        await bot.wait_idle()
        await review.retry(failed)  # reply N (failed)
        assert (await console_sign_in(bot, web, "ada")).status == 303
        async with web.get(bot.url + "/admin/c/default/oAnn", headers={"Accept-Language": "zh-CN"}) as r:
            page = await r.text()
        for said in ("分配给 bob", "秒内客服未回复：已交还机器人", "给 bob", "未分配", f"回复 {failed}（failed）",
                     f"消息 {failed}（text）"):
            assert said in page, said
        for english in ("assigned to", "back to the bot", "to bob", f"reply {failed}", f"message {failed}"):
            assert english not in page, english
