"""Parsing a push body into WeChat's own field dict, and deriving dedup keys and text.

Nothing here trusts the body: XML with any markup declaration (DOCTYPE,
ENTITY, ...) is refused before a parser sees it, so neither XXE nor entity
expansion bombs can happen; JSON must be an object.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from .errors import BadPush

__all__ = ["sniff_format", "parse_fields", "normalize_event", "dedup_key", "describe"]

_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n"
_MAX_DEPTH = 32
_MAX_KEY = 500

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


def _refuse_declarations(body: bytes) -> None:
    """Refuse DTDs, entity declarations and any other ``<!`` markup declaration.

    A markup declaration can only appear outside CDATA sections and comments,
    so those are skipped: a customer typing ``<!DOCTYPE html>`` into the chat
    (which arrives inside CDATA) is not refused, while a real DTD always is.
    The body is parsed as UTF-8 whatever it declares (see ``parse_fields``),
    so this byte scan sees exactly what the parser sees.
    """
    i = 0
    while True:
        i = body.find(b"<!", i)
        if i < 0:
            return
        if body.startswith(b"<![CDATA[", i):
            end = body.find(b"]]>", i + 9)
            if end < 0:
                raise BadPush("malformed XML")
            i = end + 3
        elif body.startswith(b"<!--", i):
            end = body.find(b"-->", i + 4)
            if end < 0:
                raise BadPush("malformed XML")
            i = end + 3
        else:
            raise BadPush("DTD and entity declarations are not accepted")


def _element_value(elem: ET.Element, depth: int) -> Any:
    if len(elem) == 0:
        return elem.text or ""
    if depth > _MAX_DEPTH:
        raise BadPush("XML is nested too deeply")
    return _children(elem, depth + 1)


def _children(elem: ET.Element, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for child in elem:
        value = _element_value(child, depth)
        tag = child.tag
        if tag in out:
            prev = out[tag]
            if isinstance(prev, list):
                prev.append(value)
            else:
                out[tag] = [prev, value]
        else:
            out[tag] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_fields(body: bytes, fmt: str) -> dict[str, Any]:
    """Parse a WeChat XML or JSON body into a dict of its top-level fields.

    XML: the root's children become keys; leaves give their text (``''`` when
    empty, never stripped), elements with children give nested dicts, repeated
    names give lists. JSON: must be an object; integers stay exact.
    """
    if fmt == "xml":
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPush("malformed XML") from None
        _refuse_declarations(body)
        try:
            # encoding= overrides any declared encoding: WeChat only sends
            # UTF-8, and a declared UTF-16/EBCDIC body could hide a DTD from
            # the byte scan above.
            parser = ET.XMLParser(encoding="utf-8")
            parser.feed(body)
            root = parser.close()
        except (ET.ParseError, ValueError, UnicodeError):
            raise BadPush("malformed XML") from None
        return _children(root, 1)
    if fmt == "json":
        try:
            data = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeError, RecursionError):  # JSONDecodeError is a ValueError
            raise BadPush("malformed JSON") from None
        if not isinstance(data, dict):
            raise BadPush("JSON body is not an object")
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
    * Unknown ``MsgType``/``Event`` values are returned as they are.
    """
    event = _ids_to_str(dict(fields))
    for name in ("FromUserName", "MsgType"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise BadPush(f"push has no {name}")
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
