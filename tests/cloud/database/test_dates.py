"""Dates in the cloud database (``new Date``, ``db.serverDate()``, ``{"$date": ...}``) on SQLite
and PostgreSQL: stored as ``{"$date": epoch ms}``, read back in that form, equal to equal
dates, compared only with dates, sorted after booleans; what is still unsupported is refused
by name."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from csbot.cloud.database import QueryError
from csbot.cloud.database.jsquery import parse_statement
from csbot.cloud.database.matcher import matches
from csbot.cloud.database.query import parse_query
from csbot.cloud.database.update import parse_update
from csbot.cloud.database.values import normalize

from .test_api import SyncDb, seed

JAN_2024 = 1704067200000  # 2024-01-01T00:00:00Z


@pytest.fixture
def t(backend):
    return SyncDb(backend)


def test_date_values_are_normalized_from_every_wire_form():
    assert normalize({"$date": JAN_2024}) == {"$date": JAN_2024}
    assert normalize({"$date": float(JAN_2024)}) == {"$date": JAN_2024}
    assert normalize({"$date": "2024-01-01T00:00:00Z"}) == {"$date": JAN_2024}
    assert normalize({"$date": "2024-01-01T08:00:00+08:00"}) == {"$date": JAN_2024}
    before = time.time() * 1000
    server = normalize({"$date": {"offset": 60_000}})["$date"]
    assert before + 60_000 <= server <= time.time() * 1000 + 60_000
    for bad, reason in [({"$date": "yesterday"}, "ISO 8601"), ({"$date": "2024-01-01T00:00:00"}, "time zone"),
                        ({"$date": True}, "epoch milliseconds"), ({"$date": 1e300}, "epoch milliseconds"),
                        ({"$date": {"offset": "1"}}, "offset"), ({"$date": 1, "x": 2}, "must not start with '\\$'")]:
        with pytest.raises(QueryError, match=reason):
            normalize(bad, data=True)


def test_dates_round_trip_and_compare_only_with_dates(t):
    _ = t._
    seed(t, {"at": datetime(2024, 1, 1, tzinfo=timezone.utc)}, {"at": {"$date": JAN_2024 + 1000}},
         {"at": JAN_2024 + 500}, {"at": "2024-06-01"}, {"at": [{"$date": JAN_2024 - 1}, 3]})
    assert t.run(t.coll().doc("d0").get())["data"]["at"] == {"$date": JAN_2024}
    after = {"$date": JAN_2024 + 1}
    assert t.ids(t.coll().where({"at": _.gt(after)})) == ["d1"]  # the number JAN_2024+500 is no date
    assert t.ids(t.coll().where({"at": _.lt(datetime(2024, 1, 1, tzinfo=timezone.utc))})) == ["d4"]
    assert t.ids(t.coll().where({"at": _.gte({"$date": "2024-01-01T00:00:00Z"})})) == ["d0", "d1"]
    assert t.ids(t.coll().where({"at": {"$date": JAN_2024}})) == ["d0"]
    assert t.ids(t.coll().where({"at": _.eq(datetime(2024, 1, 1, tzinfo=timezone.utc))})) == ["d0"]
    assert t.ids(t.coll().where({"at": _.in_([{"$date": JAN_2024 - 1}, "2024-06-01"])})) == ["d3", "d4"]
    assert t.ids(t.coll().where({"at": _.neq({"$date": JAN_2024})})) == ["d1", "d2", "d3", "d4"]
    assert t.ids(t.coll().where({"at": _.gt(JAN_2024)})) == ["d2"]  # a number compares with numbers only


def test_dates_sort_after_booleans_by_time(t):
    seed(t, {"v": {"$date": 5}}, {"v": True}, {"v": {"$date": -5}}, {"v": 10}, {"v": "s"}, {"w": 1})
    got = [d["_id"] for d in t.run(t.coll().order_by("v", "asc").get())["data"]]
    assert got == ["d5", "d3", "d4", "d1", "d2", "d0"]
    got = [d["_id"] for d in t.run(t.coll().order_by("v", "desc").get())["data"]]
    assert got == ["d0", "d2", "d1", "d4", "d3", "d5"]


def test_server_date_in_add_and_update_is_the_servers_clock(t):
    before = time.time() * 1000
    doc_id = t.run(t.coll().add({"createdAt": t.db.server_date(), "due": t.db.serverDate(offset=3_600_000)}))["_id"]
    t.run(t.coll().doc(doc_id).update({"seenAt": t.db.server_date()}))
    doc = t.run(t.coll().doc(doc_id).get())["data"]
    after = time.time() * 1000
    assert before <= doc["createdAt"]["$date"] <= doc["seenAt"]["$date"] <= after
    assert doc["due"]["$date"] - doc["createdAt"]["$date"] == pytest.approx(3_600_000, abs=50)
    assert t.ids(t.coll().where({"createdAt": t._.lte(t.db.server_date())})) == [doc_id]


def test_min_max_and_push_sort_order_dates(t):
    seed(t, {"last": {"$date": 100}, "list": [{"$date": 3}, {"$date": 1}]})
    t.run(t.coll().doc("d0").update({"last": t._.max({"$date": 200})}))
    t.run(t.coll().doc("d0").update({"last": t._.min({"$date": 150})}))
    t.run(t.coll().doc("d0").update({"list": t._.push({"each": [{"$date": 2}], "sort": 1})}))
    doc = t.run(t.coll().doc("d0").get())["data"]
    assert doc["last"] == {"$date": 150}
    assert doc["list"] == [{"$date": 1}, {"$date": 2}, {"$date": 3}]


def test_wechat_statements_with_dates_parse():
    st = parse_statement('db.collection("logs").where({at: _.gt(new Date("2024-01-01T00:00:00Z"))}).get()')
    from csbot.cloud.database.commands import serialize_condition

    query = parse_query(serialize_condition(st.where))
    assert matches(query, {"at": {"$date": JAN_2024 + 1}})
    assert not matches(query, {"at": JAN_2024 + 1})
    st = parse_statement('db.collection("logs").add({data: {at: db.serverDate({offset: 1000}), n: new Date(5)}})')
    from csbot.cloud.database.commands import serialize_value

    data = normalize(serialize_value(st.data), data=True)
    assert data["n"] == {"$date": 5} and data["at"]["$date"] > time.time() * 1000


@pytest.mark.parametrize("wire, named", [
    ({"loc": {"$geoNear": {"geometry": {}}}}, "geo queries"),
    ({"loc": {"$geoWithin": {}}}, "geo queries"),
    ({"$expr": {"$gt": ["$a", "$b"]}}, "unknown query operator"),
    ({"n": {"$expr": 1}}, "aggregation expressions"),
    ({"n": {"$type": "string"}}, "type queries"),
    ({"n": {"$where": "1"}}, "JavaScript conditions"),
])
def test_unsupported_operators_are_refused_by_name(wire, named):
    with pytest.raises(QueryError, match=named):
        parse_query(wire)


def test_unsupported_update_and_statement_features_are_refused_by_name():
    with pytest.raises(QueryError, match="bit"):
        parse_update({"$bit": {"n": {"and": 1}}})
    with pytest.raises(QueryError, match="geo queries"):
        parse_statement('db.collection("x").where({loc: db.Geo.Point(1, 2)}).get()')
    with pytest.raises(QueryError, match=r"aggregate"):
        parse_statement('db.collection("x").aggregate().end()')
