"""Secrets stay secret on display and in logs: masks, redacted URLs, `csbot check`."""

from __future__ import annotations

import pytest

from csbot.config import load_settings, mask, mask_url
from csbot.openapi.util import redact_url


@pytest.mark.parametrize("secret", ["a", "abcdef", "abcdefghijk"])  # up to 11 characters
def test_a_short_secret_shows_nothing(secret):
    assert mask(secret) == "***"


@pytest.mark.parametrize("secret", ["abcdefghijkl", "csbotTestToken", "x" * 43])
def test_a_long_secret_shows_at_most_four_characters(secret):
    shown = mask(secret).replace("***", "")
    assert len(shown) <= 4 and shown == secret[:2] + secret[-2:]


def test_unset_secrets_say_so():
    assert mask("") == "(unset)"


@pytest.mark.parametrize("url, shown", [
    ("https://user:p4ss@tokens.internal/token?appid=wx1", "https://***@tokens.internal/token?appid=wx1"),
    ("https://user:p@ss@tokens.internal/t", "https://***@tokens.internal/t"),          # '@' in the password
    ("https://justatoken@tokens.internal/t", "https://***@tokens.internal/t"),
    ("https://api.example/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=SeCrEt",
     "https://api.example/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=***"),
    ("https://u:pw@h/x?access_token=TOKEN&a=@b", "https://***@h/x?access_token=***&a=@b"),
    ("https://api.weixin.qq.com/cgi-bin/stable_token", "https://api.weixin.qq.com/cgi-bin/stable_token"),
])
def test_redact_url_masks_credentials_and_secret_parameters(url, shown):
    assert redact_url(url) == shown


def test_mask_url_keeps_the_user_and_hides_the_password_whole():
    assert mask_url("postgresql+asyncpg://csbot:pa@ss@db/x") == "postgresql+asyncpg://csbot:***@db/x"
    assert mask_url("postgresql+asyncpg://csbot:secret@db/x") == "postgresql+asyncpg://csbot:***@db/x"
    assert mask_url("sqlite+aiosqlite:///csbot.db") == "sqlite+aiosqlite:///csbot.db"


def test_check_shows_no_secret_of_any_length():
    s = load_settings({"CSBOT_APPID": "wx1", "CSBOT_TOKEN": "shorttoken", "CSBOT_APP_SECRET": "0123456789abcdef",
                       "CSBOT_TOKEN_SOURCE": "https://svc:hunter2hunter2@tokens.internal/token",
                       "CSBOT_ADMIN_TOKEN": "adm1n"})
    shown = repr(s.masked())
    for secret in ("shorttoken", "0123456789abcdef", "hunter2hunter2", "adm1n", "svc:"):
        assert secret not in shown
    assert "tokens.internal" in shown  # the operator can still see where tokens come from
