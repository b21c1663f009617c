"""The tenant-scoped REST API: /api/tenants/<slug>/...

One APIView per resource and method group, with nested Input/Output serializers. Views parse input, call a selector
or a service inside the tenant's scope (inbox/permissions.py: membership checked per request) and serialize the
result. Every write goes through the same services as the webhooks and the inbox page, so it is persisted, logged
as a durable event in the same transaction and broadcast after commit.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Max, Q
from django.http import FileResponse, Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from inbox import selectors
from inbox.api_errors import PayloadTooLarge, error_body, error_responses
from inbox.models import MEDIA_TYPES, Contact, ConversationStatus, MediaState, Message, MessageType
from inbox.permissions import MethodScopedRateThrottle, TenantApiView
from inbox.serializers import (
    ContactOutputSerializer,
    ConversationOutputSerializer,
    MessageOutputSerializer,
    message_data,
    messages_data,
)
from inbox.services.contacts import contact_update
from inbox.services.core import UNSET, conversation_update, read_marker_set
from tenants.models import Membership, Role, WhatsAppNumber
from tenants.services import member_add, member_remove, member_role_set, number_create, number_delete, number_update

# Meta's limits for media sent by a business (shared/reference/whatsapp-cloud-api.md, "Size and type limits").
MEDIA_MAX_BYTES: dict[str, int] = {
    MessageType.IMAGE: 5 * 1024 * 1024,
    MessageType.VIDEO: 16 * 1024 * 1024,
    MessageType.AUDIO: 16 * 1024 * 1024,
    MessageType.DOCUMENT: 100 * 1024 * 1024,
    MessageType.STICKER: 500 * 1024,
}


def upload_max_bytes() -> int:
    """The largest request body a send accepts (Meta's largest media plus room for the form fields)."""
    return int(getattr(settings, "API_UPLOAD_MAX_BYTES", 100 * 1024 * 1024)) + 64 * 1024


# --- cursors ---------------------------------------------------------------------------------------------------------


def _cursor_encode(at: datetime, pk: int) -> str:
    raw = json.dumps([at.isoformat(), pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_iso, pk = json.loads(raw)
        at = datetime.fromisoformat(at_iso)
        if at.tzinfo is None or not isinstance(pk, int):
            raise ValueError
        return at, pk
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise DjangoValidationError({"cursor": "is not a cursor this API issued"})


# --- conversations ---------------------------------------------------------------------------------------------------


class ConversationItemSerializer(ConversationOutputSerializer):
    unread_count = serializers.IntegerField(read_only=True, help_text="inbound messages after your read marker")

    class Meta(ConversationOutputSerializer.Meta):
        fields = [*ConversationOutputSerializer.Meta.fields, "unread_count"]
        read_only_fields = fields


class ConversationPageSerializer(serializers.Serializer[Any]):
    results = ConversationItemSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True, help_text="pass as ?cursor= for the next page; null: no more")


class ConversationListApi(TenantApiView):
    class FilterSerializer(serializers.Serializer[Any]):
        status = serializers.ChoiceField(choices=ConversationStatus.choices, required=False)
        assigned = serializers.RegexField(
            r"^(me|unassigned|[0-9]{1,18})$", required=False, help_text='"me", "unassigned" or a user id'
        )
        unread = serializers.BooleanField(required=False, default=False, help_text="only unread for you")
        q = serializers.CharField(
            required=False, allow_blank=True, max_length=200, help_text="contact name or number, or message text"
        )
        cursor = serializers.CharField(required=False, max_length=200)
        limit = serializers.IntegerField(required=False, default=25, min_value=1, max_value=100)

    @extend_schema(
        operation_id="conversations_list",
        summary="List conversations, most recent activity first",
        parameters=[FilterSerializer],
        responses={200: ConversationPageSerializer, **error_responses(400, 404)},
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        f = params.validated_data
        conversations = selectors.conversation_list(
            tenant=self.tenant,
            user=request.user,  # type: ignore[arg-type]
            status=f.get("status"),
            assigned=f.get("assigned"),
            unread=f["unread"],
            q=f.get("q", ""),
        )
        if f.get("cursor"):
            at, pk = _cursor_decode(f["cursor"])
            # Keyset pagination on (activity, id): stable while new messages arrive (they go to the top).
            conversations = conversations.filter(Q(activity_at__lt=at) | Q(activity_at=at, id__lt=pk))
        page = list(conversations[: f["limit"] + 1])
        more = len(page) > f["limit"]
        page = page[: f["limit"]]
        next_cursor = _cursor_encode(page[-1].activity_at, page[-1].pk) if more else None
        return Response({"results": ConversationItemSerializer(page, many=True).data, "next_cursor": next_cursor})


class ConversationDetailApi(TenantApiView):
    class ConversationUpdateInputSerializer(serializers.Serializer[Any]):
        status = serializers.ChoiceField(choices=ConversationStatus.choices, required=False)
        assignee = serializers.IntegerField(
            required=False, allow_null=True, min_value=1, help_text="user id of an active member; null unassigns"
        )

    @extend_schema(
        operation_id="conversations_retrieve",
        summary="A conversation",
        responses={200: ConversationItemSerializer, **error_responses(404)},
    )
    def get(self, request: Request, tenant_slug: str, pk: int) -> Response:
        conversation = selectors.conversation_get(tenant=self.tenant, pk=pk, user=request.user)  # type: ignore[arg-type]
        return Response(ConversationItemSerializer(conversation).data)

    @extend_schema(
        operation_id="conversations_update",
        summary="Change a conversation's status and/or assignee",
        request=ConversationUpdateInputSerializer,
        responses={200: ConversationItemSerializer, **error_responses(400, 404, 413)},
    )
    def patch(self, request: Request, tenant_slug: str, pk: int) -> Response:
        conversation = selectors.conversation_get(tenant=self.tenant, pk=pk)
        data = self.ConversationUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes: dict[str, Any] = {}
        if "status" in data.validated_data:
            changes["status"] = data.validated_data["status"]
        if "assignee" in data.validated_data:
            assignee_id = data.validated_data["assignee"]
            assignee = None
            if assignee_id is not None:
                assignee = User.objects.filter(pk=assignee_id, is_active=True).first()
                if assignee is None:
                    raise DjangoValidationError({"assignee": "is not an active member of this tenant"})
            changes["assignee"] = assignee
        conversation_update(
            tenant=self.tenant,
            conversation=conversation,
            status=changes.get("status", UNSET),
            assignee=changes.get("assignee", UNSET),
        )
        conversation = selectors.conversation_get(tenant=self.tenant, pk=pk, user=request.user)  # type: ignore[arg-type]
        return Response(ConversationItemSerializer(conversation).data)


# --- messages --------------------------------------------------------------------------------------------------------


class MessagePageSerializer(serializers.Serializer[Any]):
    results = MessageOutputSerializer(many=True, help_text="in display order: Meta's timestamp, oldest first")
    before = serializers.IntegerField(allow_null=True, help_text="pass as ?before= for older messages; null: none")
    after = serializers.IntegerField(allow_null=True, help_text="pass as ?after= later to catch up on new messages")
    has_more = serializers.BooleanField(help_text="with ?after=: more new messages wait; otherwise: older ones exist")


class TemplateInputSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=512)
    language = serializers.CharField(
        max_length=16, required=False, help_text="e.g. en_US; omitted: the template of that name"
    )
    parameters = serializers.ListField(
        child=serializers.CharField(max_length=1024, allow_blank=False),
        required=False,
        max_length=20,
        help_text="body parameters {{1}}, {{2}}, ... as text",
    )
    components = serializers.ListField(
        child=serializers.DictField(child=serializers.JSONField()),
        required=False,
        max_length=20,
        help_text="Meta's template components as they are (header, body, button parameters); instead of parameters",
    )


SEND_TYPES = [
    MessageType.TEXT,
    MessageType.IMAGE,
    MessageType.VIDEO,
    MessageType.AUDIO,
    MessageType.DOCUMENT,
    MessageType.STICKER,
    MessageType.TEMPLATE,
]
SEND_TYPE_CHOICES = [(t.value, t.label) for t in SEND_TYPES]  # named SendTypeEnum in the schema (settings)


# An input serializer whose fields are built once per class and process instead of once per instance. DRF
# deep-copies a serializer's declared fields for every instance (each field rebuilt from its arguments, a nested
# serializer with all of its own): 0.11 of the 0.16 ms that validating an agent send's body took, the template's
# nested fields included when no template is sent. Validating keeps its state on the serializer instance
# (initial_data, errors, validated data), not on the fields, so instances can share them. The shared fields stay
# bound to the instance that built them, which only matters to a field that reads its root's context or `partial`:
# subclasses are validated with neither (plain `Serializer(data=...)`). (A comment, not a docstring: the schema
# would show a docstring as the description of every subclass.)
class FieldsBuiltOnce(serializers.Serializer[Any]):
    @property
    def fields(self) -> Any:  # type: ignore[override]
        cls = type(self)
        built = cls.__dict__.get("_fields_built_once")
        if built is None:
            built = super().fields
            cls._fields_built_once = built  # type: ignore[attr-defined]
        return built


class SendInputSerializer(FieldsBuiltOnce):
    client_id = serializers.RegexField(
        r"^[A-Za-z0-9._:-]{1,64}$",
        required=False,
        allow_null=True,
        help_text="your idempotency key: a retried send with the same id returns the same message, never a second send",
    )
    type = serializers.ChoiceField(choices=SEND_TYPE_CHOICES, default=MessageType.TEXT)
    text = serializers.CharField(required=False, allow_blank=True, default="", max_length=4096, help_text="or caption")
    reply_to = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="id of a message of this conversation to quote"
    )
    media_link = serializers.URLField(required=False, allow_blank=True, default="", max_length=2000)
    filename = serializers.CharField(required=False, allow_blank=True, default="", max_length=255)


class SendJsonInputSerializer(SendInputSerializer):
    template = TemplateInputSerializer(required=False, allow_null=True)


class SendMultipartInputSerializer(SendInputSerializer):
    media = serializers.FileField(required=False, help_text="the file to send (image, video, audio, document, sticker)")


def _template_payload(template: dict[str, Any]) -> dict[str, Any]:
    """The template as outbound.message_send takes it: name, and language/parameters/components when given."""
    return {k: template[k] for k in ("name", "language", "parameters", "components") if k in template}


class MessageListApi(TenantApiView):
    parser_classes = [JSONParser, MultiPartParser]
    throttle_classes = [MethodScopedRateThrottle]
    throttle_scope = "send"
    throttle_methods: ClassVar[frozenset[str]] = frozenset({"POST"})

    def max_body_bytes(self) -> int:
        return upload_max_bytes()  # media uploads (multipart); Meta's per-type limits are checked per file

    class FilterSerializer(serializers.Serializer[Any]):
        before = serializers.IntegerField(required=False, min_value=1, help_text="message id: page before it")
        after = serializers.IntegerField(required=False, min_value=0, help_text="message id: messages stored after it")
        limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=selectors.MESSAGE_PAGE_MAX)

    @extend_schema(
        operation_id="messages_list",
        summary="Messages of a conversation: newest page first, ?before= scrolls back, ?after= catches up",
        parameters=[FilterSerializer],
        responses={200: MessagePageSerializer, **error_responses(400, 404)},
    )
    def get(self, request: Request, tenant_slug: str, pk: int) -> Response:
        conversation = selectors.conversation_get(tenant=self.tenant, pk=pk)
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        f = params.validated_data
        if "before" in f and "after" in f:
            raise DjangoValidationError({"before": "give either before or after, not both"})
        after_id = f.get("after")
        page = selectors.message_list(
            tenant=self.tenant,
            conversation=conversation,
            before_id=f.get("before"),
            after_id=after_id,
            limit=f["limit"],
        )
        if after_id is not None:
            newest_id = max([m.pk for m in page], default=after_id)
            has_more = selectors.message_has_after_id(tenant=self.tenant, conversation=conversation, after_id=newest_id)
            before = None
            after = newest_id
        else:
            has_older = bool(page) and selectors.message_has_before(
                tenant=self.tenant, conversation=conversation, message=page[0]
            )
            before = page[0].pk if has_older else None
            has_more = has_older
            after = Message.objects.filter(tenant=self.tenant, conversation=conversation).aggregate(m=Max("pk"))["m"]
        return Response(
            {
                "results": messages_data(page),
                "before": before,
                "after": after,
                "has_more": has_more,
            }
        )

    @extend_schema(
        operation_id="messages_send",
        summary="Send a message (text, media upload or link, template; optionally replying to one)",
        description=(
            "Idempotent with `client_id`: a retry with the same id answers 200 with the message already created "
            "(201 the first time) and nothing is sent twice. Outside the 24-hour customer-service window only "
            "templates can be sent (400 with `fields.window`). Media uploads use multipart/form-data."
        ),
        request={
            "application/json": SendJsonInputSerializer,
            "multipart/form-data": SendMultipartInputSerializer,
        },
        responses={
            201: OpenApiResponse(MessageOutputSerializer, description="created and queued for sending"),
            200: OpenApiResponse(MessageOutputSerializer, description="a retry: the message of this client_id"),
            **error_responses(400, 404, 413, 429),
        },
    )
    def post(self, request: Request, tenant_slug: str, pk: int) -> Response:
        try:
            message, created = self._send(request, pk)
        except (APIException, DjangoValidationError):
            # An unknown conversation answers 404 whatever else is wrong with the request. The send itself reads
            # the conversation only under its lock (404 there), so this query runs on the error paths alone.
            selectors.conversation_ref_get(tenant=self.tenant, pk=pk)
            raise
        if not created:  # a retry with a known client id: answer with the message as it is now
            message = selectors.message_get(tenant=self.tenant, pk=message.pk)
            return Response(message_data(message), status=status.HTTP_200_OK)
        from inbox.services.outbound import message_send_data

        # A new message is answered as written (the same data its message:new frame carries), without reading it back.
        return Response(message_send_data(message), status=status.HTTP_201_CREATED)

    def _send(self, request: Request, pk: int) -> tuple[Message, bool]:
        conversation = selectors.conversation_ref(tenant=self.tenant, pk=pk)
        multipart = (request.content_type or "").startswith("multipart/")
        serializer_class = SendMultipartInputSerializer if multipart else SendJsonInputSerializer
        data = serializer_class(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        media = v.get("media")
        if media is not None:
            if v["type"] not in MEDIA_TYPES:
                raise DjangoValidationError({"media": "a file can only be sent with a media type"})
            limit = min(MEDIA_MAX_BYTES[v["type"]], upload_max_bytes())
            if media.size is not None and media.size > limit:
                raise PayloadTooLarge(f"{v['type']} files can be at most {limit // 1024} KiB.")
        reply_to = None
        if v.get("reply_to") is not None:
            reply_to = Message.objects.filter(tenant=self.tenant, conversation=conversation, pk=v["reply_to"]).first()
            if reply_to is None:
                raise DjangoValidationError({"reply_to": "is not a message of this conversation"})
        template = v.get("template")
        if v["type"] == MessageType.TEMPLATE and not template:
            raise DjangoValidationError({"template": "is required for a template message"})
        from inbox.services.outbound import message_send

        return message_send(
            tenant=self.tenant,
            conversation=conversation,
            sender=request.user,
            client_id=v.get("client_id") or None,
            type=v["type"],
            text=v["text"],
            reply_to=reply_to,
            media=media,
            media_link=v["media_link"],
            filename=v["filename"] or (media.name if media is not None else ""),
            template=_template_payload(template) if template else None,
        )


class MessageReactionApi(TenantApiView):
    throttle_classes = [MethodScopedRateThrottle]
    throttle_scope = "send"

    class ReactionInputSerializer(serializers.Serializer[Any]):
        emoji = serializers.CharField(allow_blank=True, max_length=32, help_text="empty removes your reaction")

    @extend_schema(
        operation_id="messages_react",
        summary="React to a message with an emoji (empty: remove your reaction)",
        request=ReactionInputSerializer,
        responses={200: MessageOutputSerializer, **error_responses(400, 404, 429, 413)},
    )
    def post(self, request: Request, tenant_slug: str, pk: int) -> Response:
        message = selectors.message_get(tenant=self.tenant, pk=pk)
        data = self.ReactionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        from inbox.services.outbound import reaction_send

        reaction_send(tenant=self.tenant, message=message, user=request.user, emoji=data.validated_data["emoji"])
        return Response(message_data(selectors.message_get(tenant=self.tenant, pk=pk)))


class MessageRetryApi(TenantApiView):
    throttle_classes = [MethodScopedRateThrottle]
    throttle_scope = "send"

    @extend_schema(
        operation_id="messages_retry",
        summary="Queue a failed outbound message again",
        request=None,
        responses={200: MessageOutputSerializer, **error_responses(400, 404, 429)},
    )
    def post(self, request: Request, tenant_slug: str, pk: int) -> Response:
        message = selectors.message_get(tenant=self.tenant, pk=pk)
        from inbox.services.outbound import message_retry

        message_retry(tenant=self.tenant, message=message, user=request.user)
        return Response(message_data(selectors.message_get(tenant=self.tenant, pk=pk)))


class MessageMediaRetryApi(TenantApiView):
    throttle_classes = [MethodScopedRateThrottle]
    throttle_scope = "send"

    @extend_schema(
        operation_id="messages_media_retry",
        summary="Download a received message's media again after its download failed",
        description=(
            "Only for an inbound message whose `media.state` is `failed` (else 400 with `fields.media`). The "
            "message goes back to `pending` at once; `message:new` reports it, and again when the download ends "
            "(`ready`, or `failed` with a new `media.error`)."
        ),
        request=None,
        responses={200: MessageOutputSerializer, **error_responses(400, 404, 429)},
    )
    def post(self, request: Request, tenant_slug: str, pk: int) -> Response:
        message = selectors.message_get(tenant=self.tenant, pk=pk)  # 404 alike for missing and foreign ids
        from inbox.services.media import media_retry

        media_retry(tenant=self.tenant, message=message)
        return Response(message_data(selectors.message_get(tenant=self.tenant, pk=pk)))


class MessageMediaApi(TenantApiView):
    @extend_schema(
        operation_id="messages_media",
        summary="Download a message's media file (members of the tenant only)",
        responses={
            (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="the file, with its own content type"),
            **error_responses(404),
        },
    )
    def get(self, request: Request, tenant_slug: str, pk: int) -> FileResponse:
        message = selectors.message_get(tenant=self.tenant, pk=pk)
        if message.media_state != MediaState.READY or not message.media_file:
            raise Http404("No media")
        try:
            handle = message.media_file.open("rb")
        except FileNotFoundError:
            raise Http404("No media")
        response = FileResponse(
            handle,
            as_attachment=message.type == MessageType.DOCUMENT,
            filename=message.media_filename or message.media_file.name.rsplit("/", 1)[-1],
            content_type=message.media_mime_type or "application/octet-stream",
        )
        response["Cache-Control"] = "private, max-age=3600"
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "sandbox"
        return response


# --- read markers ----------------------------------------------------------------------------------------------------


class ReadMarkerOutputSerializer(serializers.Serializer[Any]):
    conversation_id = serializers.IntegerField()
    last_read_message_id = serializers.IntegerField(allow_null=True)
    unread_count = serializers.IntegerField()


class ConversationReadApi(TenantApiView):
    class ReadInputSerializer(serializers.Serializer[Any]):
        message_id = serializers.IntegerField(min_value=1, help_text="the last message you have read")

    @extend_schema(
        operation_id="conversations_read",
        summary="Mark the conversation read up to a message (for you only; inbound messages are marked read at Meta)",
        request=ReadInputSerializer,
        responses={200: ReadMarkerOutputSerializer, **error_responses(400, 404, 413)},
    )
    def post(self, request: Request, tenant_slug: str, pk: int) -> Response:
        conversation = selectors.conversation_get(tenant=self.tenant, pk=pk)
        data = self.ReadInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        message = Message.objects.filter(
            tenant=self.tenant, conversation=conversation, pk=data.validated_data["message_id"]
        ).first()
        if message is None:
            raise DjangoValidationError({"message_id": "is not a message of this conversation"})
        marker = read_marker_set(tenant=self.tenant, user=request.user, conversation=conversation, message=message)  # type: ignore[arg-type]
        conversation = selectors.conversation_get(tenant=self.tenant, pk=pk, user=request.user)  # type: ignore[arg-type]
        return Response(
            {
                "conversation_id": conversation.pk,
                "last_read_message_id": marker.last_read_message_id,
                "unread_count": conversation.unread_count,  # type: ignore[attr-defined]
            }
        )


# --- contacts --------------------------------------------------------------------------------------------------------


class ContactPageSerializer(serializers.Serializer[Any]):
    results = ContactOutputSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class ContactListApi(TenantApiView):
    class FilterSerializer(serializers.Serializer[Any]):
        q = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text="name or number")
        cursor = serializers.RegexField(r"^[0-9]{1,18}$", required=False, help_text="next_cursor of the last page")
        limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=200)

    @extend_schema(
        operation_id="contacts_list",
        summary="List and search contacts",
        parameters=[FilterSerializer],
        responses={200: ContactPageSerializer, **error_responses(400, 404)},
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        f = params.validated_data
        contacts = selectors.contact_list(tenant=self.tenant, q=f.get("q", ""))
        if f.get("cursor"):
            contacts = contacts.filter(pk__gt=int(f["cursor"]))
        page: list[Contact] = list(contacts[: f["limit"] + 1])
        more = len(page) > f["limit"]
        page = page[: f["limit"]]
        return Response(
            {
                "results": ContactOutputSerializer(page, many=True).data,
                "next_cursor": str(page[-1].pk) if more else None,
            }
        )


class ContactDetailApi(TenantApiView):
    class ContactUpdateInputSerializer(serializers.Serializer[Any]):
        name = serializers.CharField(allow_blank=True, max_length=200, help_text="blank: use the WhatsApp profile name")

    @extend_schema(
        operation_id="contacts_retrieve",
        summary="A contact",
        responses={200: ContactOutputSerializer, **error_responses(404)},
    )
    def get(self, request: Request, tenant_slug: str, pk: int) -> Response:
        return Response(ContactOutputSerializer(selectors.contact_get(tenant=self.tenant, pk=pk)).data)

    @extend_schema(
        operation_id="contacts_update",
        summary="Rename a contact",
        request=ContactUpdateInputSerializer,
        responses={200: ContactOutputSerializer, **error_responses(400, 404, 413)},
    )
    def patch(self, request: Request, tenant_slug: str, pk: int) -> Response:
        contact = selectors.contact_get(tenant=self.tenant, pk=pk)
        data = self.ContactUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        contact = contact_update(tenant=self.tenant, contact=contact, name=data.validated_data["name"])
        return Response(ContactOutputSerializer(contact).data)


# --- members ---------------------------------------------------------------------------------------------------------


class MemberUserSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    username = serializers.CharField()
    name = serializers.CharField()
    email = serializers.CharField()


class MemberOutputSerializer(serializers.ModelSerializer[Membership]):
    user = serializers.SerializerMethodField()

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "is_active", "created_at"]
        read_only_fields = fields

    @extend_schema_field(MemberUserSerializer)
    def get_user(self, obj: Membership) -> dict[str, Any]:
        return {"id": obj.user.pk, "username": obj.user.username, "name": obj.user.name, "email": obj.user.email}


class MemberListApi(TenantApiView):
    admin_methods = frozenset({"POST"})

    class MemberAddInputSerializer(serializers.Serializer[Any]):
        user = serializers.CharField(max_length=254, help_text="username or email of an existing user")
        role = serializers.ChoiceField(choices=Role.choices, default=Role.AGENT)

    @extend_schema(
        operation_id="members_list",
        summary="Members of the tenant",
        responses={200: MemberOutputSerializer(many=True), **error_responses(404)},
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return Response(MemberOutputSerializer(selectors.member_list(tenant=self.tenant), many=True).data)

    @extend_schema(
        operation_id="members_add",
        summary="Add a user to the tenant (admins)",
        request=MemberAddInputSerializer,
        responses={201: MemberOutputSerializer, **error_responses(400, 403, 404, 413)},
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        data = self.MemberAddInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = member_add(
            tenant=self.tenant,
            actor=self.membership,
            user_identifier=data.validated_data["user"],
            role=data.validated_data["role"],
        )
        membership = selectors.member_get(tenant=self.tenant, pk=membership.pk)
        return Response(MemberOutputSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailApi(TenantApiView):
    admin_methods = frozenset({"PATCH", "DELETE"})

    class MemberRoleInputSerializer(serializers.Serializer[Any]):
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(
        operation_id="members_retrieve",
        summary="A member",
        responses={200: MemberOutputSerializer, **error_responses(404)},
    )
    def get(self, request: Request, tenant_slug: str, pk: int) -> Response:
        return Response(MemberOutputSerializer(selectors.member_get(tenant=self.tenant, pk=pk)).data)

    @extend_schema(
        operation_id="members_update",
        summary="Change a member's role (admins; only owners touch the owner role)",
        request=MemberRoleInputSerializer,
        responses={200: MemberOutputSerializer, **error_responses(400, 403, 404, 413)},
    )
    def patch(self, request: Request, tenant_slug: str, pk: int) -> Response:
        membership = selectors.member_get(tenant=self.tenant, pk=pk)
        data = self.MemberRoleInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = member_role_set(
            tenant=self.tenant, actor=self.membership, membership=membership, role=data.validated_data["role"]
        )
        return Response(MemberOutputSerializer(selectors.member_get(tenant=self.tenant, pk=membership.pk)).data)

    @extend_schema(
        operation_id="members_remove",
        summary="Remove a member (admins): access ends on their next request, their sockets close",
        responses={204: OpenApiResponse(description="removed"), **error_responses(400, 403, 404)},
    )
    def delete(self, request: Request, tenant_slug: str, pk: int) -> Response:
        membership = selectors.member_get(tenant=self.tenant, pk=pk)
        member_remove(tenant=self.tenant, actor=self.membership, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- WhatsApp numbers (admins) ---------------------------------------------------------------------------------------


class NumberOutputSerializer(serializers.ModelSerializer[WhatsAppNumber]):
    is_sandbox = serializers.BooleanField(read_only=True)
    has_access_token = serializers.SerializerMethodField()
    has_app_secret = serializers.SerializerMethodField()
    has_verify_token = serializers.SerializerMethodField()

    class Meta:
        model = WhatsAppNumber
        fields = [
            "id",
            "phone_number_id",
            "display_phone_number",
            "label",
            "waba_id",
            "is_sandbox",
            "has_access_token",
            "has_app_secret",
            "has_verify_token",
            "auth_error",
            "created_at",
        ]
        read_only_fields = fields

    def get_has_access_token(self, obj: WhatsAppNumber) -> bool:
        return bool(obj.access_token)

    def get_has_app_secret(self, obj: WhatsAppNumber) -> bool:
        return bool(obj.app_secret)

    def get_has_verify_token(self, obj: WhatsAppNumber) -> bool:
        return bool(obj.verify_token)


class NumberInputSerializer(serializers.Serializer[Any]):
    phone_number_id = serializers.RegexField(r"^[0-9]{1,64}$", help_text="Meta's phone number id")
    display_phone_number = serializers.RegexField(r"^\+?[0-9 ]{4,32}$")
    label = serializers.CharField(required=False, allow_blank=True, max_length=100)
    waba_id = serializers.RegexField(r"^[0-9]{0,64}$", required=False, allow_blank=True)
    access_token = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=4096, help_text="write-only; blank: sandbox"
    )
    app_secret = serializers.CharField(required=False, allow_blank=True, write_only=True, max_length=256)
    verify_token = serializers.CharField(required=False, allow_blank=True, write_only=True, max_length=256)

    def validate_display_phone_number(self, value: str) -> str:
        return value.replace(" ", "").lstrip("+")


class NumberListApi(TenantApiView):
    admin_methods = frozenset({"GET", "POST"})

    @extend_schema(
        operation_id="numbers_list",
        summary="The tenant's WhatsApp numbers (admins; secrets are never returned)",
        responses={200: NumberOutputSerializer(many=True), **error_responses(403, 404)},
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return Response(NumberOutputSerializer(selectors.number_list(tenant=self.tenant), many=True).data)

    @extend_schema(
        operation_id="numbers_create",
        summary="Connect a WhatsApp number (admins)",
        request=NumberInputSerializer,
        responses={201: NumberOutputSerializer, **error_responses(400, 403, 404, 413)},
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        data = NumberInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        number = number_create(tenant=self.tenant, **data.validated_data)
        return Response(NumberOutputSerializer(number).data, status=status.HTTP_201_CREATED)


class NumberDetailApi(TenantApiView):
    admin_methods = frozenset({"GET", "PATCH", "DELETE"})

    @extend_schema(
        operation_id="numbers_retrieve",
        summary="A WhatsApp number (admins)",
        responses={200: NumberOutputSerializer, **error_responses(403, 404)},
    )
    def get(self, request: Request, tenant_slug: str, pk: int) -> Response:
        return Response(NumberOutputSerializer(selectors.number_get(tenant=self.tenant, pk=pk)).data)

    @extend_schema(
        operation_id="numbers_update",
        summary="Change a WhatsApp number (admins); secrets are write-only",
        request=NumberInputSerializer(partial=True),
        responses={200: NumberOutputSerializer, **error_responses(400, 403, 404, 413)},
    )
    def patch(self, request: Request, tenant_slug: str, pk: int) -> Response:
        number = selectors.number_get(tenant=self.tenant, pk=pk)
        data = NumberInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        number = number_update(tenant=self.tenant, number=number, **data.validated_data)
        return Response(NumberOutputSerializer(number).data)

    @extend_schema(
        operation_id="numbers_delete",
        summary="Disconnect a WhatsApp number without conversations (admins)",
        responses={204: OpenApiResponse(description="deleted"), **error_responses(400, 403, 404)},
    )
    def delete(self, request: Request, tenant_slug: str, pk: int) -> Response:
        number_delete(tenant=self.tenant, number=selectors.number_get(tenant=self.tenant, pk=pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- templates -------------------------------------------------------------------------------------------------------


class TemplateOutputSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    number_id = serializers.IntegerField()
    name = serializers.CharField()
    language = serializers.CharField()
    category = serializers.CharField()
    status = serializers.CharField()
    body_text = serializers.CharField(help_text="the body with {{1}}-style placeholders")
    components = serializers.ListField(child=serializers.DictField(child=serializers.JSONField()))
    updated_at = serializers.DateTimeField()


class TemplateListApi(TenantApiView):
    class FilterSerializer(serializers.Serializer[Any]):
        number = serializers.IntegerField(required=False, min_value=1, help_text="only this number's templates")

    @extend_schema(
        operation_id="templates_list",
        summary="Message templates (the only messages allowed outside the 24-hour window)",
        parameters=[FilterSerializer],
        responses={200: TemplateOutputSerializer(many=True), **error_responses(400, 404)},
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        templates = selectors.template_list(tenant=self.tenant, number_id=params.validated_data.get("number"))
        return Response(TemplateOutputSerializer(templates, many=True).data)


# --- event log and WebSocket tickets ---------------------------------------------------------------------------------


class EventFrameSerializer(serializers.Serializer[Any]):
    type = serializers.CharField(help_text="message:new, message:status, message:read, conversation:updated")
    data = serializers.DictField(child=serializers.JSONField())
    ts = serializers.CharField()
    seq = serializers.IntegerField()


class EventPageSerializer(serializers.Serializer[Any]):
    events = EventFrameSerializer(many=True, help_text="the frames the WebSocket sent, in seq order")
    head = serializers.IntegerField(help_text="the tenant's latest seq")
    has_more = serializers.BooleanField(help_text="ask again with since= the last seq of this page")


class EventListApi(TenantApiView):
    class FilterSerializer(serializers.Serializer[Any]):
        since = serializers.IntegerField(min_value=0, help_text="the last seq you saw (0 for none)")
        limit = serializers.IntegerField(required=False, default=500, min_value=1, max_value=selectors.EVENT_PAGE_MAX)

    @extend_schema(
        operation_id="events_list",
        summary="The tenant's durable events after a seq: the REST twin of the WebSocket `sync`",
        parameters=[FilterSerializer],
        responses={200: EventPageSerializer, **error_responses(400, 404, 410)},
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        from inbox.api_errors import Gone
        from inbox.events import event_frame

        params = self.FilterSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        since, limit = params.validated_data["since"], params.validated_data["limit"]
        if selectors.event_gap(tenant=self.tenant, since=since):
            raise Gone("Events after this seq are no longer retained: reload state over REST.", code="sync_gap")
        head = selectors.event_head(tenant=self.tenant)
        events = selectors.event_list(tenant=self.tenant, since=since, limit=limit)
        last = events[-1].seq if events else since
        return Response({"events": [event_frame(e) for e in events], "head": head, "has_more": last < head})


class TicketOutputSerializer(serializers.Serializer[Any]):
    ticket = serializers.CharField(help_text="single use, valid for 60 seconds, for this user and tenant")
    expires_at = serializers.DateTimeField()
    url = serializers.CharField(help_text="the WebSocket path to open with it")


class WsTicketApi(TenantApiView):
    throttle_classes = [MethodScopedRateThrottle]
    throttle_scope = "ticket"

    @extend_schema(
        operation_id="ws_ticket_create",
        summary="A ticket to open the tenant's WebSocket without a session cookie (docs/realtime.md)",
        request=None,
        responses={201: TicketOutputSerializer, **error_responses(404, 429)},
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        from tenants.tickets import ticket_issue

        token, expires_at = ticket_issue(user=request.user, tenant=self.tenant)  # type: ignore[arg-type]
        return Response(
            {"ticket": token, "expires_at": expires_at, "url": f"/ws/tenants/{self.tenant.slug}/?ticket={token}"},
            status=status.HTTP_201_CREATED,
        )


@csrf_exempt  # nothing here to protect; a CSRF 403 would hide the 404
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any other /api/ URL (also ids that are not numbers): a 404 in the API's error shape, not an HTML page."""
    return JsonResponse(error_body("not_found", "Not found."), status=404)
