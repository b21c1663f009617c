"""The inbox pages: server-rendered with htmx partials, tenant from the URL (/t/<slug>/...).

Every page view resolves the tenant to the user's active membership (a foreign or unknown slug is a 404, like a
missing one) and runs inside that tenant's scope. htmx requests get a partial ("inbox/inbox.html#thread" ...), plain
requests the full page, so the inbox works without JavaScript and without the WebSocket.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from accounts.models import User
from inbox import selectors
from inbox.models import MEDIA_TYPES, Conversation, ConversationStatus, Message, MessageTemplate
from inbox.serializers import media_url, message_preview
from inbox.services import UNSET, conversation_update, read_marker_set
from inbox.services.media import media_retry
from inbox.services.outbound import message_retry as outbound_retry
from inbox.services.outbound import message_send as outbound_send
from inbox.services.outbound import reaction_send
from tenants.models import Membership, Tenant
from tenants.scoping import tenant_scope
from tenants.selectors import membership_get, membership_list_for_user_unsafe

LIST_LIMIT = 100
THREAD_PAGE = 40
REACTION_CHOICES = ("👍", "❤️", "😂", "😮", "🙏", "✅")
STATUS_TABS = [(value, label) for value, label in ConversationStatus.choices]
ASSIGNED_FILTERS = [("", "All"), ("me", "Mine"), ("unassigned", "Unassigned")]


class TenantRequest(HttpRequest):
    tenant: Tenant
    membership: Membership
    user: User  # type: ignore[assignment]


TenantView = Callable[..., HttpResponse]


def tenant_view(view: TenantView) -> Callable[..., HttpResponse]:
    """Resolve /t/<slug>/ to the user's active membership, enter the tenant scope, then run the view.

    An anonymous user is sent to the login page (htmx: a client-side redirect); a non-member gets 404, the same
    answer as an unknown tenant, so tenant slugs cannot be probed.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            login_url = reverse("accounts:login")
            if getattr(request, "htmx", False):
                return HttpResponseClientRedirect(f"{login_url}?{urlencode({'next': request.get_full_path()})}")
            return redirect_to_login(request.get_full_path(), login_url)
        membership = membership_get(user=request.user, tenant_slug=slug)  # type: ignore[arg-type]
        if membership is None:
            raise Http404("No such inbox")
        tenant_request: TenantRequest = request  # type: ignore[assignment]
        tenant_request.tenant = membership.tenant
        tenant_request.membership = membership
        # Render inside the scope: templates read related rows lazily.
        with tenant_scope(membership.tenant.pk):
            return view(tenant_request, *args, **kwargs)

    return wrapper


# --- Filters and decoration ---------------------------------------------------------------------------------------


def _filters(params: QueryDict) -> dict[str, str]:
    status = params.get("status", ConversationStatus.OPEN)
    if status not in ConversationStatus.values and status != "all":
        status = ConversationStatus.OPEN
    assigned = params.get("assigned", "")
    if assigned not in ("", "me", "unassigned"):
        assigned = ""
    return {"status": status, "assigned": assigned, "q": params.get("q", "")[:100]}


def _filter_query(filters: dict[str, str]) -> str:
    return urlencode({k: v for k, v in filters.items() if v})


def _conversation_queryset(request: TenantRequest, filters: dict[str, str]) -> QuerySet[Conversation]:
    return selectors.conversation_list(
        tenant=request.tenant,
        user=request.user,
        status=None if filters["status"] == "all" else filters["status"],
        assigned=filters["assigned"] or None,
        q=filters["q"],
    )


def _with_preview(conversations: Iterable[Conversation]) -> list[Conversation]:
    rows = list(conversations)
    for c in rows:
        c.preview = message_preview(c.last_message)  # type: ignore[attr-defined]
    return rows


def _conversations(request: TenantRequest, filters: dict[str, str], after: str = "") -> tuple[list[Conversation], str]:
    """A page of list rows, and the cursor of the next page ("" when this is the last).

    Keyset pagination on the list's order (last activity, then id), so rows do not repeat or go missing while new
    messages reorder the list.
    """
    conversations = _conversation_queryset(request, filters)
    cursor = _parse_cursor(after)
    if cursor is not None:
        activity_at, pk = cursor
        conversations = conversations.filter(Q(activity_at__lt=activity_at) | Q(activity_at=activity_at, pk__lt=pk))
    rows = list(conversations[: LIST_LIMIT + 1])
    next_cursor = ""
    if len(rows) > LIST_LIMIT:
        rows = rows[:LIST_LIMIT]
        last = rows[-1]
        next_cursor = f"{last.activity_at.isoformat()}_{last.pk}"  # type: ignore[attr-defined]
    return _with_preview(rows), next_cursor


def _parse_cursor(raw: str) -> tuple[datetime, int] | None:
    when, _, pk = raw.rpartition("_")
    try:
        return datetime.fromisoformat(when), int(pk)
    except ValueError:
        return None


def _payload_part(message: Message) -> Any:
    """The type-specific part of a message's stored payload (stored either bare or under its type's key)."""
    payload = message.payload or {}
    if isinstance(payload, dict) and isinstance(payload.get(message.type), dict | list):
        return payload[message.type]
    return payload


def _contacts_cards(part: Any) -> list[dict[str, Any]]:
    cards = part if isinstance(part, list) else (part.get("contacts") if isinstance(part, dict) else None)
    result = []
    for card in cards or []:
        if not isinstance(card, dict):
            continue
        name = card.get("name") or {}
        formatted = name.get("formatted_name") if isinstance(name, dict) else str(name)
        phones = [p.get("phone") or p.get("wa_id") for p in card.get("phones") or [] if isinstance(p, dict)]
        emails = [e.get("email") for e in card.get("emails") or [] if isinstance(e, dict)]
        result.append({"name": formatted or "Contact", "phones": [p for p in phones if p], "emails": emails})
    return result


def _interactive_reply(part: Any) -> dict[str, str]:
    if not isinstance(part, dict):
        return {}
    for key in ("button_reply", "list_reply"):
        reply = part.get(key)
        if isinstance(reply, dict):
            return {
                "kind": "List choice" if key == "list_reply" else "Button",
                "title": str(reply.get("title", "")),
                "description": str(reply.get("description", "")),
            }
    if isinstance(part.get("nfm_reply"), dict):
        return {"kind": "Form reply", "title": str(part["nfm_reply"].get("body", "") or "Form submitted")}
    return {}


def _unsupported_reason(message: Message) -> str:
    payload = message.payload if isinstance(message.payload, dict) else {}
    detail = payload.get("unsupported")
    if isinstance(detail, dict) and detail.get("type"):
        return f"a {str(detail['type']).replace('_', ' ')} message"
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("title") or errors[0].get("message") or "")
    return ""


def decorate_messages(messages: Iterable[Message], *, tenant: Tenant) -> list[Message]:
    """Attach what the bubble template needs: the type-specific payload part, quoted message, reaction names."""
    messages = list(messages)
    reply_ids = {m.reply_to_id for m in messages if m.reply_to_id}
    quoted = {m.pk: m for m in Message.objects.filter(tenant=tenant, pk__in=reply_ids).select_related("sender")}
    member_names = {m.user_id: m.user.name for m in selectors.member_list(tenant=tenant, include_inactive=True)}
    for m in messages:
        part = _payload_part(m)
        ui: dict[str, Any] = {"part": part if isinstance(part, dict) else {}}
        if m.type == "location" and isinstance(part, dict):
            lat, lon = part.get("latitude"), part.get("longitude")
            if lat is not None and lon is not None:
                ui["map_url"] = f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=16/{lat}/{lon}"
        elif m.type == "contacts":
            ui["cards"] = _contacts_cards(part)
        elif m.type == "interactive":
            ui["reply"] = _interactive_reply(part)
        elif m.type == "button" and isinstance(part, dict):
            ui["button_text"] = str(part.get("text") or m.text)
        elif m.type == "unsupported":
            ui["reason"] = _unsupported_reason(m)
        elif m.type == "template" and isinstance(part, dict):
            ui["template_name"] = str(part.get("name", ""))
        ui["media_url"] = media_url(m) if m.type in MEDIA_TYPES else None
        ui["quoted"] = quoted.get(m.reply_to_id) if m.reply_to_id else None
        ui["reactions"] = [
            {
                "emoji": r.emoji,
                "user_id": r.user_id,
                "who": member_names.get(r.user_id, "Agent") if r.user_id else "Contact",
            }
            for r in m.reactions.all()
            if r.emoji  # an empty emoji is a removed reaction kept as a tombstone
        ]
        m.ui = ui  # type: ignore[attr-defined]
    return messages


def _members(request: TenantRequest) -> list[Membership]:
    return list(selectors.member_list(tenant=request.tenant))


def _templates(request: TenantRequest, conversation: Conversation) -> list[MessageTemplate]:
    templates = [
        t
        for t in selectors.template_list(tenant=request.tenant, number_id=conversation.number_id)
        if t.status.upper() == "APPROVED"
    ]
    for t in templates:
        t.param_count = len(set(re.findall(r"\{\{(\d+)\}\}", t.body_text)))  # type: ignore[attr-defined]
    return templates


def _base_context(request: TenantRequest, **extra: Any) -> dict[str, Any]:
    """What every partial may need, so that each renders the same alone as inside the page."""
    context: dict[str, Any] = {
        "tenant": request.tenant,
        "reaction_choices": REACTION_CHOICES,
        "status_tabs": STATUS_TABS,
        "filter_query": "",
    }
    context.update(extra)
    return context


def _thread_context(request: TenantRequest, conversation: Conversation) -> dict[str, Any]:
    messages = selectors.message_list(tenant=request.tenant, conversation=conversation, limit=THREAD_PAGE)
    has_older = bool(messages) and selectors.message_has_before(
        tenant=request.tenant, conversation=conversation, message=messages[0]
    )
    now = timezone.now()
    return {
        "conversation": conversation,
        "thread_messages": decorate_messages(messages, tenant=request.tenant),
        "has_older": has_older,
        "oldest_id": messages[0].pk if messages else None,
        "last_id": messages[-1].pk if messages else None,
        "window_open": conversation.window_open(now),
        "templates": _templates(request, conversation),
        "members": _members(request),
    }


def _page_context(request: TenantRequest, filters: dict[str, str], *, seq: int | None = None) -> dict[str, Any]:
    # The seq head is read before anything else the page shows: the page's state is at least this new, and the
    # socket's `sync` replays everything after it (a change made while rendering arrives twice and is
    # deduplicated, never lost).
    if seq is None:
        seq = selectors.event_head(tenant=request.tenant)
    conversations, next_cursor = _conversations(request, filters)
    return _base_context(
        request,
        conversations=conversations,
        next_cursor=next_cursor,
        membership=request.membership,
        memberships=membership_list_for_user_unsafe(user=request.user),
        seq=seq,
        filters=filters,
        filter_query=_filter_query(filters),
        assigned_filters=ASSIGNED_FILTERS,
        members=_members(request),
        is_site_admin=request.user.is_staff,
        ws_path=f"/ws/tenants/{request.tenant.slug}/",
    )


# --- Pages ----------------------------------------------------------------------------------------------------------


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Send the user to their first tenant's inbox (or tell them they have none)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("accounts:login"))
    memberships = membership_list_for_user_unsafe(user=request.user)  # type: ignore[arg-type]
    if not memberships:
        return render(request, "inbox/no_tenant.html", status=403)
    return HttpResponseRedirect(reverse("inbox:inbox", args=[memberships[0].tenant.slug]))


@require_GET
@tenant_view
def inbox(request: TenantRequest) -> HttpResponse:
    filters = _filters(request.GET)
    context = _page_context(request, filters)
    return render(request, "inbox/inbox.html", context)


@require_GET
@tenant_view
def conversation_list(request: TenantRequest) -> HttpResponse:
    """The list rows for the current filters (htmx: tabs, filters, search as you type)."""
    filters = _filters(request.GET)
    conversations, next_cursor = _conversations(request, filters, request.GET.get("after", ""))
    context = _base_context(
        request,
        filters=filters,
        filter_query=_filter_query(filters),
        conversations=conversations,
        next_cursor=next_cursor,
    )
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "inbox/inbox.html#conversation-rows", context)
    return HttpResponseRedirect(reverse("inbox:inbox", args=[request.tenant.slug]) + "?" + _filter_query(filters))


@require_GET
@tenant_view
def conversation_row(request: TenantRequest, pk: int) -> HttpResponse:
    """One list row, for live updates; 204 when the conversation does not match the list's filters (any more)."""
    filters = _filters(request.GET)
    conversation = selectors.conversation_get(tenant=request.tenant, pk=pk)  # 404 for another tenant's id
    row = _conversation_queryset(request, filters).filter(pk=conversation.pk).first()
    if row is None:
        return HttpResponse(status=204)
    context = _base_context(request, c=_with_preview([row])[0], filter_query=_filter_query(filters))
    return render(request, "inbox/inbox.html#conversation-row", context)


@require_GET
@tenant_view
def conversation_detail(request: TenantRequest, pk: int) -> HttpResponse:
    """The thread of one conversation: the whole page, or (htmx) the thread and contact panel."""
    seq = selectors.event_head(tenant=request.tenant)  # first: see _page_context
    conversation = selectors.conversation_get(tenant=request.tenant, pk=pk, user=request.user)
    filters = _filters(request.GET)
    context = _base_context(request, filters=filters, filter_query=_filter_query(filters))
    if request.htmx and request.GET.get("part") == "header":  # type: ignore[attr-defined]
        context.update(conversation=conversation, members=_members(request), window_open=conversation.window_open())
        return render(request, "inbox/inbox.html#thread-header", context)
    context.update(_thread_context(request, conversation))
    if request.htmx and request.htmx.target in ("thread-pane", "main"):  # type: ignore[attr-defined]
        return render(request, "inbox/thread.html", context)
    context.update(_page_context(request, filters, seq=seq))
    return render(request, "inbox/inbox.html", context)


@require_GET
@tenant_view
def message_page(request: TenantRequest, pk: int) -> HttpResponse:
    """Older messages (?before=<id>), for scrolling back: the bubbles plus a new sentinel if there are more."""
    conversation = selectors.conversation_get(tenant=request.tenant, pk=pk)
    try:
        before_id = int(request.GET.get("before", ""))
    except ValueError:
        return HttpResponse("before must be a message id", status=400)
    try:
        messages = selectors.message_list(
            tenant=request.tenant, conversation=conversation, before_id=before_id, limit=THREAD_PAGE
        )
    except ValidationError:
        raise Http404("No such message")
    has_older = bool(messages) and selectors.message_has_before(
        tenant=request.tenant, conversation=conversation, message=messages[0]
    )
    context = _base_context(
        request,
        conversation=conversation,
        thread_messages=decorate_messages(messages, tenant=request.tenant),
        has_older=has_older,
        oldest_id=messages[0].pk if messages else None,
    )
    return render(request, "inbox/inbox.html#message-page", context)


@require_GET
@tenant_view
def message_detail(request: TenantRequest, pk: int) -> HttpResponse:
    """One bubble, as it is now (the live module fetches it for message:new and message:status)."""
    message = selectors.message_get(tenant=request.tenant, pk=pk)
    return _bubble(request, message)


def _bubble(request: TenantRequest, message: Message, status: int = 200) -> HttpResponse:
    context = _base_context(request, m=decorate_messages([message], tenant=request.tenant)[0])
    return render(request, "inbox/inbox.html#message", context, status=status)


def _conversation_url(request: TenantRequest, conversation: Conversation) -> str:
    url = reverse("inbox:conversation", args=[request.tenant.slug, conversation.pk])
    query = request.POST.get("filters", "")
    return f"{url}?{query}" if query else url


def _error_response(request: TenantRequest, errors: dict[str, list[str]], conversation: Conversation) -> HttpResponse:
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "inbox/inbox.html#form-errors", {"errors": errors}, status=400)
    # Without JavaScript: back to the thread with the errors shown once.
    from django.contrib import messages as flash

    for field, texts in errors.items():
        for text in texts:
            flash.error(request, text if field in ("__all__", "window") else f"{field}: {text}")
    return HttpResponseRedirect(_conversation_url(request, conversation))


def _validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {field: [str(m) for e in errors for m in e.messages] for field, errors in exc.error_dict.items()}
    return {"__all__": [str(m) for m in exc.messages]}


# --- Writes ---------------------------------------------------------------------------------------------------------


@require_POST
@tenant_view
def message_send(request: TenantRequest, pk: int) -> HttpResponse:
    """Send from the composer. Idempotent by the page's client_id: a repeated post returns the same bubble."""
    conversation = selectors.conversation_get(tenant=request.tenant, pk=pk)
    client_id = (request.POST.get("client_id") or "").strip()[:64] or None
    reply_to = None
    if request.POST.get("reply_to"):
        try:
            reply_to = selectors.message_get(tenant=request.tenant, pk=request.POST["reply_to"])
        except Http404:
            return _error_response(request, {"reply_to": ["is not a message here"]}, conversation)
        if reply_to.conversation_id != conversation.pk:
            return _error_response(request, {"reply_to": ["is not a message of this conversation"]}, conversation)
    media = request.FILES.get("media")
    kwargs: dict[str, Any] = {"text": (request.POST.get("text") or "").strip()}
    if request.POST.get("template"):
        template = _template_payload(request, conversation)
        if template is None:
            return _error_response(request, {"template": ["Choose one of this number's templates."]}, conversation)
        kwargs = {"type": "template", "template": template}
    elif media is not None:
        kwargs.update(type=_media_type(media.content_type or ""), media=media, filename=media.name or "")
    elif not kwargs["text"]:
        return _error_response(request, {"text": ["Type a message first."]}, conversation)
    try:
        message, _created = outbound_send(
            tenant=request.tenant,
            conversation=conversation,
            sender=request.user,
            client_id=client_id,
            reply_to=reply_to,
            **kwargs,
        )
    except ValidationError as exc:
        return _error_response(request, _validation_errors(exc), conversation)
    if request.htmx:  # type: ignore[attr-defined]
        return _bubble(request, selectors.message_get(tenant=request.tenant, pk=message.pk))
    return HttpResponseRedirect(_conversation_url(request, conversation))


def _media_type(content_type: str) -> str:
    if content_type == "image/webp":
        return "sticker"
    for prefix in ("image", "video", "audio"):
        if content_type.startswith(prefix + "/"):
            return prefix
    return "document"


def _template_payload(request: TenantRequest, conversation: Conversation) -> dict[str, Any] | None:
    """The chosen template with its body parameters, as outbound.message_send takes it."""
    try:
        template_id = int(request.POST.get("template", ""))
    except ValueError:
        return None
    template = next((t for t in _templates(request, conversation) if t.pk == template_id), None)
    if template is None:
        return None
    params = [p.strip() for p in request.POST.getlist("param") if p.strip()]
    return {"name": template.name, "language": template.language, "parameters": params}


def _message_action(request: TenantRequest, pk: int, action: Callable[[Message], object]) -> HttpResponse:
    """Run an action on one of the tenant's messages; answer with its re-rendered bubble (htmx) or a redirect."""
    message = selectors.message_get(tenant=request.tenant, pk=pk)  # 404 for another tenant's id
    try:
        action(message)
    except ValidationError as exc:
        return _error_response(request, _validation_errors(exc), message.conversation)
    if request.htmx:  # type: ignore[attr-defined]
        return _bubble(request, selectors.message_get(tenant=request.tenant, pk=message.pk))
    return HttpResponseRedirect(_conversation_url(request, message.conversation))


@require_POST
@tenant_view
def message_retry(request: TenantRequest, pk: int) -> HttpResponse:
    """Send a failed outbound message again."""
    return _message_action(
        request, pk, lambda message: outbound_retry(tenant=request.tenant, message=message, user=request.user)
    )


@require_POST
@tenant_view
def message_media_retry(request: TenantRequest, pk: int) -> HttpResponse:
    """Download a received file again after its download failed ("Retry download" on the bubble)."""
    return _message_action(request, pk, lambda message: media_retry(tenant=request.tenant, message=message))


@require_POST
@tenant_view
def message_react(request: TenantRequest, pk: int) -> HttpResponse:
    """Put (or, with an empty emoji, take back) the agent's reaction on a message."""
    emoji = (request.POST.get("emoji") or "").strip()[:32]
    return _message_action(
        request,
        pk,
        lambda message: reaction_send(tenant=request.tenant, message=message, user=request.user, emoji=emoji),
    )


@require_POST
@tenant_view
def conversation_change(request: TenantRequest, pk: int) -> HttpResponse:
    """Assign (me / a member / nobody) and/or change the status."""
    conversation = selectors.conversation_get(tenant=request.tenant, pk=pk)
    status: str | Any = UNSET
    assignee: User | None | Any = UNSET
    if "status" in request.POST:
        status = request.POST["status"]
    if "assignee" in request.POST:
        raw = request.POST["assignee"]
        if raw == "":
            assignee = None
        elif raw == "me":
            assignee = request.user
        else:
            try:
                membership = selectors.member_get(tenant=request.tenant, pk=int(raw))
            except (ValueError, Http404):
                return _error_response(request, {"assignee": ["is not a member of this inbox"]}, conversation)
            assignee = membership.user
    try:
        conversation = conversation_update(
            tenant=request.tenant, conversation=conversation, status=status, assignee=assignee
        )
    except ValidationError as exc:
        return _error_response(request, _validation_errors(exc), conversation)
    if request.htmx:  # type: ignore[attr-defined]
        conversation = selectors.conversation_get(tenant=request.tenant, pk=conversation.pk, user=request.user)
        context = _base_context(
            request,
            conversation=conversation,
            members=_members(request),
            filter_query=request.POST.get("filters", ""),
            window_open=conversation.window_open(),
        )
        return render(request, "inbox/inbox.html#thread-header", context)
    return HttpResponseRedirect(_conversation_url(request, conversation))


@require_POST
@tenant_view
def conversation_read(request: TenantRequest, pk: int) -> HttpResponse:
    """Move my read marker to a message (the page calls this when it shows the newest messages)."""
    conversation = selectors.conversation_get(tenant=request.tenant, pk=pk)
    try:
        message = selectors.message_get(tenant=request.tenant, pk=request.POST.get("message_id"))
        read_marker_set(tenant=request.tenant, user=request.user, conversation=conversation, message=message)
    except ValidationError as exc:
        return HttpResponse(str(_validation_errors(exc)), status=400)
    return HttpResponse(status=204)
