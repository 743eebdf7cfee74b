"""Configuration: environment variables and an optional TOML file, validated at start.

The environment variables define the app named ``default``; a TOML file may define more
apps as ``[apps.NAME]`` tables. Every problem is reported with the setting's name, so an
operator sees "CSBOT_ENCODING_AES_KEY must be 43 characters" rather than a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///csbot.db"
DEFAULT_API_BASE = "https://api.weixin.qq.com"
KNOWN_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
_APP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_AES_KEY = re.compile(r"^[A-Za-z0-9]{43}$")
APP_KINDS = ("miniprogram", "official_account")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the setting."""


@dataclass(frozen=True)
class AppConfig:
    """One WeChat app (Mini Program or Official Account) served by this deployment."""

    name: str
    appid: str
    secret: str = ""
    token: str = ""
    encoding_aes_key: str | None = None
    #: the previous EncodingAESKey, tried when the current one fails (key rotation)
    previous_aes_key: str | None = None
    #: refuse plaintext pushes (only safe/compatible mode accepted). ``None`` (not said): true
    #: whenever an EncodingAESKey is set, because a plaintext push's body is covered by no
    #: signature, so accepting one lets anyone holding a signed URL post any body
    require_encryption: bool | None = None
    #: text sent when a handler raises; empty: nothing is sent
    apology_text: str = ""
    #: "miniprogram" or "official_account": what a passive reply may be (see the README)
    kind: str = "miniprogram"

    @property
    def is_official_account(self) -> bool:
        return self.kind == "official_account"

    def __post_init__(self) -> None:
        if self.require_encryption is None:
            object.__setattr__(self, "require_encryption", bool(self.encoding_aes_key or self.previous_aes_key))

    @property
    def aes_keys(self) -> list[str]:
        return [k for k in (self.encoding_aes_key, self.previous_aes_key) if k]


@dataclass(frozen=True)
class Settings:
    apps: Mapping[str, AppConfig]
    database_url: str = DEFAULT_DATABASE_URL
    wechat_api_base: str = DEFAULT_API_BASE
    handlers_dir: Path = Path("./handlers")
    host: str = "0.0.0.0"
    port: int = 8080
    max_clock_skew: int = 300
    max_body_size: int = 1024 * 1024
    #: the longest an inline (passive-reply) route may run before the webhook answers: each
    #: route's own ``budget`` is capped by it (below WeChat's 5-second deadline)
    inline_budget: float = 3.0
    #: times one push's handlers are started before the push is marked ``failed`` (a poison push)
    max_handler_attempts: int = 5
    #: directory for media and other files (default: ./data)
    data_dir: Path = Path("./data")
    #: access-token source: "stable" (cgi-bin/stable_token), "plain" (cgi-bin/token) or a URL
    token_source: str = "stable"
    #: concurrent conversations handled at once by one process
    worker_concurrency: int = 64
    #: seconds a worker holds a conversation before another process may take it over
    lease_seconds: float = 30.0
    #: outbox: attempts before a reply is dead-lettered
    max_send_attempts: int = 8
    #: outbox: first retry delay in seconds (doubles each attempt, with jitter)
    retry_base_delay: float = 1.0
    #: Mini Program reply quota (WeChat has changed these numbers before)
    quota_replies_per_message: int = 5
    quota_window_seconds: int = 48 * 3600
    quota_replies_on_enter: int = 2
    quota_enter_window_seconds: int = 60
    #: send a reply's subscribe fallback when the quota refuses the reply
    quota_subscribe_fallback: bool = True
    #: API calls per second per app (aiolimiter)
    #: client-side cap on API calls per second per app; 0 (default) = none: WeChat imposes no
    #: per-second limit on these APIs, and its minute quotas answer 45009/45011, which the
    #: outbox already treats as transient (backoff)
    api_rate_per_second: float = 0.0
    #: seconds an HTTP request to WeChat's API may take
    api_timeout: float = 10.0
    #: per-handler options: ``[handlers.NAME]`` tables (e.g. handlers.welcome.text)
    handler_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: bearer token of the review API and console; empty: review API disabled
    admin_token: str = ""
    #: seconds a conversation taken over by a person stays `human` without an agent reply before
    #: it returns to the bot (0: never); csbot.review
    human_timeout: float = 1800.0
    #: bearer key of the server API at /tcb/* (csbot.cloud); empty: /tcb answers 404
    server_key: str = ""
    #: the URL mini programs and browsers reach csbot at (temporary file URLs); empty: from the request
    public_url: str = ""
    #: csbot.cloud.storage: largest file accepted, in bytes
    storage_max_file_size: int = 20 * 1024 * 1024
    #: csbot.cloud.storage: HMAC key of temporary URLs; empty: a random key kept in data_dir/storage
    storage_signing_key: str = ""
    #: csbot.cloud.storage: ``[storage.rules]`` read/write (WeChat's storage security rules)
    storage_rules: Mapping[str, Any] = field(default_factory=dict)
    #: csbot.cloud: seconds a /cloud/login session token lives (WeChat never says how long a
    #: session_key lives; the client logs in again on a 401)
    cloud_session_lifetime: float = 7 * 86400
    #: csbot.cloud: seconds a process trusts its cached session lookup (bounds how long another
    #: process may still accept a session revoked elsewhere)
    cloud_session_cache_seconds: float = 30.0
    #: csbot.cloud: callable-function calls per second per openid, and the burst allowed
    function_rate_per_second: float = 20.0
    function_rate_burst: int = 40
    #: refused pushes kept for diagnosis (``csbot refused``), the most recent N; 0: none
    keep_refused: int = 0
    #: outbound webhooks, ``[webhooks.NAME]`` tables (csbot.outbound_webhooks.WebhookConfig)
    webhooks: Mapping[str, Any] = field(default_factory=dict)
    #: cloud database (csbot.cloud.database): ``[collections.NAME]`` security rules (parsed) and
    #: declared indexes, and the largest document in bytes
    collection_rules: Mapping[str, Any] = field(default_factory=dict)
    collection_indexes: Mapping[str, Any] = field(default_factory=dict)
    db_max_document_size: int = 1024 * 1024
    #: where the settings came from, for ``csbot check``
    source: str = "environment"

    def app(self, name: str) -> AppConfig:
        return self.apps[name]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def masked(self) -> dict[str, Any]:
        """Effective settings with secrets masked, for display."""
        from csbot.openapi.util import redact_url  # the openapi package imports this module

        out: dict[str, Any] = {
            "source": self.source,
            "database_url": mask_url(self.database_url),
            "wechat_api_base": self.wechat_api_base,
            "handlers_dir": str(self.handlers_dir),
            "host": self.host,
            "port": self.port,
            "max_clock_skew": self.max_clock_skew,
            "max_body_size": self.max_body_size,
            "inline_budget": self.inline_budget,
            "data_dir": str(self.data_dir),
            "token_source": redact_url(self.token_source),
            "admin_token": mask(self.admin_token),
            "server_key": mask(self.server_key),
            "public_url": self.public_url,
            "storage_max_file_size": self.storage_max_file_size,
            "apps": {},
        }
        for app in self.apps.values():
            out["apps"][app.name] = {
                "appid": app.appid,
                "secret": mask(app.secret),
                "token": mask(app.token),
                "encoding_aes_key": mask(app.encoding_aes_key or ""),
                "mode": "encrypted (compatible/safe) or plaintext"
                if app.encoding_aes_key and not app.require_encryption
                else ("encrypted only" if app.encoding_aes_key else "plaintext only"),
                "require_encryption": app.require_encryption,
                "kind": app.kind,
            }
        return out


def mask(secret: str) -> str:
    """A secret for display: at most 4 of its characters (2 at each end), none when it is
    shorter than 12, where 4 characters would be a third of it."""
    if not secret:
        return "(unset)"
    if len(secret) < 12:
        return "***"
    return secret[:2] + "***" + secret[-2:]


def mask_url(url: str) -> str:
    """A database URL for display: the user stays (operators need it), the password goes,
    up to the authority's last '@' (a password may hold one)."""
    return re.sub(r"(//[^:/@?#]+:)[^/?#]*@", r"\1***@", url, count=1)


def _int(name: str, value: Any, minimum: int = 0) -> int:
    try:
        result = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if result < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {result}")
    return result


def _float(name: str, value: Any, minimum: float = 0.0) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if result < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {result}")
    return result


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def validate_aes_key(name: str, key: str | None) -> str | None:
    if key is None or key == "":
        return None
    if len(key) != 43:
        raise ConfigError(f"{name} must be 43 characters (WeChat's EncodingAESKey), got {len(key)}")
    if not _AES_KEY.match(key):
        raise ConfigError(f"{name} must contain only letters and digits")
    return key


def validate_database_url(url: str) -> str:
    driver = url.split("://", 1)[0] if "://" in url else ""
    if driver not in KNOWN_DRIVERS:
        raise ConfigError(
            f"CSBOT_DATABASE_URL has unknown driver {driver or url!r}; use one of "
            + ", ".join(f"{d}://" for d in KNOWN_DRIVERS)
        )
    return url


def _app_from_mapping(name: str, data: Mapping[str, Any], where: str) -> AppConfig:
    if not _APP_NAME.match(name):
        raise ConfigError(f"{where}: app name {name!r} must be letters, digits, '-' or '_'")
    known = {"appid", "secret", "app_secret", "token", "encoding_aes_key", "previous_aes_key",
             "require_encryption", "apology_text", "kind"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    appid = str(data.get("appid") or "")
    if not appid:
        raise ConfigError(f"{where}: appid is required")
    token = str(data.get("token") or "")
    if not token:
        raise ConfigError(f"{where}: token is required (the Token of WeChat's message-push page)")
    aes = validate_aes_key(f"{where}.encoding_aes_key", data.get("encoding_aes_key"))
    prev = validate_aes_key(f"{where}.previous_aes_key", data.get("previous_aes_key"))
    said = data.get("require_encryption")
    require = bool(aes) if said is None or said == "" else _bool(f"{where}.require_encryption", said)
    if require and not aes:
        raise ConfigError(f"{where}: require_encryption needs an encoding_aes_key")
    kind = str(data.get("kind") or "miniprogram")
    if kind not in APP_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(APP_KINDS)}, got {kind!r}")
    return AppConfig(
        kind=kind,
        name=name,
        appid=appid,
        secret=str(data.get("secret") or data.get("app_secret") or ""),
        token=token,
        encoding_aes_key=aes,
        previous_aes_key=prev,
        require_encryption=require,
        apology_text=str(data.get("apology_text") or ""),
    )


_GENERAL = {
    # toml key: (env var, converter)
    "database_url": "CSBOT_DATABASE_URL",
    "wechat_api_base": "CSBOT_WECHAT_API_BASE",
    "handlers_dir": "CSBOT_HANDLERS",
    "host": "CSBOT_HOST",
    "port": "CSBOT_PORT",
    "max_clock_skew": "CSBOT_MAX_CLOCK_SKEW",
    "max_body_size": "CSBOT_MAX_BODY_SIZE",
    "inline_budget": "CSBOT_INLINE_BUDGET",
    "data_dir": "CSBOT_DATA_DIR",
    "token_source": "CSBOT_TOKEN_SOURCE",
    "worker_concurrency": "CSBOT_WORKER_CONCURRENCY",
    "max_handler_attempts": "CSBOT_MAX_HANDLER_ATTEMPTS",
    "lease_seconds": "CSBOT_LEASE_SECONDS",
    "max_send_attempts": "CSBOT_MAX_SEND_ATTEMPTS",
    "retry_base_delay": "CSBOT_RETRY_BASE_DELAY",
    "quota_replies_per_message": "CSBOT_QUOTA_REPLIES_PER_MESSAGE",
    "quota_window_seconds": "CSBOT_QUOTA_WINDOW_SECONDS",
    "quota_replies_on_enter": "CSBOT_QUOTA_REPLIES_ON_ENTER",
    "quota_enter_window_seconds": "CSBOT_QUOTA_ENTER_WINDOW_SECONDS",
    "api_rate_per_second": "CSBOT_API_RATE",
    "quota_subscribe_fallback": "CSBOT_QUOTA_SUBSCRIBE_FALLBACK",
    "api_timeout": "CSBOT_API_TIMEOUT",
    "admin_token": "CSBOT_ADMIN_TOKEN",
    "human_timeout": "CSBOT_HUMAN_TIMEOUT",  # csbot.review
    "server_key": "CSBOT_SERVER_KEY",  # csbot.cloud (/tcb)
    "public_url": "CSBOT_PUBLIC_URL",
    "storage_max_file_size": "CSBOT_STORAGE_MAX_FILE_SIZE",  # csbot.cloud.storage
    "storage_signing_key": "CSBOT_STORAGE_SIGNING_KEY",
    "cloud_session_lifetime": "CSBOT_CLOUD_SESSION_LIFETIME",  # csbot.cloud
    "cloud_session_cache_seconds": "CSBOT_CLOUD_SESSION_CACHE",
    "function_rate_per_second": "CSBOT_FUNCTION_RATE",
    "function_rate_burst": "CSBOT_FUNCTION_BURST",
    "keep_refused": "CSBOT_KEEP_REFUSED",  # csbot.refused
    "db_max_document_size": "CSBOT_DB_MAX_DOCUMENT_SIZE",  # csbot.cloud.database
}
_INTS = {"port", "max_clock_skew", "max_body_size", "worker_concurrency", "max_send_attempts", "max_handler_attempts",
         "quota_replies_per_message", "quota_window_seconds", "quota_replies_on_enter",
         "quota_enter_window_seconds", "storage_max_file_size", "function_rate_burst",
         "keep_refused",
         "db_max_document_size"}
_FLOATS = {"inline_budget", "lease_seconds", "retry_base_delay", "api_rate_per_second", "api_timeout",
           "human_timeout", "cloud_session_lifetime", "cloud_session_cache_seconds",
           "function_rate_per_second"}


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build validated settings from ``env`` (default: os.environ) and a TOML file.

    The file is ``config_file`` or ``$CSBOT_CONFIG``. Environment variables win over the file.
    """
    env = dict(os.environ if env is None else env)
    path = config_file or env.get("CSBOT_CONFIG") or None
    data: dict[str, Any] = {}
    source = "environment"
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        source = f"{p} + environment"

    general: dict[str, Any] = {}
    for key, var in _GENERAL.items():
        if key in data:
            general[key] = data[key]
        if env.get(var, "") != "":
            general[key] = env[var]
    known_top = set(_GENERAL) | {"apps", "handlers", "storage", "webhooks", "collections"}
    unknown = set(data) - known_top
    if unknown:
        raise ConfigError(f"config file: unknown setting(s) {', '.join(sorted(unknown))}")

    kwargs: dict[str, Any] = {"source": source}
    for key, value in general.items():
        name = _GENERAL[key]
        if key in _INTS:
            value = _int(name, value, minimum=1 if key in ("port", "max_body_size", "worker_concurrency", "max_send_attempts",
                                                           "max_handler_attempts", "storage_max_file_size",
                                                           "function_rate_burst", "db_max_document_size") else 0)
            if key == "port" and value > 65535:
                raise ConfigError(f"{name} must be a TCP port (1-65535), got {value}")
        elif key in _FLOATS:
            value = _float(name, value)
            if key == "inline_budget" and not 0 < value < 5:
                raise ConfigError(f"{name} must be between 0 and WeChat's 5-second deadline, got {value}")
        elif key == "quota_subscribe_fallback":
            value = _bool(name, value)
        elif key in ("handlers_dir", "data_dir"):
            value = Path(str(value))
        else:
            value = str(value)
        kwargs[key] = value
    kwargs["database_url"] = validate_database_url(kwargs.get("database_url", DEFAULT_DATABASE_URL))
    kwargs["wechat_api_base"] = kwargs.get("wechat_api_base", DEFAULT_API_BASE).rstrip("/")
    if not kwargs["wechat_api_base"].startswith(("http://", "https://")):
        raise ConfigError("CSBOT_WECHAT_API_BASE must be an http:// or https:// URL")
    ts = kwargs.get("token_source", "stable")
    if ts not in ("stable", "plain") and not ts.startswith(("http://", "https://")):
        raise ConfigError("CSBOT_TOKEN_SOURCE must be 'stable', 'plain' or an http(s) URL")

    apps: dict[str, AppConfig] = {}
    toml_apps = data.get("apps", {})
    if not isinstance(toml_apps, dict):
        raise ConfigError("config file: [apps] must be a table of [apps.NAME] tables")
    for name, table in toml_apps.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file: apps.{name} must be a table")
        apps[name] = _app_from_mapping(name, table, f"apps.{name}")

    env_app = {
        "appid": env.get("CSBOT_APPID", ""),
        "secret": env.get("CSBOT_APP_SECRET", ""),
        "token": env.get("CSBOT_TOKEN", ""),
        "encoding_aes_key": env.get("CSBOT_ENCODING_AES_KEY", ""),
        "previous_aes_key": env.get("CSBOT_PREVIOUS_AES_KEY", ""),
        "require_encryption": env.get("CSBOT_REQUIRE_ENCRYPTION", ""),
        "apology_text": env.get("CSBOT_APOLOGY_TEXT", ""),
        "kind": env.get("CSBOT_APP_KIND", ""),
    }
    if any(env.get(v) for v in ("CSBOT_APPID", "CSBOT_TOKEN", "CSBOT_APP_SECRET", "CSBOT_ENCODING_AES_KEY")):
        base = dict(toml_apps.get("default", {}))
        base.update({k: v for k, v in env_app.items() if v not in ("", None)})
        where = "CSBOT_* environment" if "default" not in toml_apps else "apps.default + environment"
        try:
            apps["default"] = _app_from_mapping("default", base, where)
        except ConfigError as exc:
            raise ConfigError(
                str(exc).replace(f"{where}.encoding_aes_key", "CSBOT_ENCODING_AES_KEY")
                .replace(f"{where}: appid", "CSBOT_APPID").replace(f"{where}: token", "CSBOT_TOKEN")
                .replace(f"{where}.kind", "CSBOT_APP_KIND")
            ) from None
    if not apps:
        raise ConfigError("no app configured: set CSBOT_APPID and CSBOT_TOKEN, or [apps.NAME] in a config file")
    kwargs["apps"] = apps

    from csbot.outbound_webhooks import WebhookError, parse_webhooks

    try:
        kwargs["webhooks"] = parse_webhooks(data.get("webhooks", {}))
    except WebhookError as exc:
        raise ConfigError(f"config file: {exc}") from None

    handler_opts = data.get("handlers", {})
    if not isinstance(handler_opts, dict):
        raise ConfigError("config file: [handlers] must be a table of [handlers.NAME] tables")
    handler_opts = {k: dict(v) for k, v in handler_opts.items()}
    if env.get("CSBOT_WELCOME_TEXT"):
        handler_opts.setdefault("welcome", {})["text"] = env["CSBOT_WELCOME_TEXT"]
    if env.get("CSBOT_FAQ_FILE"):
        handler_opts.setdefault("faq", {})["file"] = env["CSBOT_FAQ_FILE"]
    kwargs["handler_options"] = handler_opts
    kwargs["storage_rules"] = _storage_rules(data.get("storage", {}))
    public_url = kwargs.get("public_url", "")
    if public_url and not public_url.startswith(("http://", "https://")):
        raise ConfigError("CSBOT_PUBLIC_URL must be an http:// or https:// URL")
    kwargs["public_url"] = public_url.rstrip("/")
    kwargs["collection_rules"], kwargs["collection_indexes"] = _collections(data.get("collections", {}))
    return Settings(**kwargs)


def _collections(tables: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[collections.NAME]``: security rules (``csbot.cloud.database.rules``) and ``indexes``."""
    from csbot.cloud.database.errors import DatabaseError
    from csbot.cloud.database.rules import RuleError, rules_from_config
    from csbot.cloud.database.store import check_collection
    from csbot.cloud.database.values import split_path

    if not isinstance(tables, dict):
        raise ConfigError("config file: [collections] must be a table of [collections.NAME] tables")
    rules: dict[str, Any] = {}
    indexes: dict[str, Any] = {}
    for name, table in tables.items():
        where = f"collections.{name}"
        try:
            check_collection(name)
            if not isinstance(table, dict):
                raise ConfigError(f"{where} must be a table")
            rules[name] = rules_from_config(table, where=where)
            declared = table.get("indexes", [])
            if (not isinstance(declared, list) or len(declared) > 100
                    or not all(isinstance(i, list) and 0 < len(i) <= 31 for i in declared)):
                raise ConfigError(f"{where}.indexes must be a list of field lists, e.g. [[\"status\", \"createdAt\"]]")
            for fields in declared:
                for f in fields:
                    split_path(f, where=f"{where}.indexes")
            if declared:
                indexes[name] = [list(i) for i in declared]
        except (RuleError, DatabaseError) as exc:
            raise ConfigError(str(exc)) from None
    return rules, indexes



def _storage_rules(table: Any) -> dict[str, Any]:
    """``[storage.rules]`` read/write, checked now so a bad rule stops the start with its name."""
    from csbot.cloud.storage import StorageRules

    if not isinstance(table, dict) or set(table) - {"rules"}:
        raise ConfigError("config file: [storage] takes only a [storage.rules] table (read, write)")
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise ConfigError("config file: [storage.rules] must be a table")
    try:
        StorageRules.from_mapping(rules)
    except ValueError as exc:
        raise ConfigError(f"config file: [storage.rules]: {exc}") from None
    return dict(rules)


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some fields changed (tests, CLI flags)."""
    return replace(settings, **changes)
