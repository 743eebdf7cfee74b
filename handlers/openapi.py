"""The seed's ``openapi`` cloud function, on csbot: the mini program asks its server to send the
*caller* a subscribe (or legacy template) message, and reports which subscribe templates the user
just accepted.

    // after wx.requestSubscribeMessage({tmplIds, success: res => …})
    cloud.callFunction({ name: 'openapi', data: { action: 'subscribe', result: res } })
    cloud.callFunction({ name: 'openapi', data: { action: 'sendSubscribeMessage',
        templateId, page: 'pages/index/index', data: { thing1: { value: '订单已发货' } } } })
    cloud.callFunction({ name: 'openapi', data: { action: 'sendTemplateMessage', formId } })  // legacy

Messages go to ``context.OPENID`` (never to an openid from ``data``), through the outbox, so they
are on the user's thread with their delivery state; the answer waits a few seconds for WeChat's.
``[handlers.openapi] templates = ["…"]`` limits which subscribe templates a user may ask for.
"""

from __future__ import annotations

from typing import Any

from csbot import function
from csbot.messages import SubscribeMessage, TemplateMessage
from csbot.statuses import OUTBOUND_UNSETTLED, OutboundStatus
from csbot.subscriptions import record_consents

#: seconds the answer waits for WeChat's verdict on the send (it is sent anyway if longer)
WAIT_SECONDS = 5.0
#: wx.requestSubscribeMessage answers per template: accept, or reject / ban / filter
REFUSALS = ("reject", "ban", "filter")
MAX_TEMPLATES = 20


def _fail(api: str, reason: str, code: int = 40097) -> dict[str, Any]:
    return {"errCode": code, "errMsg": f"openapi.{api}:fail {reason}"}


def _template_ids(value: Any) -> list[str] | None:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TEMPLATES:
        return None
    if not all(isinstance(t, str) and 0 < len(t) <= 128 for t in value):
        return None
    return value


async def _delivered(context: Any, api: str, reply: Any) -> dict[str, Any]:
    """Queue ``reply`` to the caller through the outbox and report WeChat's answer to it."""
    outbox = context.services.outbox
    message_id = await outbox.enqueue(context.app, context.OPENID, reply, author="function:openapi")
    state = await outbox.outcome(message_id, wait=WAIT_SECONDS)
    if state["status"] == OutboundStatus.SENT:
        return {"errCode": 0, "errMsg": f"openapi.{api}:ok", "messageId": message_id}
    if state["status"] in OUTBOUND_UNSETTLED:
        return {"errCode": 0, "errMsg": f"openapi.{api}:queued", "messageId": message_id}
    return {**_fail(api, state["errmsg"] or state["status"], state["errcode"] or -1), "messageId": message_id}


async def send_subscribe_message(event: dict[str, Any], context: Any) -> dict[str, Any]:
    api = "subscribeMessage.send"
    template_id, data, page = event.get("templateId"), event.get("data"), event.get("page")
    if not isinstance(template_id, str) or not template_id:
        return _fail(api, "templateId is required")
    allowed = context.options.get("templates")
    if allowed is not None and template_id not in allowed:
        return _fail(api, "this template may not be sent from the mini program", 40037)
    if not isinstance(data, dict) or not data:
        return _fail(api, "data must be an object of {keyword: {value}}", 47003)
    if page is not None and not isinstance(page, str):
        return _fail(api, "page must be a string")
    state = event.get("miniprogramState", context.options.get("miniprogram_state"))
    return await _delivered(context, api, SubscribeMessage(
        template_id=template_id, data=data, page=page, miniprogram_state=state,
        lang=event.get("lang") if isinstance(event.get("lang"), str) else None))


async def send_template_message(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The seed's legacy flow: add a template, send it with the page's formId, delete the template.

    WeChat retired Mini Program template messages on 2020-01-10; expect an error from it today.
    """
    api = "templateMessage.send"
    form_id = event.get("formId")
    if not isinstance(form_id, str) or not form_id:
        return _fail(api, "formId is required (from <form report-submit>)")
    from csbot.openapi import WeChatAPIError

    templates = context.openapi.template_message
    try:
        added = await templates.add_template(id="AT0002", keyword_id_list=[3, 4, 5])
    except WeChatAPIError as exc:
        return _fail("templateMessage.addTemplate", exc.errmsg, exc.errcode)
    template_id = added["template_id"]
    answer = await _delivered(context, api, TemplateMessage(
        template_id=template_id, form_id=form_id, page=event.get("page") or "pages/openapi/openapi",
        data={"keyword1": {"value": "未名咖啡屋"}, "keyword2": {"value": "2019 年 1 月 1 日"},
              "keyword3": {"value": "拿铁"}}))
    if not answer["errMsg"].endswith(":queued"):  # the template is still needed while a send is pending
        try:
            await templates.delete_template(template_id=template_id)
        except WeChatAPIError as exc:
            context.logger.warning("could not delete template %s: %s", template_id, exc)
    return answer


async def subscribe(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Record the user's answer to ``wx.requestSubscribeMessage``: the outbox's subscribe
    fallback then knows their consents without waiting for a push.

    ``result`` is the ``success`` object of ``wx.requestSubscribeMessage`` (template id →
    ``accept`` | ``reject`` | ``ban`` | ``filter``); ``accepted``/``rejected`` lists work too.
    """
    api = "subscribe"
    accepted, rejected = _template_ids(event.get("accepted")), _template_ids(event.get("rejected"))
    if accepted is None or rejected is None:
        return _fail(api, f"accepted and rejected must be lists of at most {MAX_TEMPLATES} template ids")
    result = event.get("result")
    if result is not None:
        if not isinstance(result, dict) or len(result) > MAX_TEMPLATES + 1:
            return _fail(api, "result must be wx.requestSubscribeMessage's answer")
        for template_id, answer in result.items():
            if template_id == "errMsg" or not (0 < len(template_id) <= 128):
                continue
            if answer == "accept":
                accepted.append(template_id)
            elif answer in REFUSALS:
                rejected.append(template_id)
    await record_consents(context.services.sessionmaker, context.app, context.OPENID, accepted, rejected)
    return {"errCode": 0, "errMsg": f"openapi.{api}:ok", "accepted": accepted, "rejected": rejected}


ACTIONS = {
    "sendSubscribeMessage": send_subscribe_message,
    "sendTemplateMessage": send_template_message,
    "subscribe": subscribe,
}


@function("openapi")
async def main(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = ACTIONS.get(event.get("action"))  # type: ignore[arg-type]
    if action is None:
        return _fail("call", f"unknown action {event.get('action')!r}; one of {', '.join(ACTIONS)}")
    return await action(event, context)
