"""The README's database examples run as typed."""

from __future__ import annotations

import re
from pathlib import Path

from csbot.config import load_settings
from csbot.testing.harness import Harness

README = Path(__file__).resolve().parents[3] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


async def test_the_handler_example_runs(tmp_path):
    code = _blocks(_section("## Cloud database"), "python")[0]
    (tmp_path / "feedback.py").write_text(code, encoding="utf-8")
    async with Harness.start(handlers_dir=tmp_path) as bot:
        await bot.send_text("oReader", "反馈")
        await bot.wait_idle()
        await bot.send_text("oReader", "反馈")
        await bot.wait_idle()
        assert bot.replies_to("oReader") == ["你已提交 1 条好评", "你已提交 2 条好评"]


def test_the_rule_recipes_are_valid_configuration(tmp_path):
    recipes = _blocks(_section("### Security rules"), "toml")
    assert len(recipes) == 3
    path = tmp_path / "csbot.toml"
    path.write_text("\n".join(recipes), encoding="utf-8")
    settings = load_settings(env={"CSBOT_APPID": "wx0123456789abcdef", "CSBOT_TOKEN": "t"}, config_file=path)
    assert set(settings.collection_rules) == {"orders", "comments", "faq"}
    assert settings.collection_indexes == {"orders": [["_openid", "createdAt"]]}
