"""Shared fixtures for the wire tests: a fake app config and a WeChat push simulator."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from csbot.wire import MessageCrypto, Push, compute_signature, decode_push, render_fields

VECTORS_PATH = Path(__file__).with_name("crypto-vectors.json")

#: the Mini Program doc's app (vector mp-doc-safe-post-json)
APPID = "wxba5fad812f8e6fb9"
TOKEN = "AAAAA"
KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
#: the official sample key: its 43rd character has non-zero trailing bits
OTHER_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
NOW = 1714112445


@dataclass(frozen=True)
class FakeApp:
    """Satisfies csbot.wire.AppKeys like csbot.config.AppConfig does."""

    appid: str = APPID
    token: str = TOKEN
    keys: tuple[str, ...] = (KEY,)
    require_encryption: bool = False

    @property
    def aes_keys(self) -> list[str]:
        return list(self.keys)


@dataclass
class WeChatSim:
    """Builds (query, body) pairs the way WeChat's push service does."""

    app: FakeApp
    now: int = NOW
    nonce: str = "415670741"
    sent: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def push(
        self,
        fields: Mapping[str, Any],
        *,
        fmt: str = "xml",
        mode: str = "safe",
        key: str | None = None,
        appid: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[dict[str, str], bytes]:
        ts = str(self.now if timestamp is None else timestamp)
        plaintext = render_fields(fields, fmt)
        query = {
            "signature": compute_signature(self.app.token, ts, self.nonce),
            "timestamp": ts,
            "nonce": self.nonce,
        }
        if mode == "plaintext":
            return query, plaintext
        crypto = MessageCrypto(key or self.app.aes_keys[0], appid or self.app.appid)
        encrypt = crypto.encrypt(plaintext)
        if mode == "safe":
            outer: dict[str, Any] = {"ToUserName": fields["ToUserName"], "Encrypt": encrypt}
        elif mode == "compatible":
            outer = {**fields, "Encrypt": encrypt}
        else:
            raise ValueError(mode)
        query.update(
            openid=str(fields["FromUserName"]),
            encrypt_type="aes",
            msg_signature=compute_signature(self.app.token, ts, self.nonce, encrypt),
        )
        return query, render_fields(outer, fmt)


def decode(app: FakeApp, query: Mapping[str, str], body: bytes, *, now: float = NOW, skew: int = 300) -> Push:
    return decode_push(app, query, body, now=now, max_clock_skew=skew)


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def wechat(app: FakeApp) -> WeChatSim:
    return WeChatSim(app)


@pytest.fixture
def text_fields() -> dict[str, Any]:
    return {
        "ToUserName": "gh_97417a04a28d",
        "FromUserName": "o9AgO5Kd5ggOC-bXrbNODIiE3bGY",
        "CreateTime": NOW,
        "MsgType": "text",
        "Content": "你好, <b>world</b> ]]> & more",
        "MsgId": 24526813564466601,
    }


@pytest.fixture(name="decode")
def decode_fixture():
    """``decode(app, query, body, now=NOW, skew=300)`` -> Push."""
    return decode


@pytest.fixture
def make_app():
    """``make_app(**overrides)`` -> FakeApp."""
    return FakeApp


def load_vectors() -> list[dict[str, Any]]:
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
