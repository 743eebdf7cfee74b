"""Configuration: environment variables, a TOML file, clear errors."""

import pytest

from csbot.config import ConfigError, load_settings

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
BASE_ENV = {"CSBOT_APPID": "wx1", "CSBOT_TOKEN": "tok"}


def test_environment_defines_the_default_app_with_documented_defaults():
    s = load_settings(BASE_ENV)
    assert list(s.apps) == ["default"]
    app = s.apps["default"]
    assert (app.appid, app.token, app.encoding_aes_key) == ("wx1", "tok", None)
    assert s.database_url == "sqlite+aiosqlite:///csbot.db"
    assert s.wechat_api_base == "https://api.weixin.qq.com"
    assert str(s.handlers_dir) == "handlers"
    assert s.port == 8080 and s.max_clock_skew == 300 and s.max_body_size == 1024 * 1024


def test_every_fixed_variable_is_read():
    s = load_settings({**BASE_ENV, "CSBOT_APP_SECRET": "sec", "CSBOT_ENCODING_AES_KEY": KEY,
                       "CSBOT_DATABASE_URL": "postgresql+asyncpg://u@h/db",
                       "CSBOT_WECHAT_API_BASE": "http://127.0.0.1:9/", "CSBOT_HANDLERS": "/srv/h",
                       "CSBOT_HOST": "127.0.0.1", "CSBOT_PORT": "9090", "CSBOT_MAX_CLOCK_SKEW": "0"})
    assert s.apps["default"].secret == "sec" and s.apps["default"].encoding_aes_key == KEY
    assert s.database_url.startswith("postgresql+asyncpg://")
    assert s.wechat_api_base == "http://127.0.0.1:9"
    assert str(s.handlers_dir) == "/srv/h" and s.host == "127.0.0.1" and s.port == 9090
    assert s.max_clock_skew == 0


@pytest.mark.parametrize("key,message", [
    ("short", "CSBOT_ENCODING_AES_KEY must be 43 characters"),
    ("!" * 43, "only letters and digits"),
])
def test_a_bad_encoding_aes_key_is_named(key, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({**BASE_ENV, "CSBOT_ENCODING_AES_KEY": key})


def test_an_unknown_database_driver_is_refused():
    with pytest.raises(ConfigError, match="unknown driver 'mysql'"):
        load_settings({**BASE_ENV, "CSBOT_DATABASE_URL": "mysql://x/y"})


def test_bad_numbers_are_named():
    with pytest.raises(ConfigError, match="CSBOT_PORT must be an integer"):
        load_settings({**BASE_ENV, "CSBOT_PORT": "eighty"})
    with pytest.raises(ConfigError, match="CSBOT_PORT must be a TCP port"):
        load_settings({**BASE_ENV, "CSBOT_PORT": "70000"})


def test_no_app_at_all_is_an_error():
    with pytest.raises(ConfigError, match="no app configured"):
        load_settings({})


def test_toml_file_defines_several_apps_and_environment_wins(tmp_path):
    cfg = tmp_path / "csbot.toml"
    cfg.write_text(f'''
database_url = "sqlite+aiosqlite:///x.db"
port = 7000
[apps.shop]
appid = "wxshop"
token = "t1"
encoding_aes_key = "{KEY}"
require_encryption = true
[apps.news]
appid = "wxnews"
token = "t2"
[handlers.welcome]
text = "Hello!"
''')
    s = load_settings({**BASE_ENV, "CSBOT_PORT": "7001"}, cfg)
    assert set(s.apps) == {"shop", "news", "default"}
    assert s.apps["shop"].require_encryption and s.apps["shop"].aes_keys == [KEY]
    assert s.port == 7001  # environment wins
    assert s.handler_options["welcome"]["text"] == "Hello!"
    assert load_settings({"CSBOT_CONFIG": str(cfg)}).apps.keys() == {"shop", "news"}


def test_toml_errors_name_the_table(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[apps.shop]\nappid = "wx"\ntoken = "t"\nencoding_aes_key = "abc"\n')
    with pytest.raises(ConfigError, match="apps.shop.encoding_aes_key must be 43"):
        load_settings({}, cfg)
    cfg.write_text('[apps.shop]\nappid = "wx"\ntoken = "t"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({}, cfg)
    cfg.write_text("not = [valid")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, tmp_path / "missing.toml")


def test_require_encryption_needs_a_key():
    with pytest.raises(ConfigError, match="require_encryption needs"):
        load_settings({**BASE_ENV, "CSBOT_REQUIRE_ENCRYPTION": "true"})


def test_masked_settings_never_show_secrets():
    s = load_settings({**BASE_ENV, "CSBOT_APP_SECRET": "supersecretvalue", "CSBOT_ENCODING_AES_KEY": KEY,
                       "CSBOT_DATABASE_URL": "postgresql+asyncpg://user:pw@db/x"})
    shown = repr(s.masked())
    assert "supersecretvalue" not in shown and KEY not in shown and ":pw@" not in shown
