"""The inbox in headless Chromium: two agents of one tenant, an agent of another, live updates, restart, phone."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import InboxServer, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_conversation(page: Page, conversation_id: int) -> None:
    page.locator(f"#conv-{conversation_id} .conv-link").click()
    expect(page.locator(f'#thread[data-conversation-id="{conversation_id}"]')).to_be_visible()


def bubbles(page: Page, text: str, direction: str = "") -> Any:
    return page.locator(f".msg{'.msg-' + direction if direction else ''}", has_text=text)


def test_a_message_sent_by_one_agent_appears_for_the_other_and_its_ticks_reach_read(
    server: InboxServer, login: Any
) -> None:
    acme = server.data["acme"]["conversation"]
    alice, bob, charlie = login("alice"), login("bob"), login("charlie")
    for agent in (alice, bob):
        open_conversation(agent.page, acme)

    alice.page.locator("#composer-text").fill("Your parcel ships today")
    alice.page.keyboard.press("Enter")
    # At once, before any answer: the pending bubble; then exactly one bubble per page, reconciled by client id.
    expect(bubbles(alice.page, "Your parcel ships today", "out")).to_have_count(1)
    expect(bubbles(bob.page, "Your parcel ships today", "out")).to_have_count(1)
    expect(alice.page.locator("#composer-text")).to_have_value("")
    for agent in (alice, bob):
        bubble = bubbles(agent.page, "Your parcel ships today", "out")
        expect(bubble.locator(".ticks-read")).to_be_visible()
        expect(bubble).to_have_attribute("data-status", "read")
        expect(bubble.locator(".sender")).to_have_text("Alice Agent")
    expect(bubbles(alice.page, "Your parcel ships today")).to_have_count(1)
    # The list row of the other agent moved on too: preview and read ticks.
    row = bob.page.locator(f"#conv-{acme}")
    expect(row.locator(".conv-preview")).to_contain_text("Your parcel ships today")
    expect(row.locator(".ticks-read")).to_be_visible()
    screenshot(alice.page, "desktop-thread-sender")
    screenshot(bob.page, "desktop-thread-colleague")

    expect(charlie.page.locator("body")).not_to_contain_text("Your parcel ships today")
    expect(charlie.page.locator(".conv-row")).to_have_count(1)
    expect(charlie.page.locator(".conv-row")).to_contain_text(server.data["globex"]["contact"])


def test_an_inbound_webhook_message_appears_for_both_agents_only(server: InboxServer, login: Any) -> None:
    acme = server.data["acme"]["conversation"]
    alice, bob, charlie = login("alice"), login("bob"), login("charlie")
    open_conversation(alice.page, acme)  # bob stays on the list: he gets the row update and a toast

    server.inbound("acme", "Is the parcel insured?")

    expect(bubbles(alice.page, "Is the parcel insured?", "in")).to_have_count(1)
    expect(alice.page.locator(".thread-title h1")).to_have_text(server.data["acme"]["contact"])
    row = bob.page.locator(f"#conv-{acme}")
    expect(row.locator(".conv-preview")).to_contain_text("Is the parcel insured?")
    expect(row.locator(".badge")).to_be_visible()
    expect(bob.page.locator(".toast", has_text="Is the parcel insured?")).to_be_visible()
    expect(bob.page).to_have_title(re.compile(r"^\(\d+\) Inbox"))
    screenshot(bob.page, "desktop-list-live-row")
    open_conversation(bob.page, acme)
    expect(bubbles(bob.page, "Is the parcel insured?", "in")).to_have_count(1)
    # Reading it clears bob's badge (his own count; alice's view is hers).
    expect(bob.page.locator(f"#conv-{acme} .badge")).to_have_count(0)

    expect(charlie.page.locator("body")).not_to_contain_text("Is the parcel insured?")
    response = charlie.page.goto(f"/t/acme/conversations/{acme}/")
    assert response is not None and response.status == 404


def test_typing_shows_for_the_colleague_and_clears(server: InboxServer, login: Any) -> None:
    acme = server.data["acme"]["conversation"]
    alice, bob = login("alice"), login("bob")
    for agent in (alice, bob):
        open_conversation(agent.page, acme)

    bob_id = bob.page.locator("#app").get_attribute("data-user-id")
    expect(alice.page.locator(f'#contact-panel .presence[data-presence-user="{bob_id}"]')).to_have_class(
        re.compile(r"\bonline\b")
    )
    expect(alice.page.locator(f"#conv-{acme} .viewers")).to_have_text("Bob Agent viewing")
    alice.page.locator("#composer-text").press_sequentially("Let me check", delay=20)
    expect(bob.page.locator("#typing")).to_have_text("Alice Agent is typing…")
    expect(bob.page.locator(f"#conv-{acme} .conv-typing")).to_be_visible()
    expect(alice.page.locator("#typing")).to_have_text("")  # never one's own
    alice.page.locator("#composer-text").fill("")
    expect(bob.page.locator("#typing")).to_have_text("")
    expect(bob.page.locator(f"#conv-{acme} .conv-typing")).to_be_hidden()


def test_the_list_shows_typing_and_viewers_of_a_conversation_the_agent_has_not_open(
    server: InboxServer, login: Any
) -> None:
    acme, history = server.data["acme"]["conversation"], server.data["history"]["conversation"]
    bob = login("bob")
    open_conversation(bob.page, acme)
    alice = login("alice")  # loads after bob opened it: the list's snapshot shows him at once
    open_conversation(alice.page, history)
    row = alice.page.locator(f"#conv-{acme}")
    expect(row.locator(".viewers")).to_have_text("Bob Agent viewing")

    bob.page.locator("#composer-text").press_sequentially("On it", delay=20)
    expect(row.locator(".conv-typing")).to_be_visible()
    expect(row.locator(".conv-typing")).to_have_text("typing…")
    expect(row.locator(".conv-preview")).to_be_hidden()
    expect(alice.page.locator("#typing")).to_have_text("")  # her open thread is another one
    expect(alice.page.locator(f"#conv-{history} .conv-typing")).to_be_hidden()
    screenshot(alice.page, "desktop-list-row-typing")
    bob.page.locator("#composer-text").fill("")
    expect(row.locator(".conv-typing")).to_be_hidden()
    expect(row.locator(".conv-preview")).to_be_visible()

    # Bob moves to the other conversation: alice's rows follow him.
    open_conversation(bob.page, history)
    expect(row.locator(".viewers")).to_have_text("")
    expect(alice.page.locator(f"#conv-{history} .viewers")).to_have_text("Bob Agent viewing")


def test_after_a_server_restart_both_pages_reconnect_and_show_what_they_missed_once(
    server: InboxServer, login: Any
) -> None:
    acme = server.data["acme"]["conversation"]
    alice, bob = login("alice"), login("bob")
    for agent in (alice, bob):
        open_conversation(agent.page, acme)

    server.stop()
    for agent in (alice, bob):
        expect(agent.page.locator("#conn-badge")).to_have_text(re.compile("Reconnecting…|Offline"))
    screenshot(alice.page, "desktop-reconnecting")
    server.inbound("acme", "Sent while you were away", local=True)  # straight into the database
    server.start()

    for agent in (alice, bob):
        expect(agent.page.locator("#conn-badge")).to_have_text("Live", timeout=30_000)
        expect(bubbles(agent.page, "Sent while you were away", "in")).to_have_count(1)
    # And the socket is live again, not just replayed: a new message still arrives exactly once.
    bob.page.locator("#composer-text").fill("Back online")
    bob.page.keyboard.press("Enter")
    for agent in (alice, bob):
        expect(bubbles(agent.page, "Back online", "out")).to_have_count(1)
        expect(bubbles(agent.page, "Sent while you were away")).to_have_count(1)


def test_the_phone_layout_shows_the_list_or_the_thread(server: InboxServer, login: Any) -> None:
    acme = server.data["acme"]["conversation"]
    bob = login("bob", viewport={"width": 390, "height": 844})
    page = bob.page
    expect(page.locator(".pane-list")).to_be_visible()
    expect(page.locator(".pane-thread")).to_be_hidden()
    screenshot(page, "phone-list")
    open_conversation(page, acme)
    expect(page.locator(".pane-list")).to_be_hidden()
    expect(page.locator("#composer-text")).to_be_visible()
    page.locator("#composer-text").fill("Sent from a phone")
    page.keyboard.press("Enter")
    expect(bubbles(page, "Sent from a phone", "out")).to_have_count(1)
    expect(bubbles(page, "Sent from a phone", "out").locator(".ticks-read")).to_be_visible()
    screenshot(page, "phone-thread")
    page.get_by_label("Back to conversations").click()
    expect(page.locator(".pane-list")).to_be_visible()
    expect(page.locator(".pane-thread")).to_be_hidden()


def test_scrolling_up_loads_older_messages_and_new_ones_wait_behind_a_pill(server: InboxServer, login: Any) -> None:
    history = server.data["history"]["conversation"]
    bob = login("bob")
    page = bob.page
    open_conversation(page, history)
    expect(bubbles(page, "history 069")).to_be_visible()
    expect(page.locator(".msg")).to_have_count(40)
    page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
    expect(page.locator(".msg")).to_have_count(70)
    expect(bubbles(page, "history 000")).to_have_count(1)
    # One divider per day, in order, however the pages arrived.
    dates = page.locator(".day-divider").evaluate_all("els => els.map(e => e.dataset.date)")
    assert len(dates) == len(set(dates)) >= 3 and dates == sorted(dates)

    page.locator("#messages").evaluate("box => { box.scrollTop = box.scrollHeight / 3; }")
    server.inbound("history", "A new one while you read old ones")
    expect(page.locator("#new-pill")).to_be_visible()
    expect(page.locator("#new-pill")).to_have_text("1 new message ↓")
    screenshot(page, "desktop-new-messages-pill")
    page.locator("#new-pill").click()
    expect(page.locator("#new-pill")).to_be_hidden()
    expect(bubbles(page, "A new one while you read old ones")).to_be_in_viewport()


def test_status_and_assignee_changes_show_for_the_colleague(server: InboxServer, login: Any) -> None:
    acme = server.data["acme"]["conversation"]
    alice, bob = login("alice"), login("bob")
    open_conversation(alice.page, acme)
    alice.page.get_by_role("button", name="Assign to me").click()
    expect(alice.page.locator("#thread-header")).to_have_attribute("data-assignee", re.compile(r"^\d+$"))
    expect(bob.page.locator(f"#conv-{acme} .assignee")).to_contain_text("Alice Agent")
    bob.page.get_by_label("Mine", exact=True).check()  # bob's filter: his own conversations only
    expect(bob.page.locator(f"#conv-{acme}")).to_have_count(0)
    bob.page.get_by_label("All", exact=True).check()
    expect(bob.page.locator(f"#conv-{acme}")).to_have_count(1)

    alice.page.locator("#thread-header").get_by_role("button", name="Pending").click()
    expect(alice.page.locator("#thread-header")).to_have_attribute("data-status", "pending")
    expect(bob.page.locator(f"#conv-{acme}")).to_have_count(0)  # bob looks at the open tab
    bob.page.get_by_label("Pending", exact=True).check()
    expect(bob.page.locator(f"#conv-{acme}")).to_have_count(1)
    alice.page.locator("#thread-header").get_by_role("button", name="Open").click()
    expect(bob.page.locator(f"#conv-{acme}")).to_have_count(0)
    alice.page.get_by_label("Assignee").select_option(label="Bob Agent")
    alice.page.get_by_role("button", name="Assign", exact=True).click()
    expect(alice.page.get_by_label("Assignee").locator("option:checked")).to_have_text("Bob Agent")
    bob.page.get_by_label("Open", exact=True).check()
    expect(bob.page.locator(f"#conv-{acme} .assignee")).to_contain_text("Bob Agent")


def test_a_colleagues_change_does_not_undo_an_assignee_picked_but_not_yet_assigned(
    server: InboxServer, login: Any
) -> None:
    """The header refreshes on conversation:updated, except while it holds a choice the agent has not submitted."""
    acme = server.data["acme"]["conversation"]
    alice, bob = login("alice"), login("bob")
    open_conversation(alice.page, acme)
    open_conversation(bob.page, acme)
    alice.page.get_by_label("Assignee").select_option(label="Bob Agent")  # picked, Assign not clicked
    alice.page.locator("body").click(position={"x": 1, "y": 1})  # focus leaves the header
    bob.page.locator("#thread-header").get_by_role("button", name="Pending").click()
    expect(bob.page.locator("#thread-header")).to_have_attribute("data-status", "pending")
    # Bob's change reached Alice (her list row moved out of the open tab) while her pick stayed.
    expect(alice.page.locator(f"#conv-{acme}")).to_have_count(0)
    expect(alice.page.get_by_label("Assignee").locator("option:checked")).to_have_text("Bob Agent")
    alice.page.get_by_role("button", name="Assign", exact=True).click()
    expect(alice.page.locator("#thread-header")).to_have_attribute("data-status", "pending")  # the fresh header
    expect(alice.page.get_by_label("Assignee").locator("option:checked")).to_have_text("Bob Agent")
    # The server is shared by the module's tests: leave the conversation open, as the test before this one does.
    alice.page.locator("#thread-header").get_by_role("button", name="Open").click()
    expect(alice.page.locator("#thread-header")).to_have_attribute("data-status", "open")


def test_keyboard_moves_between_conversations_and_to_the_composer(server: InboxServer, login: Any) -> None:
    bob = login("bob")
    page = bob.page
    page.keyboard.press("Alt+ArrowDown")
    expect(page.locator("#thread")).to_be_visible()
    first = page.locator("#thread").get_attribute("data-conversation-id")
    page.keyboard.press("Alt+ArrowDown")
    expect(page.locator("#thread")).not_to_have_attribute("data-conversation-id", first or "")
    page.keyboard.press("Alt+ArrowUp")
    expect(page.locator("#thread")).to_have_attribute("data-conversation-id", first or "")
    page.keyboard.press("Alt+m")
    expect(page.locator("#composer-text")).to_be_focused()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.locator("#composer-text")).to_have_value("line one\nline two")


def _png(width: int = 4, height: int = 4) -> bytes:
    """A small valid PNG (solid green), made here so the test needs no fixture file."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x0b\x7a\x5a" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_reply_react_and_attach(server: InboxServer, login: Any) -> None:
    acme = server.data["acme"]["conversation"]
    alice, bob = login("alice"), login("bob")
    for agent in (alice, bob):
        open_conversation(agent.page, acme)
    page = alice.page
    original = bubbles(page, "Hello from Maria Acme", "in")

    original.hover()
    original.get_by_label("Reply to this message").click()
    expect(page.locator(".reply-preview")).to_contain_text("Hello from Maria Acme")
    page.locator("#composer-text").fill("Replying to your first message")
    page.keyboard.press("Enter")
    reply = bubbles(bob.page, "Replying to your first message", "out")
    expect(reply.locator(".quote")).to_contain_text("Hello from Maria Acme")

    original.hover()
    original.get_by_label("React to this message").click()
    original.get_by_label("React 👍").click()
    for agent in (alice, bob):
        expect(bubbles(agent.page, "Hello from Maria Acme", "in").locator(".reactions")).to_contain_text("👍")

    page.locator("#composer input[name=media]").set_input_files(
        {"name": "label.png", "mimeType": "image/png", "buffer": _png()}
    )
    expect(page.locator(".attachment-name")).to_have_text("label.png")
    page.locator("#composer-text").fill("Your shipping label")
    page.keyboard.press("Enter")
    for agent in (alice, bob):
        image = bubbles(agent.page, "Your shipping label", "out").locator("img.media-image")
        expect(image).to_be_visible()
        agent.page.wait_for_function("img => img.complete && img.naturalWidth === 4", arg=image.element_handle())
    screenshot(page, "desktop-reply-react-attach")


FAILED_DOWNLOAD = """
from inbox.models import Conversation, Direction, MediaState, Message
from inbox.whatsapp.sandbox import sandbox_media_store
from tenants.scoping import scopes_disabled
from tests.browser.test_inbox_browser import _png

with scopes_disabled():
    conversation = Conversation.objects.get(pk={conversation})
    message = Message.objects.create(
        tenant_id=conversation.tenant_id, conversation=conversation, number_id=conversation.number_id,
        direction=Direction.INBOUND, type="image", text="", wa_message_id="wamid.RETRY1",
        media_id=sandbox_media_store(_png(6, 6)), media_mime_type="image/png",
        media_state=MediaState.FAILED, media_error="Media too large",
    )
    print(message.pk)
"""


def test_a_failed_download_is_retried_from_its_bubble(server: InboxServer, login: Any) -> None:
    acme = server.data["acme"]["conversation"]
    message_id = server.manage("shell", "-c", FAILED_DOWNLOAD.format(conversation=acme)).split()[-1]
    alice, bob = login("alice"), login("bob")
    for agent in (alice, bob):
        open_conversation(agent.page, acme)
    bubble = alice.page.locator(f"#msg-{message_id}")
    expect(bubble.locator(".media-failed")).to_contain_text("could not be downloaded: Media too large")
    bubble.get_by_role("button", name="Retry download").click()  # an htmx post with the page's CSRF token
    for agent in (alice, bob):  # bob's page learns it over the socket (message:new)
        image = agent.page.locator(f"#msg-{message_id} img.media-image")
        expect(image).to_be_visible()
        agent.page.wait_for_function("img => img.complete && img.naturalWidth === 6", arg=image.element_handle())
        expect(agent.page.locator(f"#msg-{message_id}").get_by_role("button", name="Retry download")).to_have_count(0)
