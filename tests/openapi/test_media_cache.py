"""An image is uploaded once and its media_id reused while it has more than an hour of life left."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

from sqlalchemy import select

from csbot.openapi import OpenAPI, upload_image_cached
from csbot.store.models import MediaCache
from csbot.testing.fake_wechat import FakeWeChat

from .conftest import Sessionmaker

IMAGE = b"\xff\xd8\xff\xe0" + b"jpeg" * 100
OTHER = b"\x89PNG\r\n\x1a\n" + b"png" * 100
UPLOAD = "/cgi-bin/media/upload"
DAY = 86400


async def test_the_same_image_is_uploaded_once(api: OpenAPI, fake: FakeWeChat, sessionmaker: Sessionmaker) -> None:
    first = await upload_image_cached(api, sessionmaker, IMAGE)
    again = await upload_image_cached(api, sessionmaker, IMAGE)

    assert first == again
    assert fake.media(first) == IMAGE
    assert len(fake.calls_to(UPLOAD)) == 1


async def test_the_cache_row_is_keyed_by_app_and_sha256(api: OpenAPI, sessionmaker: Sessionmaker,
                                                        fake: FakeWeChat) -> None:
    media_id = await upload_image_cached(api, sessionmaker, IMAGE)

    async with sessionmaker() as s:
        [row] = (await s.execute(select(MediaCache))).scalars().all()
    assert (row.app, row.sha256, row.media_type, row.media_id) == (
        "default", hashlib.sha256(IMAGE).hexdigest(), "image", media_id)
    assert row.expires_at == fake.now() + 3 * DAY


async def test_different_images_get_different_media(api: OpenAPI, sessionmaker: Sessionmaker,
                                                    fake: FakeWeChat) -> None:
    assert await upload_image_cached(api, sessionmaker, IMAGE) != await upload_image_cached(api, sessionmaker, OTHER)
    assert len(fake.calls_to(UPLOAD)) == 2


async def test_reused_while_more_than_an_hour_is_left(api: OpenAPI, sessionmaker: Sessionmaker,
                                                      fake: FakeWeChat) -> None:
    first = await upload_image_cached(api, sessionmaker, IMAGE)

    fake.advance(3 * DAY - 2 * 3600)  # 2 h left
    assert await upload_image_cached(api, sessionmaker, IMAGE) == first

    fake.advance(3600 + 60)  # 59 min left: a queued send might outlive it
    renewed = await upload_image_cached(api, sessionmaker, IMAGE)

    assert renewed != first
    assert len(fake.calls_to(UPLOAD)) == 2
    async with sessionmaker() as s:
        [row] = (await s.execute(select(MediaCache))).scalars().all()
    assert row.media_id == renewed and row.expires_at == fake.now() + 3 * DAY


async def test_concurrent_requests_for_one_image_upload_once(api: OpenAPI, sessionmaker: Sessionmaker,
                                                             fake: FakeWeChat) -> None:
    ids = await asyncio.gather(*(upload_image_cached(api, sessionmaker, IMAGE) for _ in range(10)))

    assert len(set(ids)) == 1
    assert len(fake.calls_to(UPLOAD)) == 1
    assert api.media_locks == {}


async def test_each_app_has_its_own_cache(api: OpenAPI, sessionmaker: Sessionmaker, fake: FakeWeChat) -> None:
    other_app = dataclasses.replace(api.app, name="second")
    other = OpenAPI(other_app, api.settings, sessionmaker, clock=fake.now)
    try:
        await upload_image_cached(api, sessionmaker, IMAGE)
        await upload_image_cached(other, sessionmaker, IMAGE)
    finally:
        await other.close()

    assert len(fake.calls_to(UPLOAD)) == 2
