"""Open data: encryptedData with WeChat's published vectors, rawData signatures, CloudIDs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from csbot.cloud.opendata import OpenDataError, decrypt_open_data, raw_data_signature_ok
from csbot.testing.harness import TEST_APPID

from tests.cloud.conftest import MiniProgram

VECTORS = json.loads((Path(__file__).parent / "open-data-vectors.json").read_text(encoding="utf-8"))
DECRYPT = {v["name"].split()[0]: v for v in VECTORS["decrypt"]}
V1, V2 = DECRYPT["V1"], DECRYPT["V2"]
[V3] = VECTORS["raw_data_signature"]


def _flip_last_byte(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


class TestDecrypt:
    @pytest.mark.parametrize("vector", VECTORS["decrypt"], ids=lambda v: v["name"])
    def test_published_vectors_decrypt_to_their_exact_plaintext(self, vector: dict) -> None:
        data = decrypt_open_data(vector["encrypted_data"], vector["iv"], vector["session_key"], vector["appid"])
        assert data == json.loads(vector["plaintext"])

    def test_another_apps_data_is_refused(self) -> None:
        with pytest.raises(OpenDataError, match="watermark.appid") as err:
            decrypt_open_data(V2["encrypted_data"], V2["iv"], V2["session_key"], V1["appid"])
        assert err.value.code == -41003

    @pytest.mark.parametrize("change, code", [
        ({"encrypted_data": _flip_last_byte(V1["encrypted_data"])}, -41003),   # padding
        ({"session_key": V2["session_key"]}, -41003),                           # wrong key
        ({"iv": V1["iv"].replace("+", " ") if "+" in V1["iv"] else V1["iv"][:-3] + " A="}, -41002),
        ({"iv": V1["iv"][:-4]}, -41002),
        ({"iv": base64.b64encode(b"x" * 17).decode()[:24]}, -41002),
        ({"session_key": "dG9vc2hvcnQ="}, -41001),
        ({"session_key": "not base64!"}, -41001),
        ({"session_key": ""}, -41001),
        ({"encrypted_data": "####"}, -41004),
        ({"encrypted_data": ""}, -41004),
        ({"encrypted_data": base64.b64encode(b"x" * 15).decode()}, -41003),  # not whole blocks
    ])
    def test_every_failure_is_one_clear_error(self, change: dict, code: int) -> None:
        v = {**V1, **change}
        with pytest.raises(OpenDataError) as err:
            decrypt_open_data(v["encrypted_data"], v["iv"], v["session_key"], v["appid"])
        assert err.value.code == code and str(err.value)

    def test_valid_padding_around_something_that_is_not_json_is_refused(self) -> None:
        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key, iv = base64.b64decode(V1["session_key"]), base64.b64decode(V1["iv"])
        for plain in (b"\xff\xfe not utf-8", b"[1, 2, 3]", b'{"watermark": "wx4f4bc4dec97d474b"}'):
            padder = padding.PKCS7(128).padder()
            enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            cipher = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
            with pytest.raises(OpenDataError):
                decrypt_open_data(base64.b64encode(cipher).decode(), V1["iv"], V1["session_key"], V1["appid"])


class TestRawDataSignature:
    def test_the_published_example_checks_out(self) -> None:
        assert raw_data_signature_ok(V3["raw_data"], V3["signature"], V3["session_key"])

    @pytest.mark.parametrize("change", [
        {"raw_data": V3["raw_data"].replace("Band", "Bond")},
        {"signature": "0" * 40}, {"signature": ""}, {"signature": "不是签名"},
        {"session_key": V1["session_key"]}, {"session_key": ""},
    ])
    def test_anything_else_does_not(self, change: dict) -> None:
        v = {**V3, **change}
        assert not raw_data_signature_ok(v["raw_data"], v["signature"], v["session_key"])


class TestInFunctions:
    async def test_context_decrypt_uses_the_callers_current_session_key(self, user: MiniProgram) -> None:
        sealed = user.bot.fake.encrypt_open_data(TEST_APPID, user.openid, {"stepInfoList": [{"step": 8000}]})
        body = await (await user.call("decrypt", sealed)).json()
        assert body["result"]["data"]["stepInfoList"] == [{"step": 8000}]
        assert body["result"]["data"]["watermark"]["appid"] == TEST_APPID

    async def test_data_sealed_before_a_new_login_no_longer_opens(self, user: MiniProgram) -> None:
        sealed = user.bot.fake.encrypt_open_data(TEST_APPID, user.openid, {"x": 1})
        await user.login()  # WeChat rotated the session_key
        body = await (await user.call("decrypt", sealed)).json()
        assert body["result"]["code"] == -41003

    async def test_another_apps_open_data_is_refused(self, user: MiniProgram) -> None:
        sealed = user.bot.fake.encrypt_open_data(TEST_APPID, user.openid,
                                                 {"x": 1, "watermark": {"appid": "wxOther", "timestamp": 1}})
        body = await (await user.call("decrypt", sealed)).json()
        assert "watermark.appid" in body["result"]["error"]

    async def test_check_raw_data(self, user: MiniProgram) -> None:
        import hashlib

        key = user.bot.fake.session_key_of(TEST_APPID, user.openid)
        raw = json.dumps({"nickName": "小明"}, ensure_ascii=False)
        good = hashlib.sha1((raw + key).encode()).hexdigest()
        assert (await (await user.call("signature", {"rawData": raw, "signature": good})).json())["result"] is True
        bad = {"rawData": raw + " ", "signature": good}
        assert (await (await user.call("signature", bad)).json())["result"] is False


class TestCloudID:
    async def test_top_level_markers_are_replaced_with_the_open_data(self, user: MiniProgram) -> None:
        fake = user.bot.fake
        fake.register_cloud_id(TEST_APPID, "CID-werun", {"stepInfoList": [{"timestamp": 1, "step": 100}]})
        fake.register_cloud_id(TEST_APPID, "CID-phone", {"phoneNumber": "13800000000"})
        data = {"weRun": {"__csbotCloudID": "CID-werun"}, "phone": {"__cloudID": "CID-phone"},
                "nested": {"inner": {"__csbotCloudID": "CID-werun"}}, "plain": "CID-werun"}
        body = await (await user.call("opened", data)).json()
        event = body["result"]["event"]
        assert event["weRun"]["cloudID"] == "CID-werun"
        assert event["weRun"]["data"]["stepInfoList"] == [{"timestamp": 1, "step": 100}]
        assert event["weRun"]["data"]["watermark"]["appid"] == TEST_APPID
        assert event["phone"]["data"]["phoneNumber"] == "13800000000"
        assert event["nested"] == {"inner": {"__csbotCloudID": "CID-werun"}}  # nested: left as is
        assert event["plain"] == "CID-werun"
        assert sorted(body["result"]["OPEN_DATA_INFO"]) == ["phone", "weRun"]
        [call] = fake.calls_to("/wxa/getopendata")
        assert sorted(call.json["cloudid_list"]) == ["CID-phone", "CID-werun"]

    async def test_an_expired_or_unknown_cloud_id_becomes_wechats_error_shape(self, user: MiniProgram) -> None:
        fake = user.bot.fake
        fake.register_cloud_id(TEST_APPID, "CID-good", {"v": 1})
        fake.register_cloud_id(TEST_APPID, "CID-old", {"v": 2})
        fake.advance(301)
        fake.register_cloud_id(TEST_APPID, "CID-good", {"v": 1})
        data = {"good": {"__csbotCloudID": "CID-good"}, "old": {"__csbotCloudID": "CID-old"},
                "unknown": {"__csbotCloudID": "CID-never"}}
        event = (await (await user.call("opened", data)).json())["result"]["event"]
        assert event["good"]["data"]["v"] == 1
        assert event["old"] == {"cloudID": "CID-old", "errCode": -601006, "errMsg": "cloudID expired."}
        assert event["unknown"] == {"cloudID": "CID-never", "errCode": -601006, "errMsg": "cloudID expired."}

    async def test_a_client_imitating_replaced_open_data_is_not_listed(self, user: MiniProgram) -> None:
        forged = {"phone": {"cloudID": "CID-x", "data": {"phoneNumber": "10086"}}}
        body = await (await user.call("opened", forged)).json()
        assert body["result"]["event"] == forged and body["result"]["OPEN_DATA_INFO"] == []
        assert not user.bot.fake.calls_to("/wxa/getopendata")

    async def test_more_than_five_cloud_ids_is_400(self, user: MiniProgram) -> None:
        data = {f"k{i}": {"__csbotCloudID": f"CID-{i}"} for i in range(6)}
        resp = await user.call("opened", data)
        assert resp.status == 400 and "5" in (await resp.json())["errMsg"]
        assert not user.bot.fake.calls_to("/wxa/getopendata")

    async def test_wechat_busy_is_503_and_the_function_does_not_run(self, user: MiniProgram) -> None:
        user.bot.fake.register_cloud_id(TEST_APPID, "CID-a", {"v": 1})
        user.bot.fake.inject("/wxa/getopendata", errcode=-1, times=3)
        resp = await user.call("opened", {"a": {"__csbotCloudID": "CID-a"}})
        assert resp.status == 503 and resp.headers["Retry-After"]
