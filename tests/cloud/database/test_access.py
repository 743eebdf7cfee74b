"""Mini-program access (``ClientDatabase``): rules, placeholders, ownership and client limits,
on SQLite and PostgreSQL. The HTTP routes add only reading and answering (test_http.py)."""

from __future__ import annotations

import itertools

import pytest

from csbot.cloud.database import Database, InvalidParameter, PermissionDenied
from csbot.cloud.database.access import ClientDatabase
from csbot.cloud.database.rules import rules_from_config

_names = itertools.count()


@pytest.fixture
def env(backend):
    coll = f"c{next(_names)}"
    rules = {
        coll: rules_from_config({"read": "doc._openid == auth.openid", "write": "doc._openid == auth.openid"},
                                where=coll),
        f"{coll}_pub": rules_from_config({"mode": "creator_write_all_read"}, where="p"),
        f"{coll}_faq": rules_from_config({"mode": "admin_write_all_read"}, where="f"),
    }

    class Env:
        name = coll

        def client(self, openid):
            return ClientDatabase(backend.store, rules, "default", openid)

        def run(self, coro):
            return backend.run(coro)

        server = Database(backend.store, "default")

    return Env()


def test_owner_rule_with_placeholder(env):
    me, other = env.client("oMe"), env.client("oOther")
    mine = env.run(me.run(env.name, "add", {"data": {"title": "mine"}}))["_id"]
    env.run(other.run(env.name, "add", {"data": {"title": "theirs"}}))
    got = env.run(me.run(env.name, "get", {"where": {"_openid": "{openid}"}}))["data"]
    assert [d["_id"] for d in got] == [mine] and got[0]["_openid"] == "oMe"
    assert env.run(me.run(env.name, "count", {"where": {"_openid": "{openid}"}})) == {"total": 1}
    with pytest.raises(PermissionDenied, match="must fix _openid"):
        env.run(me.run(env.name, "get", {"where": {"title": "theirs"}}))
    with pytest.raises(PermissionDenied, match="must fix _openid"):
        env.run(me.run(env.name, "remove", {"where": {}}))
    assert env.run(me.run(env.name, "update", {"where": {"_openid": "{openid}"}, "data": {"done": True}})) == \
        {"stats": {"updated": 1}}


def test_doc_operations_are_checked_against_the_stored_document(env):
    me, other = env.client("oMe"), env.client("oOther")
    doc_id = env.run(me.run(env.name, "add", {"data": {"n": 1}}))["_id"]
    assert env.run(me.run(env.name, "doc.get", {}, doc_id))["data"]["n"] == 1
    with pytest.raises(PermissionDenied, match=f"false for document '{doc_id}'"):
        env.run(other.run(env.name, "doc.get", {}, doc_id))
    with pytest.raises(PermissionDenied):
        env.run(other.run(env.name, "doc.update", {"data": {"n": 2}}, doc_id))
    with pytest.raises(PermissionDenied):
        env.run(other.run(env.name, "doc.remove", {}, doc_id))
    with pytest.raises(PermissionDenied):  # set over someone else's document
        env.run(other.run(env.name, "doc.set", {"data": {"n": 9}}, doc_id))
    assert env.run(me.run(env.name, "doc.update", {"data": {"n": {"$inc": 1}} if False else {"$inc": {"n": 1}}},
                          doc_id)) == {"stats": {"updated": 1}}
    assert env.run(me.run(env.name, "doc.set", {"data": {"m": 1}}, doc_id)) == \
        {"stats": {"updated": 1, "created": 0}}
    doc = env.run(me.run(env.name, "doc.get", {}, doc_id))["data"]
    assert doc == {"_id": doc_id, "_openid": "oMe", "m": 1}
    assert env.run(me.run(env.name, "doc.remove", {}, doc_id)) == {"stats": {"removed": 1}}


def test_clients_never_write_id_or_another_users_openid(env):
    me = env.client("oMe")
    with pytest.raises(PermissionDenied, match="another user's _openid"):
        env.run(me.run(env.name, "add", {"data": {"_openid": "oOther"}}))
    doc_id = env.run(me.run(env.name, "add", {"data": {"_openid": "{openid}", "_id": "chosen"}}))["_id"]
    assert doc_id == "chosen"
    with pytest.raises(PermissionDenied, match="may not change _openid"):
        env.run(me.run(env.name, "doc.update", {"data": {"_openid": "oOther"}}, doc_id))
    with pytest.raises(PermissionDenied, match="may not change _openid"):
        env.run(me.run(env.name, "update", {"where": {"_openid": "{openid}"}, "data": {"$unset": {"_openid": ""}}}))
    with pytest.raises(Exception, match="_id cannot be changed"):
        env.run(me.run(env.name, "doc.update", {"data": {"_id": "x"}}, doc_id))
    # a document created by set gets the caller as owner
    env.run(me.run(env.name, "doc.set", {"data": {"k": 1}}, "fresh"))
    assert env.run(env.server.collection(env.name).doc("fresh").get())["data"]["_openid"] == "oMe"


def test_basic_modes_and_default_admin_only(env):
    me, other = env.client("oMe"), env.client("oOther")
    pub = f"{env.name}_pub"
    doc_id = env.run(me.run(pub, "add", {"data": {"text": "hello"}}))["_id"]
    assert len(env.run(other.run(pub, "get", {}))["data"]) == 1  # everyone reads
    with pytest.raises(PermissionDenied):
        env.run(other.run(pub, "doc.update", {"data": {"text": "mine now"}}, doc_id))
    faq = f"{env.name}_faq"
    env.run(env.server.collection(faq).add({"q": "?"}))
    assert len(env.run(me.run(faq, "get", {}))["data"]) == 1
    with pytest.raises(PermissionDenied, match="only the server"):
        env.run(me.run(faq, "add", {"data": {"q": "spam"}}))
    with pytest.raises(PermissionDenied, match="only the server"):
        env.run(me.run("undeclared_collection", "get", {}))


def test_client_limits(env):
    me = env.client("oMe")
    env.run(env.server.collection(env.name).add([{"_openid": "oMe", "i": i} for i in range(30)]))
    assert len(env.run(me.run(env.name, "get", {"where": {"_openid": "{openid}"}}))["data"]) == 20
    assert len(env.run(me.run(env.name, "get", {"where": {"_openid": "{openid}"}, "limit": 100}))["data"]) == 20
    page = env.run(me.run(env.name, "get", {"where": {"_openid": "{openid}"}, "orderBy": [["i", "desc"]],
                                            "skip": 25, "field": {"i": True}}))["data"]
    assert [d["i"] for d in page] == [4, 3, 2, 1, 0] and set(page[0]) == {"_id", "i"}
    with pytest.raises(InvalidParameter, match="direction"):
        env.run(me.run(env.name, "get", {"where": {"_openid": "{openid}"}, "orderBy": [["i", "up"]]}))
    with pytest.raises(InvalidParameter, match="collection name"):
        env.run(me.run("../etc", "get", {}))
