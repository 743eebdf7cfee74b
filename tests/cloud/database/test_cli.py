"""``csbot db collections|find|export|import`` against a SQLite file."""

from __future__ import annotations

import json

import pytest

from csbot.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSBOT_APPID", "wx0123456789abcdef")
    monkeypatch.setenv("CSBOT_TOKEN", "token")
    monkeypatch.setenv("CSBOT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}")
    monkeypatch.delenv("CSBOT_CONFIG", raising=False)
    return tmp_path


def test_import_find_export_and_collections(env, capsys):
    source = env / "orders.jsonl"
    source.write_text('{"_id": "o1", "status": "paid", "total": 30}\n'
                      '{"status": "new", "total": 5, "note": "\\u001b[31mred"}\n\n', encoding="utf-8")
    assert main(["db", "import", "orders", str(source)]) == 0
    assert "imported 2 document(s) into orders" in capsys.readouterr().out

    assert main(["db", "find", "orders", "--where", '{"total": {"$gt": 10}}']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["_id"] for line in lines] == ["o1"]

    assert main(["db", "find", "orders", "--order-by", "total:asc", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["total"] == 5 and "\x1b" not in out  # escaped: \u001b

    target = env / "export.jsonl"
    assert main(["db", "export", "orders", "--format", "jsonl", "--output", str(target)]) == 0
    exported = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [d.get("status") for d in exported] == ["paid", "new"]

    assert main(["db", "collections"]) == 0
    assert capsys.readouterr().out.strip() == "orders\t2"


def test_errors_name_the_problem(env, capsys):
    bad = env / "bad.jsonl"
    bad.write_text('{"_id": "a"}\n{"$x": 1}\n', encoding="utf-8")
    assert main(["db", "import", "things", str(bad)]) == 1
    assert "line 2" in capsys.readouterr().err
    assert main(["db", "find", "things", "--where", "{nope"]) == 2
    assert "--where is not JSON" in capsys.readouterr().err
    assert main(["db", "find", "things", "--where", '{"a": {"$foo": 1}}']) == 1
    assert "unknown query operator '$foo'" in capsys.readouterr().err
    dup = env / "dup.jsonl"
    dup.write_text('{"_id": "x"}\n{"_id": "x"}\n', encoding="utf-8")
    assert main(["db", "import", "things", str(dup)]) == 1
    assert "twice" in capsys.readouterr().err
