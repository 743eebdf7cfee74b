"""Parsing a push body into WeChat's own field dict, and deriving dedup keys and text.

Nothing here trusts the body. XML is read by expat with handlers that refuse a document
type declaration, an entity declaration or an external reference the moment the parser
meets one (wherever the bytes hide it: inside a processing instruction, behind an encoding
declaration), so neither XXE nor entity expansion can happen; predefined entities and
character references still work. Both formats are held to the same limits while they are
read: nesting depth, number of values, and every field's size (``MAX_FIELD_BYTES``, so a
``Content`` of more than 64 KiB is refused, never truncated), with text free of NUL
characters and lone surrogates, which no SQL store can keep. Fields stored in columns of
their own (``FromUserName``, ``MsgType``, ``Event``, ``MsgId``) are held to those columns'
widths. Every refusal is a ``BadPush`` (400) with a short reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from xml.parsers import expat

from .errors import BadPush

__all__ = ["sniff_format", "parse_fields", "normalize_event", "dedup_key", "describe", "MAX_FIELD_BYTES"]

_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n"
_MAX_DEPTH = 32
_MAX_KEY = 500
#: the largest value of one field, in UTF-8 bytes (WeChat's own text limit is far lower)
MAX_FIELD_BYTES = 64 * 1024
#: values (XML elements, JSON scalars and containers) in one push
_MAX_VALUES = 4096
#: a field name (XML element, JSON key)
_MAX_NAME = 128
#: fields that have a column of their own in the store, and its width
_COLUMN_WIDTHS = {"FromUserName": 128, "MsgType": 64, "Event": 128, "MsgId": 64}
#: characters no SQL store keeps: NUL (PostgreSQL text) and lone surrogates (not UTF-8)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

#: fields that are ids: always strings, because MsgId exceeds 2**53 and JSON
#: gives a number where XML gives text
_ID_FIELDS = frozenset({"MsgId", "MsgID", "MsgDataId", "Idx"})

#: subscribe-message events and the XML element that holds their <List> items
_LIST_CONTAINERS = {
    "subscribe_msg_popup_event": "SubscribeMsgPopupEvent",
    "subscribe_msg_change_event": "SubscribeMsgChangeEvent",
    "subscribe_msg_sent_event": "SubscribeMsgSentEvent",
}

#: event fields that identify one event among several of the same user/second
_EVENT_ID_FIELDS = ("EventKey", "Ticket", "KfAccount", "FromKfAccount", "ToKfAccount", "trace_id")


# ---------------------------------------------------------------- formats


def sniff_format(body: bytes) -> str:
    """``"xml"`` or ``"json"`` from the first non-blank byte (after an optional UTF-8 BOM).

    WeChat's Content-Type values are not documented, so the body decides.
    """
    head = body[len(_BOM) :] if body.startswith(_BOM) else body
    head = head.lstrip(_WS)
    if head[:1] == b"<":
        return "xml"
    if head[:1] == b"{":
        return "json"
    raise BadPush("body is neither XML nor JSON")


class _XMLFields:
    """expat callbacks that build the field dict of ``<xml>…</xml>`` under the limits.

    The root's children become keys; a leaf gives its text ('' when empty, never stripped),
    an element with children a nested dict, repeated names a list. Mixed text around child
    elements and attributes are ignored, as WeChat sends neither.
    """

    __slots__ = ("root", "stack", "names", "texts", "sizes", "values", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.root: dict[str, Any] | None = None
        self.stack: list[dict[str, Any]] = []
        self.names: list[str] = []
        self.texts: list[list[str]] = []
        self.sizes: list[int] = []
        self.values = 0

    def start(self, name: str, _attrs: Any) -> None:
        self.values += 1
        if self.values > _MAX_VALUES:
            raise BadPush(f"push has more than {_MAX_VALUES} fields")
        if len(self.stack) > _MAX_DEPTH:
            raise BadPush("XML is nested too deeply")
        if len(name) > _MAX_NAME:
            raise BadPush(f"an XML element name is longer than {_MAX_NAME} characters")
        node: dict[str, Any] = {}
        if self.root is None:
            self.root = node
        self.stack.append(node)
        self.names.append(name)
        self.texts.append([])
        self.sizes.append(0)

    def data(self, text: str) -> None:
        if not self.texts:
            return
        self.texts[-1].append(text)
        self.sizes[-1] += len(text)
        if self.sizes[-1] > self.limit:  # characters <= bytes: refuse before reading on
            raise BadPush(f"{_field(self.names[-1])} is longer than {self.limit} bytes")

    def end(self, name: str) -> None:
        node = self.stack.pop()
        self.names.pop()
        texts = self.texts.pop()
        self.sizes.pop()
        if not self.stack:
            return
        value: Any = node if node else "".join(texts)
        if isinstance(value, str) and len(value) > self.limit // 4 and _utf8_size(value) > self.limit:
            raise BadPush(f"{_field(name)} is longer than {self.limit} bytes")
        parent = self.stack[-1]
        if name in parent:
            prev = parent[name]
            if isinstance(prev, list):
                prev.append(value)
            else:
                parent[name] = [prev, value]
        else:
            parent[name] = value


def _refuse_dtd(*_args: Any) -> Any:
    raise BadPush("DTD and entity declarations are not accepted")


def _parse_xml(body: bytes, limit: int) -> dict[str, Any]:
    # "utf-8" overrides any declared encoding: WeChat only sends UTF-8, and a declared
    # UTF-16/UTF-7 body must not be read differently from what it looks like.
    parser = expat.ParserCreate("utf-8")
    fields = _XMLFields(limit)
    parser.buffer_text = True
    parser.StartElementHandler = fields.start
    parser.EndElementHandler = fields.end
    parser.CharacterDataHandler = fields.data
    # refused where the parser meets them, never by looking at bytes
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.NotationDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    try:
        parser.Parse(body, True)
    except expat.ExpatError:
        raise BadPush("malformed XML") from None
    except RecursionError:  # pragma: no cover - depth is limited above
        raise BadPush("XML is nested too deeply") from None
    if fields.root is None:  # pragma: no cover - expat refuses a document without a root
        raise BadPush("malformed XML")
    return fields.root


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


#: the only way a NUL or a surrogate gets into JSON text: a \\u escape (raw ones are not UTF-8)
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _json_within_limits(body: bytes, data: dict[str, Any], limit: int) -> bool:
    """True when the body's bytes alone prove every limit holds, so no walk is needed: no string
    can be longer than the body, no body shorter than 2 bytes a value holds too many values, no
    document with few brackets nests deeply, and no text without a risky escape has a NUL or a
    surrogate. A flat object's keys are checked here too. Typical pushes take this path."""
    brackets = body.count(b"{") + body.count(b"[")
    if len(body) > limit or len(body) >= 2 * _MAX_VALUES or brackets > _MAX_DEPTH or _RISKY_ESCAPE.search(body):
        return False
    if brackets == 1:  # a flat object: its keys are all there is
        return all(len(key) <= _MAX_NAME for key in data)
    return False


def _check_json(data: Any, limit: int) -> None:
    """Depth, number of values, sizes and storable text of a parsed JSON body (iteratively)."""
    todo: list[tuple[Any, int]] = [(data, 1)]
    values = 0
    while todo:
        value, depth = todo.pop()
        values += 1
        if values > _MAX_VALUES:
            raise BadPush(f"push has more than {_MAX_VALUES} fields")
        if isinstance(value, str):
            _check_text(value, None, limit)
        elif isinstance(value, dict):
            if depth > _MAX_DEPTH:
                raise BadPush("JSON is nested too deeply")
            for key, item in value.items():
                if len(key) > _MAX_NAME:
                    raise BadPush(f"a JSON key is longer than {_MAX_NAME} characters")
                if _UNSTORABLE.search(key):
                    raise BadPush("a JSON key has a NUL character or a lone surrogate")
                if isinstance(item, str):
                    _check_text(item, key, limit)
                    values += 1
                else:
                    todo.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > _MAX_DEPTH:
                raise BadPush("JSON is nested too deeply")
            todo.extend((item, depth + 1) for item in value)


def _check_text(text: str, name: str | None, limit: int) -> None:
    if len(text) > limit // 4 and (len(text) > limit or _utf8_size(text) > limit):
        raise BadPush(f"{_field(name)} is longer than {limit} bytes")
    if _UNSTORABLE.search(text):
        raise BadPush(f"{_field(name)} has a NUL character or a lone surrogate")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def _field(name: str | None) -> str:
    """A field's name for a refusal reason: the caller's own text only when it is a plain name."""
    return f"field {name}" if name is not None and _PLAIN_NAME.fullmatch(name) else "a field"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_fields(body: bytes, fmt: str, *, field_limit: int = MAX_FIELD_BYTES) -> dict[str, Any]:
    """Parse a WeChat XML or JSON body into a dict of its top-level fields.

    XML: the root's children become keys; leaves give their text (``''`` when
    empty, never stripped), elements with children give nested dicts, repeated
    names give lists. JSON: must be an object; integers stay exact. Both are held
    to the limits of the module docstring; ``field_limit`` is raised only for an
    encrypted envelope, whose ``Encrypt`` is as large as the message it carries.
    """
    if fmt == "xml":
        return _parse_xml(body, field_limit)
    if fmt == "json":
        try:
            data = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeError, RecursionError):  # JSONDecodeError is a ValueError
            raise BadPush("malformed JSON") from None
        if not isinstance(data, dict):
            raise BadPush("JSON body is not an object")
        if not _json_within_limits(body, data, field_limit):
            _check_json(data, field_limit)
        return data
    raise BadPush(f"unknown body format {fmt!r}")


# ---------------------------------------------------------------- normalising


def _ids_to_str(value: Any) -> Any:
    """Copy ``value`` with every id field (MsgId, MsgID, MsgDataId, Idx) as a string."""
    if isinstance(value, Mapping):
        return {
            k: (_id_str(v) if k in _ID_FIELDS and not isinstance(v, (Mapping, list)) else _ids_to_str(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ids_to_str(v) for v in value]
    return value


def _id_str(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # already imprecise above 2**53; nothing better to do
    return str(value)


def _create_time(value: Any) -> int:
    if isinstance(value, bool):
        raise BadPush("CreateTime is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,12}\s*", value):
        return int(value)
    raise BadPush("CreateTime is not an integer")


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list) else [value]


def normalize_event(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The cloud-function-style event: WeChat's field names, same dict from XML or JSON.

    Rules:

    * ``FromUserName`` and ``MsgType`` are required (non-empty strings), and
      ``CreateTime`` is required and becomes an ``int`` (JSON numbers and
      digit strings are both accepted).
    * Id fields ``MsgId``, ``MsgID``, ``MsgDataId`` and ``Idx`` become ``str``
      at any depth (``MsgId`` exceeds 2**53, and XML gives text anyway).
    * Every other scalar stays as the format gives it: JSON numbers stay
      numbers, XML values are strings. WeChat documents each field with one
      type per format, so the same push gives the same dict in the common case.
    * Subscribe-message events (``subscribe_msg_popup_event``,
      ``subscribe_msg_change_event``, ``subscribe_msg_sent_event``): the items
      are always a list under a top-level ``"List"`` *and* under the XML
      container key (``{"SubscribeMsgPopupEvent": {"List": [...]}}``), whether
      the push was XML (container with repeated ``<List>``) or JSON (top-level
      ``"List"`` that is an object for one item and an array for several).
    * ``FromUserName``, ``MsgType``, ``Event`` and ``MsgId`` fit their store columns.
    * Unknown ``MsgType``/``Event`` values are returned as they are.
    """
    event = _ids_to_str(dict(fields))
    for name in ("FromUserName", "MsgType"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise BadPush(f"push has no {name}")
    for name, width in _COLUMN_WIDTHS.items():
        value = event.get(name)
        if isinstance(value, (Mapping, list)):
            raise BadPush(f"{name} is not a single value")
        if isinstance(value, str) and len(value) > width:
            raise BadPush(f"{name} is longer than {width} characters")
    if "CreateTime" not in event or event["CreateTime"] in ("", None):
        raise BadPush("push has no CreateTime")
    event["CreateTime"] = _create_time(event["CreateTime"])

    name = event.get("Event")
    container = _LIST_CONTAINERS.get(name.lower()) if isinstance(name, str) else None
    if container is not None:
        if "List" in event:
            items = _as_list(event["List"])
        else:
            holder = event.get(container)
            items = _as_list(holder.get("List")) if isinstance(holder, Mapping) else []
        holder_out = dict(event[container]) if isinstance(event.get(container), Mapping) else {}
        holder_out["List"] = items
        event[container] = holder_out
        event["List"] = items
    return event


# ---------------------------------------------------------------- dedup & text


def _cap(key: str) -> str:
    """Keep keys under 500 chars: the head stays readable, the tail is hashed."""
    if len(key) < _MAX_KEY:
        return key
    return key[:400] + ":sha256:" + hashlib.sha256(key[400:].encode("utf-8")).hexdigest()


def _scalar_text(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, (Mapping, list)):
        return None
    return str(value)


def dedup_key(event: Mapping[str, Any]) -> str:
    """A key identifying one push across WeChat's retries (spec §5).

    Messages: ``msg:<MsgId>``. Events: ``evt:<FromUserName>:<CreateTime>:<Event>``
    followed by the event's own ids when present (EventKey, Ticket, KfAccount,
    trace_id, the TemplateId/MsgID of subscribe-message items, ...), so two
    different events of one user in the same second are not merged. Anything
    else: ``raw:`` + sha256 of the canonical JSON of the event.
    """
    msg_id = _scalar_text(event.get("MsgId"))
    if msg_id is not None:
        return _cap("msg:" + msg_id)
    if str(event.get("MsgType", "")).lower() == "event":
        parts = ["evt", str(event.get("FromUserName", "")), str(event.get("CreateTime", "")), str(event.get("Event", ""))]
        for name in _EVENT_ID_FIELDS:
            text = _scalar_text(event.get(name))
            if text is not None:
                parts.append(text)
        for item in _as_list(event.get("List")):
            if isinstance(item, Mapping):
                for name in ("TemplateId", "MsgID"):
                    text = _scalar_text(item.get(name))
                    if text is not None:
                        parts.append(text)
        return _cap(":".join(parts))
    canonical = json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "raw:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _join(*parts: Any) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))


def describe(event: Mapping[str, Any]) -> str | None:
    """Short human text for storage and search; ``None`` for unknown message types."""
    msg_type = str(event.get("MsgType", ""))
    kind = msg_type.lower()
    if kind == "text":
        return str(event.get("Content", ""))
    if kind == "image":
        return "[image]"
    if kind == "voice":
        return _scalar_text(event.get("Recognition")) or "[voice]"
    if kind in ("video", "shortvideo"):
        return "[video]"
    if kind == "location":
        x, y = event.get("Location_X", ""), event.get("Location_Y", "")
        return _join("[location]", event.get("Label"), f"({x},{y})")
    if kind == "link":
        return _join("[link]", event.get("Title"), event.get("Url"))
    if kind == "file":
        return _join("[file]", event.get("Title"))
    if kind == "miniprogrampage":
        return _join("[mini program card]", event.get("Title"), event.get("PagePath"))
    if kind == "event":
        return _join("[event]", event.get("Event"), _scalar_text(event.get("SessionFrom")), _scalar_text(event.get("EventKey")))
    return None
