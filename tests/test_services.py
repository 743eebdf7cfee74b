"""One typed services object: every surface finds the running parts by attribute on it."""

from aiohttp import web

from csbot.app import create_app
from csbot.review.service import Review
from csbot.services import SERVICES, Services, services_of
from csbot.testing.harness import Harness


async def test_the_app_holds_one_services_object_filled_at_start():
    async with Harness.start(handlers_dir=None, admin_token="s3cret-admin-token") as bot:
        services = services_of(bot.app)
        assert isinstance(services, Services) and bot.app[SERVICES] is services
        assert services.ready and services.inbox is not None and services.outbox is not None
        assert isinstance(services.review, Review) and services.settings is bot.settings
        # the review API (a sub-app) reaches the same object through its request
        async with bot.session.get(f"{bot.url}/api/conversations",
                                   headers={"Authorization": "Bearer s3cret-admin-token"}) as resp:
            assert resp.status == 200
        # no other locator is left on the app
        keys = [k for k in bot.app if isinstance(k, web.AppKey)]
        assert keys == [SERVICES]


def test_services_exist_before_start_with_store_parts_empty(tmp_path):
    from csbot.testing.harness import test_settings

    app = create_app(test_settings(tmp_path / "x.db", "http://127.0.0.1:9", handlers_dir=None), run_workers=False)
    services = services_of(app)
    assert not services.ready and services.engine is None and services.router.routes == []
    assert "secret" not in repr(services)
