"""``Database`` (context.db) on SQLite and PostgreSQL: WeChat's documented examples, the
update commands, limits and errors."""

from __future__ import annotations

import itertools

import pytest

from csbot.cloud.database import (
    Database, DocumentNotFound, DocumentTooLarge, DuplicateId, InvalidParameter, QueryError,
)
from csbot.cloud.database.store import DocumentStore

_names = itertools.count()


class SyncDb:
    """Runs the async API on the backend's loop, so tests read top to bottom."""

    def __init__(self, backend, **store_options):
        self.backend = backend
        store = DocumentStore(backend.engine, **store_options) if store_options else backend.store
        self.db = Database(store, app="default")
        self._ = self.db.command
        self.name = f"t{next(_names)}"

    def run(self, coro):
        return self.backend.run(coro)

    def coll(self, name=None):
        return self.db.collection(name or self.name)

    def ids(self, query):
        return sorted(d["_id"] for d in self.run(query.get())["data"])


@pytest.fixture
def t(backend):
    return SyncDb(backend)


def seed(t, *docs):
    for i, doc in enumerate(docs):
        t.run(t.coll().add({"_id": f"d{i}", **doc}))


def test_nested_object_matches_by_dotted_path_and_eq_matches_exact_subdocument(t):
    seed(t, {"publishInfo": {"country": "US", "year": 2018}}, {"publishInfo": {"country": "CN"}})
    _ = t._
    assert t.ids(t.coll().where({"publishInfo": {"country": "US"}})) == ["d0"]
    assert t.ids(t.coll().where({"publishInfo.country": "US"})) == ["d0"]
    assert t.ids(t.coll().where({"publishInfo": _.eq({"country": "US"})})) == []
    assert t.ids(t.coll().where({"publishInfo": _.eq({"year": 2018, "country": "US"})})) == ["d0"]


def test_arrays_contain_equal_index_and_any_element(t):
    seed(t, {"numbers": [10, 20, 30]}, {"numbers": [20]}, {"numbers": 20}, {"numbers": [[20]]})
    _ = t._
    assert t.ids(t.coll().where({"numbers": 20})) == ["d0", "d1", "d2"]
    assert t.ids(t.coll().where({"numbers": [10, 20, 30]})) == ["d0"]
    assert t.ids(t.coll().where({"numbers": [20]})) == ["d1", "d3"]
    assert t.ids(t.coll().where({"numbers.1": 20})) == ["d0"]
    assert t.ids(t.coll().where({"numbers": _.gt(25)})) == ["d0"]
    assert t.ids(t.coll().where({"numbers": _.gt(25).and_(_.lt(15))})) == ["d0"]
    assert t.ids(t.coll().where({"numbers": _.size(1)})) == ["d1", "d3"]
    assert t.ids(t.coll().where({"numbers": _.all([10, 30])})) == ["d0"]


def test_elem_match_needs_one_element_to_satisfy_everything(t):
    seed(t, {"places": [{"area": 150, "age": 1}]}, {"places": [{"area": 150, "age": 5}, {"area": 50, "age": 1}]})
    _ = t._
    assert t.ids(t.coll().where({"places": _.elem_match({"area": _.gt(100), "age": _.lt(2)})})) == ["d0"]
    assert t.ids(t.coll().where({"places": {"area": _.gt(100), "age": _.lt(2)}})) == ["d0", "d1"]


def test_negations_match_missing_fields(t):
    seed(t, {"tag": "a"}, {"tag": "b"}, {})
    _ = t._
    assert t.ids(t.coll().where({"tag": _.neq("a")})) == ["d1", "d2"]
    assert t.ids(t.coll().where({"tag": _.nin(["a", "b"])})) == ["d2"]
    assert t.ids(t.coll().where(_.nor([{"tag": "a"}]))) == ["d1", "d2"]
    assert t.ids(t.coll().where({"tag": _.exists(False)})) == ["d2"]
    assert t.ids(t.coll().where({"tag": None})) == ["d2"]


def test_comparisons_are_type_strict(t):
    seed(t, {"done": True}, {"done": 1}, {"done": "1"}, {"done": 1.0}, {"done": False})
    _ = t._
    assert t.ids(t.coll().where({"done": True})) == ["d0"]
    assert t.ids(t.coll().where({"done": 1})) == ["d1", "d3"]
    assert t.ids(t.coll().where({"done": "1"})) == ["d2"]
    assert t.ids(t.coll().where({"done": _.gte(0)})) == ["d1", "d3"]
    assert t.ids(t.coll().where({"done": _.gt(False)})) == ["d0"]
    assert t.ids(t.coll().where({"done": _.in_([True, "1"])})) == ["d0", "d2"]


def test_logic_regex_and_mod(t):
    seed(t, {"name": "Alice", "age": 17}, {"name": "bob", "age": 30}, {"name": "alex", "age": 65})
    _ = t._
    assert t.ids(t.coll().where(_.or_([{"age": _.lt(18)}, {"age": _.gt(60)}]))) == ["d0", "d2"]
    assert t.ids(t.coll().where({"age": _.lt(18).or_(_.gt(60))})) == ["d0", "d2"]
    assert t.ids(t.coll().where({"age": _.not_(_.gt(20))})) == ["d0"]
    assert t.ids(t.coll().where({"name": t.db.RegExp("^al", "i")})) == ["d0", "d2"]
    assert t.ids(t.coll().where({"name": {"$regex": "^al"}})) == ["d2"]
    assert t.ids(t.coll().where({"age": _.mod(5, 0)})) == ["d1", "d2"]


def test_add_get_set_update_remove(t):
    coll = t.coll()
    new = t.run(coll.add({"title": "x", "style": {"color": "red", "size": "L"}}))
    assert isinstance(new["_id"], str) and len(new["_id"]) == 32
    doc = t.run(coll.doc(new["_id"]).get())["data"]
    assert doc == {"_id": new["_id"], "style": {"color": "red", "size": "L"}, "title": "x"}
    assert t.run(coll.doc(new["_id"]).update({"style": {"color": "blue"}})) == {"stats": {"updated": 1}}
    assert t.run(coll.doc(new["_id"]).get())["data"]["style"] == {"color": "blue", "size": "L"}
    assert t.run(coll.doc(new["_id"]).update({"style": t._.set({"color": "green"})})) == {"stats": {"updated": 1}}
    assert t.run(coll.doc(new["_id"]).get())["data"]["style"] == {"color": "green"}
    result = t.run(coll.doc(new["_id"]).set({"only": 1}))
    assert result["stats"] == {"updated": 1, "created": 0}
    assert t.run(coll.doc(new["_id"]).get())["data"] == {"_id": new["_id"], "only": 1}
    assert t.run(coll.doc("fresh").set({"n": 1}))["stats"] == {"updated": 0, "created": 1}
    assert t.run(coll.doc(new["_id"]).remove()) == {"stats": {"removed": 1}}
    with pytest.raises(DocumentNotFound):
        t.run(coll.doc(new["_id"]).get())
    with pytest.raises(DuplicateId, match="fresh"):
        t.run(coll.add({"_id": "fresh"}))


def test_where_update_and_remove_report_counts(t):
    seed(t, {"status": "new", "n": 1}, {"status": "new", "n": 2}, {"status": "old"})
    coll = t.coll()
    assert t.run(coll.where({"status": "new"}).update({"status": "seen"})) == {"stats": {"updated": 2}}
    assert t.run(coll.where({"status": "seen"}).update({"status": "seen"})) == {"stats": {"updated": 0}}
    assert t.run(coll.where({"status": "seen"}).count()) == {"total": 2}
    assert t.run(coll.where({"status": "seen"}).remove()) == {"stats": {"removed": 2}}
    assert t.run(coll.count()) == {"total": 1}


def test_update_commands(t):
    _ = t._
    coll = t.coll()
    t.run(coll.add({"_id": "u", "n": 5, "m": 2, "lo": 3, "hi": 3, "old": "v", "arr": [1, 2, 3, 2],
                    "set": [1], "gone": 1}))

    def upd(data):
        t.run(coll.doc("u").update(data))
        return t.run(coll.doc("u").get())["data"]

    assert upd({"n": _.inc(2)})["n"] == 7
    assert upd({"m": _.mul(1.5)})["m"] == 3
    assert upd({"lo": _.min(1), "hi": _.max(9)})["lo"] == 1
    assert t.run(coll.doc("u").get())["data"]["hi"] == 9
    doc = upd({"old": _.rename("new"), "gone": _.remove()})
    assert "old" not in doc and doc["new"] == "v" and "gone" not in doc
    assert upd({"arr": _.push([4, 5])})["arr"] == [1, 2, 3, 2, 4, 5]
    assert upd({"arr": _.pop()})["arr"] == [1, 2, 3, 2, 4]
    assert upd({"arr": _.shift()})["arr"] == [2, 3, 2, 4]
    assert upd({"arr": _.unshift([0])})["arr"] == [0, 2, 3, 2, 4]
    assert upd({"arr": _.pull(2)})["arr"] == [0, 3, 4]
    assert upd({"arr": _.pull(_.gt(3))})["arr"] == [0, 3]
    assert upd({"arr": _.pull_all([0])})["arr"] == [3]
    assert upd({"set": _.add_to_set(1)})["set"] == [1]
    assert upd({"set": _.add_to_set({"each": [1, 2]})})["set"] == [1, 2]
    assert upd({"arr": _.push({"each": [9, 1], "position": 0, "sort": 1, "slice": 2})})["arr"] == [1, 3]
    assert upd({"arr.0": 7})["arr"] == [7, 3]
    assert upd({"deep": {"x": {"y": 1}}})["deep"] == {"x": {"y": 1}}
    with pytest.raises(QueryError, match="not a number"):
        upd({"new": _.inc(1)})
    with pytest.raises(QueryError, match="_id cannot be changed"):
        upd({"_id": "other"})


def test_order_skip_limit_and_field(t):
    seed(t, {"a": {"b": 2}, "s": "x"}, {"a": {"b": 1}, "s": "y"}, {"a": {"b": 2}, "s": "a"}, {"s": "m"})
    coll = t.coll()
    got = t.run(coll.order_by("a.b", "desc").order_by("s", "asc").get())["data"]
    assert [d["_id"] for d in got] == ["d2", "d0", "d1", "d3"]
    got = t.run(coll.order_by("s", "asc").skip(1).limit(2).field({"s": True}).get())["data"]
    assert got == [{"_id": "d3", "s": "m"}, {"_id": "d0", "s": "x"}]
    got = t.run(coll.where({"_id": "d0"}).field({"a": False, "_id": False}).get())["data"]
    assert got == [{"s": "x"}]


def test_server_limits(t):
    coll = t.coll()
    t.run(coll.add([{"i": i} for i in range(150)]))
    assert len(t.run(coll.get())["data"]) == 100
    assert len(t.run(coll.limit(5000).get())["data"]) == 150
    with pytest.raises(InvalidParameter):
        t.run(coll.limit(-1).get())


def test_bad_input_is_a_clear_error_never_sql(t):
    coll = t.coll()
    with pytest.raises(QueryError, match=r"\$where \(JavaScript conditions\) is not supported"):
        t.run(coll.where({"a": {"$where": "1"}}).get())
    with pytest.raises(QueryError, match=r"'\$set' must not start with '\$'"):
        t.run(coll.add({"x": {"$set": 1}}))
    with pytest.raises(QueryError, match="breaks WeChat's rules"):
        t.run(coll.add({"_private": 1}))
    with pytest.raises(QueryError, match="mixes operators"):
        t.run(coll.where({"a": {"$gt": 1, "b": 2}}).get())
    with pytest.raises(QueryError, match="compares with"):
        t.run(coll.where({"a": {"$gt": [1]}}).get())
    with pytest.raises(QueryError, match="not valid"):
        t.run(coll.where({"a'; DROP TABLE x; --": 1}).get())
    with pytest.raises(InvalidParameter, match="collection name"):
        t.db.collection("bad name")


def test_document_size_cap(backend):
    t = SyncDb(backend, max_document_size=1000)
    with pytest.raises(DocumentTooLarge) as info:
        t.run(t.coll().add({"text": "x" * 2000}))
    assert info.value.status == 413
    t.run(t.coll().add({"_id": "ok", "text": "x"}))
    with pytest.raises(DocumentTooLarge):
        t.run(t.coll().doc("ok").update({"text": "y" * 2000}))


def test_declared_indexes_are_created_and_used(backend):
    t = SyncDb(backend, indexes={"orders_ix": [["status", "createdAt"]]})
    t.run(t.db.store.ensure_indexes())
    t.run(t.db.store.ensure_indexes())  # idempotent
    coll = t.db.collection("orders_ix")
    for start in range(0, 3000, 1000):
        t.run(coll.add([{"status": "paid" if i % 100 else "new", "createdAt": i} for i in range(start, start + 1000)]))
    assert t.run(coll.where({"status": "new"}).count()) == {"total": 30}
    from sqlalchemy import text

    from csbot.cloud.database.query import parse_query
    from csbot.cloud.database.sql import Compiler

    c = Compiler(t.db.store.dialect)
    where = t.db.store._where(c, "default", "orders_ix", parse_query({"status": "new"}))
    explain = "EXPLAIN QUERY PLAN" if backend.name == "sqlite" else "EXPLAIN"

    async def plan():
        async with backend.engine.connect() as conn:
            if backend.name == "postgresql":
                # the plain (app, collection, …) indexes compete on a small table: take them away
                # inside this transaction (rolled back) to see that the declared index serves
                await conn.execute(text("ANALYZE cloud_documents"))
                await conn.execute(text("DROP INDEX ix_cloud_documents_order"))
                await conn.execute(text("DROP INDEX ix_cloud_documents_owner"))
                await conn.execute(text("ALTER TABLE cloud_documents DROP CONSTRAINT uq_cloud_documents_id"))
                await conn.execute(text("ALTER TABLE cloud_documents DROP CONSTRAINT cloud_documents_pkey"))
                await conn.execute(text("SET LOCAL enable_seqscan = off"))
            rows = (await conn.execute(text(f"{explain} SELECT body FROM cloud_documents WHERE {where}"),
                                       c.params)).all()
            await conn.rollback()
            return " ".join(str(r[-1]) for r in rows)

    shown = t.run(plan())
    assert "ix_cdoc_" in shown, shown


def test_a_query_too_complex_for_the_engine_is_a_query_error(t):
    _ = t._
    cond: dict = {"a.b.c.d.e.f.g": 1}
    for _level in range(30):
        cond = {"x.y.z": _.elem_match({"$nor": [cond]})}
    seed(t, {"x": 1})
    try:
        t.run(t.coll().where(cond).get())
    except QueryError as exc:
        assert "too complex" in str(exc) or "nested too deeply" in str(exc)


def test_concurrent_increments_never_lose_an_update(t):
    import asyncio

    coll = t.coll()
    t.run(coll.add({"_id": "counter", "n": 0}))

    async def bump_many():
        await asyncio.gather(*(coll.doc("counter").update({"n": t._.inc(1)}) for _ in range(20)))

    t.run(bump_many())
    assert t.run(coll.doc("counter").get())["data"]["n"] == 20


def test_scripts_connect_with_database_connect(tmp_path):
    import asyncio

    from csbot.cloud import Database as PublicDatabase

    async def script():
        async with PublicDatabase.connect(f"sqlite+aiosqlite:///{tmp_path / 'script.db'}") as db:
            await db.collection("notes").add({"text": "hello"})
            return (await db.collection("notes").where({"text": db.RegExp("^he")}).count())["total"]

    assert asyncio.run(script()) == 1
