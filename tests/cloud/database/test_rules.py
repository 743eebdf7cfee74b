"""Security rules: parsed (never evaluated as code), WeChat's query-subset semantics, basic
modes, and configuration errors that name the problem."""

from __future__ import annotations

import pytest

from csbot.cloud.database.errors import PermissionDenied
from csbot.cloud.database.query import parse_query
from csbot.cloud.database.rules import (
    ADMIN_ONLY, RuleError, check_document, check_query, parse_rule, rules_from_config,
)
from csbot.config import ConfigError, load_settings

OWNER = rules_from_config({"read": "doc._openid == auth.openid", "write": "doc._openid == auth.openid"},
                          where="collections.orders")


def read(rules, where, openid="oMe"):
    check_query(rules, "orders", "read", parse_query(where), openid=openid)


def test_query_must_pin_the_owner_and_the_refusal_names_the_missing_condition():
    read(OWNER, {"_openid": "oMe", "status": "paid"})
    with pytest.raises(PermissionDenied, match=r'must fix _openid.*add "_openid": "\{openid\}" to where'):
        read(OWNER, {"status": "paid"})
    with pytest.raises(PermissionDenied, match="false for _openid = 'oOther'"):
        read(OWNER, {"_openid": "oOther"})
    with pytest.raises(PermissionDenied, match="must fix _openid"):
        read(OWNER, {"_openid": {"$ne": "oOther"}})  # an operator is not a pin


def test_or_branches_and_in_lists_must_each_satisfy_the_rule():
    read(OWNER, {"$or": [{"_openid": "oMe", "a": 1}, {"_openid": "oMe", "b": 2}]})
    with pytest.raises(PermissionDenied):
        read(OWNER, {"$or": [{"_openid": "oMe"}, {"b": 2}]})
    read(OWNER, {"_openid": {"$in": ["oMe"]}})
    with pytest.raises(PermissionDenied, match="oOther"):
        read(OWNER, {"_openid": {"$in": ["oMe", "oOther"]}})


def test_rule_language_operators():
    rules = rules_from_config({"read": "doc.status in ['open', 'paid'] && !(doc.level > 3) || auth.openid == 'oAdmin'"},
                              where="c")
    read(rules, {"status": "open", "level": 2})
    read(rules, {"status": {"$in": ["open", "paid"]}, "level": 1})
    read(rules, {}, openid="oAdmin")
    with pytest.raises(PermissionDenied):
        read(rules, {"status": "closed", "level": 1})
    with pytest.raises(PermissionDenied, match="must fix level"):
        read(rules, {"status": "open"})
    nested = rules_from_config({"read": "doc.owner.id == auth.openid && doc['kind'] == 'x'"}, where="c")
    read(nested, {"owner.id": "oMe", "kind": "x"})
    read(nested, {"owner": {"id": "oMe"}, "kind": "x"})


def test_basic_modes():
    everyone = rules_from_config({"mode": "creator_write_all_read"}, where="c")
    read(everyone, {})
    check_document(everyone, "c", "create", {"_id": "x", "_openid": "oMe"}, openid="oMe")
    with pytest.raises(PermissionDenied, match="false for document 'x'"):
        check_document(everyone, "c", "update", {"_id": "x", "_openid": "oOther"}, openid="oMe")
    admin_read = rules_from_config({"mode": "admin_write_all_read"}, where="c")
    read(admin_read, {})
    with pytest.raises(PermissionDenied, match="only the server"):
        check_document(admin_read, "c", "create", {"_id": "x"}, openid="oMe")
    for rules in (ADMIN_ONLY, rules_from_config({"mode": "admin_only"}, where="c")):
        with pytest.raises(PermissionDenied, match="only the server"):
            read(rules, {"_openid": "oMe"})


def test_create_and_update_rules_override_write_and_see_request_data():
    rules = rules_from_config({"write": False, "create": "request.data.score <= 100 && doc._openid == auth.openid"},
                              where="c")
    check_document(rules, "c", "create", {"_openid": "oMe", "score": 5}, openid="oMe", data={"score": 5})
    with pytest.raises(PermissionDenied):
        check_document(rules, "c", "create", {"_openid": "oMe", "score": 500}, openid="oMe", data={"score": 500})
    with pytest.raises(PermissionDenied):
        check_query(rules, "c", "delete", parse_query({"_openid": "oMe"}), openid="oMe")


@pytest.mark.parametrize("source, message", [
    ("doc.x ==", "end of rule"),
    ("get('database.users.x').admin", "function calls"),
    ("process.exit()", "unknown variable 'process'"),
    ("doc.x = 1", "unexpected character '='"),
    ("doc.a`", "unexpected character"),
    ("x" * 1025, "longer than 1024"),
    (12, "true, false or an expression"),
])
def test_bad_rules_are_refused_at_parse_time(source, message):
    with pytest.raises(RuleError, match=message):
        parse_rule(source, where="collections.c.read")


def test_rules_and_indexes_come_from_the_config_file(tmp_path):
    path = tmp_path / "csbot.toml"
    path.write_text('''
[collections.orders]
read = "doc._openid == auth.openid"
write = "doc._openid == auth.openid"
indexes = [["status", "createdAt"], ["_openid"]]

[collections.faq]
mode = "admin_write_all_read"
''', encoding="utf-8")
    env = {"CSBOT_APPID": "wx0123456789abcdef", "CSBOT_TOKEN": "t"}
    settings = load_settings(env=env, config_file=path)
    assert settings.collection_indexes == {"orders": [["status", "createdAt"], ["_openid"]]}
    assert settings.collection_rules["faq"].read.constant is True
    path.write_text('[collections.orders]\nread = "doc._openid === auth.openid"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="collections.orders.read"):
        load_settings(env=env, config_file=path)
    path.write_text('[collections.orders]\nmode = "everyone"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="mode: must be one of"):
        load_settings(env=env, config_file=path)
    path.write_text('[collections.orders]\nindexes = ["status"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="indexes must be a list of field lists"):
        load_settings(env=env, config_file=path)
