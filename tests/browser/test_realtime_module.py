"""static/js/realtime.js on its own, in Chromium, against a scripted fake WebSocket: the protocol rules the page
relies on (exactly once and in order by seq, sync after every reconnect, backoff with jitter, close codes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.procs import ROOT

pytestmark = [pytest.mark.browser]

FAKE_SOCKET = """
window.sockets = [];
window.FakeSocket = class {
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = []; this.createdAt = performance.now();
    window.sockets.push(this);
    setTimeout(() => { this.readyState = 1; if (this.onopen) { this.onopen(); } }, 0);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code) { this.drop(code || 1000); }
  drop(code) { if (this.readyState === 3) { return; } this.readyState = 3; if (this.onclose) { this.onclose({ code }); } }
  deliver(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
};
window.FakeSocket.OPEN = 1;
window.WebSocket = window.FakeSocket;
window.sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
window.until = async (check) => { for (let i = 0; i < 200 && !check(); i++) { await window.sleep(5); } return check(); };
window.durable = (seq, id) => ({ type: "message:new", seq, ts: "2026-01-01T00:00:00Z", data: { id } });
window.start = (seq) => {
  window.applied = []; window.states = []; window.resynced = 0;
  return window.InboxRealtime.connect({
    url: "ws://inbox.test/ws/tenants/acme/", seq,
    onFrame: (f) => window.applied.push(f), onState: (s) => window.states.push(s),
    onResync: () => { window.resynced += 1; }, minDelay: 20, maxDelay: 160,
  });
};
"""


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_content("<!doctype html><title>realtime</title>")
    page.add_script_tag(content=FAKE_SOCKET)
    page.add_script_tag(path=str(ROOT / "static" / "js" / "realtime.js"))
    yield page
    context.close()


def run(page: Page, script: str) -> Any:
    return page.evaluate(f"async () => {{ {script} }}")


def test_it_applies_each_durable_event_once_and_in_order(page: Page) -> None:
    result = run(
        page,
        """
        start(5);
        await until(() => sockets.length === 1 && sockets[0].readyState === 1);
        const ws = sockets[0];
        ws.deliver({ type: "hello", seq: null, data: { seq: 7, online_user_ids: [1] } });
        const firstSync = ws.sent[0];
        ws.deliver(durable(8, 80));   // live, ahead of the replay: dropped, replayed later
        ws.deliver(durable(6, 60));
        ws.deliver(durable(7, 70));
        ws.deliver(durable(6, 60));   // a duplicate
        ws.deliver(durable(8, 80));
        ws.deliver({ type: "sync:done", seq: null, data: { seq: 8 } });
        ws.deliver({ type: "typing:start", seq: null, data: { conversation_id: 1 } });
        ws.deliver(durable(8, 80));
        return { firstSync, sent: ws.sent, seqs: applied.map((f) => f.seq), types: applied.map((f) => f.type),
                 states };
        """,
    )
    assert result["firstSync"] == {"type": "sync", "data": {"since": 5}}
    assert result["seqs"] == [None, 6, 7, 8, None, None]
    assert result["types"] == ["hello", "message:new", "message:new", "message:new", "sync:done", "typing:start"]
    # The frame that arrived ahead of its turn asked for one more sync, from the last seq applied.
    assert result["sent"][1:] == [{"type": "sync", "data": {"since": 8}}]
    assert result["states"][-1] == "live"


def test_it_reconnects_with_growing_jittered_delays_and_resumes_from_the_last_seq(page: Page) -> None:
    result = run(
        page,
        """
        start(0);
        await until(() => sockets.length === 1 && sockets[0].readyState === 1);
        sockets[0].deliver({ type: "hello", seq: null, data: { seq: 2 } });
        sockets[0].deliver(durable(1, 10));
        sockets[0].deliver(durable(2, 20));
        sockets[0].deliver({ type: "sync:done", seq: null, data: { seq: 2 } });
        const gaps = [];
        for (let n = 1; n <= 4; n++) {           // the server is down: every attempt fails at once
          const before = performance.now();
          sockets[n - 1].drop(1006);
          await until(() => sockets.length === n + 1);
          gaps.push(sockets[n].createdAt - before);
        }
        await until(() => sockets[4].readyState === 1);
        sockets[4].deliver({ type: "hello", seq: null, data: { seq: 3 } });
        const resume = sockets[4].sent[0];
        sockets[4].deliver(durable(3, 30));
        sockets[4].deliver({ type: "sync:done", seq: null, data: { seq: 3 } });
        return { gaps, resume, states, ids: applied.filter((f) => f.seq).map((f) => f.data.id) };
        """,
    )
    # Equal jitter: attempt n waits between half and all of min(160, 20 * 2**n) ms.
    for n, gap in enumerate(result["gaps"]):
        ceiling = min(160, 20 * 2**n)
        assert ceiling / 2 - 5 <= gap <= ceiling + 60, (n, gap)
    assert result["resume"] == {"type": "sync", "data": {"since": 2}}
    assert result["ids"] == [10, 20, 30]
    assert "reconnecting" in result["states"] and result["states"][-1] == "live"


def test_it_stops_on_4403_and_reloads_state_on_a_sync_gap(page: Page) -> None:
    result = run(
        page,
        """
        start(0);
        await until(() => sockets.length === 1 && sockets[0].readyState === 1);
        sockets[0].drop(4403);
        await sleep(100);
        const afterForbidden = { sockets: sockets.length, state: states[states.length - 1] };
        start(0);
        await until(() => sockets.length === 2 && sockets[1].readyState === 1);
        sockets[1].deliver({ type: "hello", seq: null, data: { seq: 9000 } });
        sockets[1].deliver({ type: "error", seq: null, data: { code: "sync_gap", ref: "sync" } });
        await sleep(100);
        return { afterForbidden, resynced, sockets: sockets.length };
        """,
    )
    assert result["afterForbidden"] == {"sockets": 1, "state": "offline"}
    assert result["resynced"] == 1 and result["sockets"] == 2


def test_it_rejoins_the_open_conversation_after_a_reconnect(page: Page) -> None:
    result = run(
        page,
        """
        const rt = start(0);
        rt.join(42);                             // before the socket is open: remembered, sent on hello
        await until(() => sockets.length === 1 && sockets[0].readyState === 1);
        sockets[0].deliver({ type: "hello", seq: null, data: { seq: 0 } });
        const first = sockets[0].sent.map((f) => f.type);
        sockets[0].drop(1006);
        await until(() => sockets.length === 2 && sockets[1].readyState === 1);
        sockets[1].deliver({ type: "hello", seq: null, data: { seq: 0 } });
        return { first, second: sockets[1].sent };
        """,
    )
    assert result["first"] == ["sync", "conversation:join"]
    assert {"type": "conversation:join", "data": {"conversation_id": 42}} in result["second"]
