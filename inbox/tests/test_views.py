"""The inbox pages through Django's test client: login, layout, list, thread, actions, and tenant isolation."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db.models.functions import Coalesce
from django.test import Client
from django.utils import timezone

from inbox.models import (
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageTemplate,
    Reaction,
    ReadMarker,
    TenantEvent,
)
from inbox.tests import factories
from inbox.tests.fixtures import World
from tenants.models import Membership
from tenants.scoping import scopes_disabled

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _clear_throttle() -> None:
    cache.clear()


def logged_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def url(world: World, path: str = "", tenant: str = "acme") -> str:
    return f"/t/{tenant}/{path}"


# --- Login ----------------------------------------------------------------------------------------------------------


def test_it_logs_in_by_username_or_email_and_redirects_to_the_inbox(world: World) -> None:
    client = Client()
    assert client.get("/accounts/login/").status_code == 200
    response = client.post("/accounts/login/", {"username": "alice@example.com", "password": factories.PASSWORD})
    assert response.status_code == 302
    response = client.get(response["Location"])
    assert response.status_code == 302 and response["Location"] == "/t/acme/"
    assert client.get("/t/acme/").status_code == 200


def test_it_rejects_a_wrong_password_and_locks_out_repeated_failures(world: World) -> None:
    client = Client()
    statuses = [
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code for _ in range(5)
    ]
    assert statuses[:4] == [400] * 4 and statuses[4] in (400, 429)
    # Locked out: even the right password does not log in now.
    response = client.post("/accounts/login/", {"username": "alice", "password": factories.PASSWORD})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another account is not affected.
    assert client.post("/accounts/login/", {"username": "bob", "password": factories.PASSWORD}).status_code == 302


def test_it_throttles_one_address_trying_many_usernames(world: World) -> None:
    client = Client()
    for n in range(20):
        assert client.post("/accounts/login/", {"username": f"guess{n}", "password": "x"}).status_code == 400
    response = client.post("/accounts/login/", {"username": "alice", "password": factories.PASSWORD})
    assert response.status_code == 429 and b"Too many failed sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    other = Client(REMOTE_ADDR="10.9.9.9")  # another address is not affected
    assert other.post("/accounts/login/", {"username": "alice", "password": factories.PASSWORD}).status_code == 302


def test_it_ignores_an_offsite_next_url(world: World) -> None:
    response = Client().post(
        "/accounts/login/?next=https://evil.example/", {"username": "alice", "password": factories.PASSWORD}
    )
    assert response.status_code == 302 and response["Location"] == "/"


def test_it_logs_out_by_post_only(world: World) -> None:
    client = logged_in(world.alice)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/t/acme/").status_code == 302


def test_it_sends_anonymous_users_to_login_and_htmx_requests_by_client_redirect(world: World) -> None:
    response = Client().get("/t/acme/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")
    response = Client().get("/t/acme/conversations/", **HTMX)
    assert response["HX-Redirect"].startswith("/accounts/login/")


def test_it_tells_a_user_without_a_tenant(world: World) -> None:
    loner = factories.make_user("loner")
    response = logged_in(loner).get("/")
    assert response.status_code == 403 and b"No inbox yet" in response.content


# --- Layout and list -----------------------------------------------------------------------------------------------


def test_the_page_shows_own_tenant_only_and_has_no_inline_script(world: World) -> None:
    with scopes_disabled():
        acme_name = world.acme_conversation.contact.display_name
        globex_name = world.globex_conversation.contact.display_name
    response = logged_in(world.alice).get("/t/acme/")
    html = response.content.decode()
    assert response.status_code == 200
    assert acme_name in html and globex_name not in html
    assert 'data-ws-path="/ws/tenants/acme/"' in html
    assert 'href="/admin/"' not in html  # alice is a tenant admin, not a site operator
    # Strict CSP: every script is a file, no inline handlers (the browser tests fail on any violation).
    policy = response.headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert re.findall(r"\son[a-z]+=", html) == []


def test_it_lists_the_other_tenants_of_a_user_in_the_switcher(world: World) -> None:
    factories.make_member(world.globex, world.alice)
    html = logged_in(world.alice).get("/t/acme/").content.decode()
    assert 'href="/t/globex/"' in html
    assert logged_in(world.alice).get("/t/globex/").status_code == 200


def test_it_links_site_admins_to_django_admin(world: World) -> None:
    world.alice.is_staff = True
    world.alice.save()
    assert 'href="/admin/"' in logged_in(world.alice).get("/t/acme/").content.decode()


def test_the_list_filters_by_status_assignee_and_search(world: World) -> None:
    mine = world.acme_conversation
    with scopes_disabled():
        Conversation.objects.filter(pk=mine.pk).update(assignee=world.alice)
    pending = factories.make_conversation(
        world.acme_number, factories.make_contact(world.acme, profile_name="Pending Paula"), status="pending"
    )
    other = factories.make_conversation(world.acme_number, factories.make_contact(world.acme, profile_name="Zed"))
    factories.make_message(other, text="where is my parcel")
    client = logged_in(world.alice)

    def rows(**params: str) -> set[int]:
        response = client.get("/t/acme/conversations/", params, **HTMX)
        assert response.status_code == 200
        return {int(i) for i in re.findall(r'id="conv-(\d+)"', response.content.decode())}

    assert rows(status="open") == {mine.pk, other.pk}
    assert rows(status="pending") == {pending.pk}
    assert rows(status="open", assigned="me") == {mine.pk}
    assert rows(status="open", assigned="unassigned") == {other.pk}
    assert rows(status="open", q="parcel") == {other.pk}
    assert rows(status="pending", q="paula") == {pending.pk}


def test_rows_show_my_unread_count_and_reading_clears_it(world: World) -> None:
    conversation = world.acme_conversation
    factories.make_message(conversation, text="one")
    last = factories.make_message(conversation, text="two")
    alice, bob = logged_in(world.alice), logged_in(world.bob)
    row = alice.get(f"/t/acme/conversations/{conversation.pk}/row/", {"status": "open"}).content.decode()
    assert 'data-unread="2"' in row and 'aria-label="2 unread"' in row
    response = alice.post(f"/t/acme/conversations/{conversation.pk}/read/", {"message_id": last.pk})
    assert response.status_code == 204
    row = alice.get(f"/t/acme/conversations/{conversation.pk}/row/", {"status": "open"}).content.decode()
    assert 'data-unread="0"' in row
    # Bob's count is his own.
    assert 'data-unread="2"' in bob.get(f"/t/acme/conversations/{conversation.pk}/row/").content.decode()
    with scopes_disabled():
        assert ReadMarker.objects.get(user=world.alice, conversation=conversation).last_read_message_id == last.pk
        assert TenantEvent.objects.filter(tenant=world.acme, type="message:read").count() == 1


def test_a_row_that_no_longer_matches_the_filter_answers_204(world: World) -> None:
    client = logged_in(world.alice)
    path = f"/t/acme/conversations/{world.acme_conversation.pk}/row/"
    assert client.get(path, {"status": "open"}).status_code == 200
    assert client.get(path, {"status": "resolved"}).status_code == 204


# --- Thread -------------------------------------------------------------------------------------------------------


def test_the_thread_renders_every_message_type(world: World) -> None:
    c = world.acme_conversation
    out = {"direction": Direction.OUTBOUND, "sender": world.bob}
    quoted = factories.make_message(c, text="the original question")
    factories.make_message(c, type="text", text="see https://example.com", reply_to=quoted)
    factories.make_message(c, type="image", text="a caption", media_id="m1", media_state="pending")
    factories.make_message(c, type="video", media_id="m2", media_state="failed", media_error="too large")
    factories.make_message(c, type="document", media_id="m3", media_state="pending", media_filename="invoice.pdf")
    factories.make_message(
        c, type="location", text="", payload={"latitude": 52.52, "longitude": 13.405, "name": "Office"}
    )
    factories.make_message(
        c,
        type="contacts",
        text="",
        payload={"contacts": [{"name": {"formatted_name": "Jane Roe"}, "phones": [{"phone": "+1 555 0100"}]}]},
    )
    factories.make_message(
        c, type="interactive", text="", payload={"type": "list_reply", "list_reply": {"id": "2", "title": "Tuesday"}}
    )
    factories.make_message(c, type="button", text="", payload={"button": {"payload": "STOP", "text": "Stop promos"}})
    factories.make_message(c, type="unsupported", text="", payload={"unsupported": {"type": "poll_creation"}})
    factories.make_message(c, text="oops", deleted_at=timezone.now())
    edited = factories.make_message(c, text="fixed typo", edited_at=timezone.now())
    factories.make_message(c, text="sent one", status="sent", **out)
    factories.make_message(c, text="delivered one", status="delivered", **out)
    factories.make_message(c, text="read one", status="read", **out)
    factories.make_message(
        c, text="failed one", status="failed", error_code=131047, error_title="Re-engagement message", **out
    )
    with scopes_disabled():
        Reaction.objects.create(tenant=world.acme, message=edited, emoji="🎉")

    html = logged_in(world.alice).get(f"/t/acme/conversations/{c.pk}/").content.decode()
    assert '<a href="https://example.com"' in html
    assert "the original question" in html and 'class="quote"' in html
    assert "a caption" in html and "Image — downloading…" in html
    assert "could not be downloaded: too large" in html
    assert "invoice.pdf" in html
    assert "https://www.openstreetmap.org/?mlat=52.52&amp;mlon=13.405" in html and "Office" in html
    assert "Jane Roe" in html and "tel:+1 555 0100" in html
    assert "List choice:</span> Tuesday" in html
    assert "Button:</span> Stop promos" in html
    assert "can’t be shown here (a poll creation message)" in html
    assert "This message was deleted" in html and "oops" not in html
    assert 'class="edited"' in html and "🎉" in html
    assert 'class="ticks ticks-sent"' in html and 'class="ticks ticks-delivered"' in html
    assert 'class="ticks ticks-read"' in html and 'class="ticks ticks-failed"' in html
    assert "Not delivered: Re-engagement message (131047)" in html and ">Retry</button>" in html
    assert "Bob" in html  # the agent's name on outbound bubbles
    assert 'class="day-divider"' in html


def test_the_thread_loads_older_messages_by_page(world: World) -> None:
    c = world.acme_conversation
    start = timezone.now() - timedelta(hours=3)
    messages = [
        factories.make_message(c, text=f"m{i:03d}", wa_timestamp=start + timedelta(minutes=i)) for i in range(45)
    ]
    client = logged_in(world.alice)
    html = client.get(f"/t/acme/conversations/{c.pk}/").content.decode()
    assert "m044" in html and "m004" not in html
    first_shown = messages[5]
    assert f"?before={first_shown.pk}" in html
    older = client.get(f"/t/acme/conversations/{c.pk}/messages/", {"before": first_shown.pk}, **HTMX).content.decode()
    assert "m000" in older and "m004" in older and "m005" not in older and "load-older" not in older


def test_a_closed_window_offers_the_template_picker(world: World) -> None:
    c = world.acme_conversation
    with scopes_disabled():
        Conversation.objects.filter(pk=c.pk).update(last_inbound_at=timezone.now() - timedelta(hours=25))
        MessageTemplate.objects.create(
            tenant=world.acme, number=world.acme_number, name="order_update", body_text="Hi {{1}}"
        )
        MessageTemplate.objects.create(
            tenant=world.globex, number=world.globex_number, name="globex_secret", body_text="x"
        )
    html = logged_in(world.alice).get(f"/t/acme/conversations/{c.pk}/").content.decode()
    assert "only an approved template can be sent" in html
    assert "order_update (en_US)" in html and "globex_secret" not in html
    assert 'name="text"' not in html


def test_an_htmx_click_on_a_row_gets_the_thread_and_contact_panel_only(world: World) -> None:
    response = logged_in(world.alice).get(
        f"/t/acme/conversations/{world.acme_conversation.pk}/", HTTP_HX_TARGET="thread-pane", **HTMX
    )
    html = response.content.decode()
    assert 'id="thread"' in html and 'hx-swap-oob="true"' in html and "<html" not in html


# --- Actions -------------------------------------------------------------------------------------------------------


def test_it_changes_status_and_assignee(world: World) -> None:
    c = world.acme_conversation
    client = logged_in(world.alice)
    response = client.post(f"/t/acme/conversations/{c.pk}/change/", {"status": "pending"}, **HTMX)
    assert response.status_code == 200 and 'data-status="pending"' in response.content.decode()
    response = client.post(f"/t/acme/conversations/{c.pk}/change/", {"assignee": "me"}, **HTMX)
    assert f'data-assignee="{world.alice.pk}"' in response.content.decode()
    with scopes_disabled():
        bob_membership = Membership.objects.get(tenant=world.acme, user=world.bob)
    client.post(f"/t/acme/conversations/{c.pk}/change/", {"assignee": bob_membership.pk})
    with scopes_disabled():
        c.refresh_from_db()
        assert (c.status, c.assignee_id) == (ConversationStatus.PENDING, world.bob.pk)
        assert TenantEvent.objects.filter(tenant=world.acme, type="conversation:updated").count() == 3
    response = client.post(f"/t/acme/conversations/{c.pk}/change/", {"assignee": ""}, **HTMX)
    with scopes_disabled():
        c.refresh_from_db()
    assert c.assignee_id is None


def test_it_refuses_to_assign_a_member_of_another_tenant(world: World) -> None:
    c = world.acme_conversation
    with scopes_disabled():
        charlie_membership = Membership.objects.get(tenant=world.globex, user=world.charlie)
    response = logged_in(world.alice).post(
        f"/t/acme/conversations/{c.pk}/change/", {"assignee": charlie_membership.pk}, **HTMX
    )
    assert response.status_code == 400
    with scopes_disabled():
        c.refresh_from_db()
    assert c.assignee_id is None


def test_a_bad_status_is_a_form_error(world: World) -> None:
    response = logged_in(world.alice).post(
        f"/t/acme/conversations/{world.acme_conversation.pk}/change/", {"status": "bogus"}, **HTMX
    )
    assert response.status_code == 400 and "must be one of" in response.content.decode()


# --- Tenant isolation ------------------------------------------------------------------------------------------------


def test_another_tenants_pages_and_objects_are_404(world: World) -> None:
    theirs = world.globex_conversation
    their_message = factories.make_message(theirs, text="globex secret", direction=Direction.OUTBOUND, status="failed")
    client = logged_in(world.alice)
    gets = [
        "/t/globex/",
        "/t/nope/",
        f"/t/globex/conversations/{theirs.pk}/",
        f"/t/acme/conversations/{theirs.pk}/",
        f"/t/acme/conversations/{theirs.pk}/row/",
        f"/t/acme/conversations/{theirs.pk}/messages/?before={their_message.pk}",
        f"/t/acme/messages/{their_message.pk}/",
    ]
    for path in gets:
        response = client.get(path, **HTMX)
        assert response.status_code == 404, path
        assert b"globex secret" not in response.content
    posts = [
        (f"/t/acme/conversations/{theirs.pk}/change/", {"status": "resolved", "assignee": "me"}),
        (f"/t/acme/conversations/{theirs.pk}/read/", {"message_id": their_message.pk}),
        (f"/t/acme/conversations/{theirs.pk}/send/", {"text": "hi", "client_id": "x1"}),
        (f"/t/acme/messages/{their_message.pk}/retry/", {}),
        (f"/t/acme/messages/{their_message.pk}/react/", {"emoji": "👍"}),
        (f"/t/globex/conversations/{theirs.pk}/change/", {"status": "resolved"}),
    ]
    for path, data in posts:
        assert client.post(path, data, **HTMX).status_code == 404, path
    with scopes_disabled():
        theirs.refresh_from_db()
        assert (theirs.status, theirs.assignee_id) == ("open", None)
        assert not ReadMarker.objects.filter(conversation=theirs).exists()
        assert Message.objects.filter(conversation=theirs).count() == 1
        assert not Reaction.objects.filter(message=their_message).exists()
        assert not TenantEvent.objects.filter(tenant=world.globex).exists()


def test_reading_a_message_of_another_conversation_is_refused(world: World) -> None:
    theirs = factories.make_message(world.globex_conversation)
    response = logged_in(world.alice).post(
        f"/t/acme/conversations/{world.acme_conversation.pk}/read/", {"message_id": theirs.pk}
    )
    assert response.status_code == 404
    with scopes_disabled():
        assert not ReadMarker.objects.exists()


def test_a_removed_member_loses_access_at_once(world: World) -> None:
    client = logged_in(world.bob)
    assert client.get("/t/acme/").status_code == 200
    with scopes_disabled():
        Membership.objects.filter(user=world.bob).update(is_active=False)
    assert client.get("/t/acme/").status_code == 404


# --- Composer ------------------------------------------------------------------------------------------------------


def test_the_composer_sends_once_per_client_id_and_returns_the_bubble(world: World) -> None:
    c = world.acme_conversation
    client = logged_in(world.bob)
    path = f"/t/acme/conversations/{c.pk}/send/"
    first = client.post(path, {"text": "On its way!", "client_id": "tab1-0001"}, **HTMX)
    again = client.post(path, {"text": "On its way!", "client_id": "tab1-0001"}, **HTMX)
    assert first.status_code == again.status_code == 200
    html = first.content.decode()
    assert 'data-client-id="tab1-0001"' in html and "On its way!" in html and "msg-out" in html
    with scopes_disabled():
        messages = list(Message.objects.filter(conversation=c, direction=Direction.OUTBOUND))
        assert len(messages) == 1 and messages[0].sender_id == world.bob.pk
        assert f'id="msg-{messages[0].pk}"' in again.content.decode()
        assert TenantEvent.objects.filter(tenant=world.acme, type="message:new").count() == 1


def test_the_composer_without_javascript_redirects_back_to_the_thread(world: World) -> None:
    c = world.acme_conversation
    response = logged_in(world.bob).post(f"/t/acme/conversations/{c.pk}/send/", {"text": "plain form"})
    assert response.status_code == 302 and response["Location"] == f"/t/acme/conversations/{c.pk}/"
    with scopes_disabled():
        assert Message.objects.filter(conversation=c, text="plain form").exists()


def test_the_composer_refuses_free_text_outside_the_window_and_sends_a_template(world: World) -> None:
    c = world.acme_conversation
    with scopes_disabled():
        Conversation.objects.filter(pk=c.pk).update(last_inbound_at=timezone.now() - timedelta(hours=30))
        template = MessageTemplate.objects.create(
            tenant=world.acme, number=world.acme_number, name="order_update", body_text="Hi {{1}}, order {{2}}"
        )
    client = logged_in(world.bob)
    path = f"/t/acme/conversations/{c.pk}/send/"
    response = client.post(path, {"text": "hello?", "client_id": "w1"}, **HTMX)
    assert response.status_code == 400 and "template" in response.content.decode()
    response = client.post(path, {"template": template.pk, "param": ["Ann", "#42", ""], "client_id": "w2"}, **HTMX)
    assert response.status_code == 200, response.content
    assert "Hi Ann, order #42" in response.content.decode()
    with scopes_disabled():
        assert list(Message.objects.filter(conversation=c).values_list("type", flat=True)) == ["template"]


def test_an_empty_message_is_a_form_error(world: World) -> None:
    response = logged_in(world.bob).post(
        f"/t/acme/conversations/{world.acme_conversation.pk}/send/", {"text": "  ", "client_id": "e1"}, **HTMX
    )
    assert response.status_code == 400 and "Type a message first." in response.content.decode()


def test_it_reacts_and_takes_the_reaction_back(world: World) -> None:
    message = factories.make_message(world.acme_conversation, text="thanks!")
    client = logged_in(world.bob)
    response = client.post(f"/t/acme/messages/{message.pk}/react/", {"emoji": "👍"}, **HTMX)
    assert response.status_code == 200 and "👍" in response.content.decode()
    with scopes_disabled():
        assert list(Reaction.objects.filter(message=message).values_list("emoji", "user_id")) == [("👍", world.bob.pk)]
    client.post(f"/t/acme/messages/{message.pk}/react/", {"emoji": ""}, **HTMX)
    with scopes_disabled():
        assert not Reaction.objects.filter(message=message).exists()


def test_it_retries_a_failed_message(world: World) -> None:
    message = factories.make_message(
        world.acme_conversation,
        direction=Direction.OUTBOUND,
        text="try again",
        status="failed",
        send_state="failed",
        error_code=131000,
        error_title="Something went wrong",
        client_id="r1",
    )
    response = logged_in(world.bob).post(f"/t/acme/messages/{message.pk}/retry/", **HTMX)
    assert response.status_code == 200
    with scopes_disabled():
        message.refresh_from_db()
    assert message.status != "failed"


def test_the_composer_sends_an_attachment(world: World) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    png = SimpleUploadedFile("receipt.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64, content_type="image/png")
    response = logged_in(world.bob).post(
        f"/t/acme/conversations/{world.acme_conversation.pk}/send/",
        {"text": "your receipt", "client_id": "att-1", "media": png},
        **HTMX,
    )
    assert response.status_code == 200, response.content
    html = response.content.decode()
    assert "msg-type-image" in html and "your receipt" in html
    with scopes_disabled():
        message = Message.objects.get(client_id="att-1")
    assert (message.type, message.media_mime_type) == ("image", "image/png")
    assert f"/api/tenants/acme/messages/{message.pk}/media/" in html


def test_htmx_posts_need_the_csrf_token_the_page_hands_out(world: World) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.alice)
    path = f"/t/acme/conversations/{world.acme_conversation.pk}/change/"
    assert client.post(path, {"status": "pending"}, **HTMX).status_code == 403
    page = client.get("/t/acme/").content.decode()
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page)
    assert token is not None
    response = client.post(path, {"status": "pending"}, HTTP_X_CSRFTOKEN=token.group(1), **HTMX)
    assert response.status_code == 200


def test_the_list_pages_by_last_activity_without_repeats(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from inbox import views

    monkeypatch.setattr(views, "LIST_LIMIT", 2)
    start = timezone.now() - timedelta(hours=1)
    for i in range(4):
        c = factories.make_conversation(world.acme_number, factories.make_contact(world.acme, profile_name=f"P{i}"))
        factories.make_message(c, wa_timestamp=start + timedelta(minutes=i))
    client = logged_in(world.alice)
    seen: list[int] = []
    url = "/t/acme/conversations/?status=open"
    for _ in range(5):
        html = client.get(url, **HTMX).content.decode()
        seen += [int(i) for i in re.findall(r'id="conv-(\d+)"', html)]
        more = re.search(r'hx-get="([^"]+after=[^"]+)"', html)
        if more is None:
            break
        url = more.group(1).replace("&amp;", "&")
    with scopes_disabled():
        expected = list(
            Conversation.objects.filter(tenant=world.acme)
            .annotate(activity=Coalesce("last_message_at", "created_at"))
            .order_by("-activity", "-id")
            .values_list("pk", flat=True)
        )
    assert seen == expected and len(seen) == 5


# --- Failed media downloads ----------------------------------------------------------------------------------------


def _failed_download(conversation: Conversation) -> Message:
    return factories.make_message(
        conversation, type="image", text="", media_id="media-gone", media_state="failed", media_error="Media too large"
    )


def test_a_failed_download_offers_a_csrf_protected_retry_that_queues_it_again(world: World) -> None:
    failed = _failed_download(world.acme_conversation)
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.bob)
    page = client.get(f"/t/acme/conversations/{world.acme_conversation.pk}/").content.decode()
    retry_path = f"/t/acme/messages/{failed.pk}/media/retry/"
    bubble = page[page.index(f'id="msg-{failed.pk}"') :]
    assert f'hx-post="{retry_path}"' in bubble and ">Retry download</button>" in bubble
    assert 'name="csrfmiddlewaretoken"' in bubble[: bubble.index(">Retry download</button>")]
    # Without the page's CSRF token: refused, nothing changed.
    assert client.post(retry_path, **HTMX).status_code == 403
    with scopes_disabled():
        failed.refresh_from_db()
        assert failed.media_state == "failed"
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page)
    assert token is not None
    response = client.post(retry_path, HTTP_X_CSRFTOKEN=token.group(1), **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="msg-{failed.pk}"' in html and "Image — downloading…" in html and "Retry download" not in html
    with scopes_disabled():
        failed.refresh_from_db()
        assert (failed.media_state, failed.media_error) == ("pending", "")
        assert TenantEvent.objects.filter(tenant=world.acme, type="message:new").count() == 1
    # A second retry (the download is pending, not failed): a form error, nothing changed.
    again = client.post(retry_path, HTTP_X_CSRFTOKEN=token.group(1), **HTMX)
    assert again.status_code == 400 and "only a failed download" in again.content.decode()
    with scopes_disabled():
        assert TenantEvent.objects.filter(tenant=world.acme, type="message:new").count() == 1


def test_retry_download_is_offered_only_for_failed_received_media(world: World) -> None:
    c = world.acme_conversation
    factories.make_message(c, type="image", text="", media_id="m1", media_state="pending")
    factories.make_message(c, type="image", text="", media_state="failed", media_error="no media id")
    html = logged_in(world.bob).get(f"/t/acme/conversations/{c.pk}/").content.decode()
    assert "Retry download" not in html


def test_another_tenants_failed_download_cannot_be_retried(world: World) -> None:
    theirs = _failed_download(world.globex_conversation)
    client = logged_in(world.alice)
    for path in (f"/t/acme/messages/{theirs.pk}/media/retry/", f"/t/globex/messages/{theirs.pk}/media/retry/"):
        assert client.post(path, **HTMX).status_code == 404, path
    assert client.get(f"/t/acme/messages/{theirs.pk}/media/retry/", **HTMX).status_code == 405
    with scopes_disabled():
        theirs.refresh_from_db()
        assert (theirs.media_state, theirs.media_error) == ("failed", "Media too large")
        assert not TenantEvent.objects.filter(tenant=world.globex).exists()
