"""CSBOT_KEEP_REFUSED: refused pushes kept for diagnosis, `csbot refused`, `csbot decrypt --refused`."""

import os
import subprocess

from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_TOKEN, Harness


# --------------------------------------------------------------------------- CSBOT_KEEP_REFUSED


async def test_refused_pushes_are_kept_for_diagnosis_never_as_messages(tmp_path):
    import sys

    from csbot.refused import list_refused

    async with Harness.start(handlers_dir=None, keep_refused=2) as bot:
        good = bot.builder.build(bot.builder.text("oUser1", "你好"))
        for i in range(3):
            tampered = good.body if i < 2 else b"not xml"
            query = {**good.query, "msg_signature": "0" * 40} if i < 2 else good.query
            async with bot.session.post(bot.url + "/wechat", params=query, data=tampered,
                                        headers={"Content-Type": "text/xml"}) as resp:
                assert resp.status in (400, 401, 403)
        await bot.services.refused.flush()
        kept = await list_refused(bot.services.sessionmaker)
        assert len(kept) == 2 and kept[0].body == b"not xml"  # only the latest two
        assert await bot.messages() == []  # never stored as messages
        newest_signed = kept[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
        env.update(CSBOT_APPID=TEST_APPID, CSBOT_TOKEN=TEST_TOKEN, CSBOT_ENCODING_AES_KEY=TEST_AES_KEY,
                   CSBOT_DATABASE_URL=bot.settings.database_url, CSBOT_KEEP_REFUSED="2")
        out = subprocess.run([sys.executable, "-m", "csbot", "refused"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 2 and "msg_signature mismatch" in out.stdout
        out = subprocess.run([sys.executable, "-m", "csbot", "decrypt", "--refused", str(newest_signed.id)],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "msg_signature: WRONG" in out.stdout, out.stdout + out.stderr
