/*
 * The inbox's real-time connection: one WebSocket per tab to /ws/tenants/<slug>/ speaking PROTOCOL.md v1.
 *
 * - Reconnects forever with exponential backoff and full jitter (a server restart does not get every tab back at
 *   the same instant), at once when the browser comes back online.
 * - After every (re)connect it sends `sync` from the last durable `seq` it applied, so each durable event is
 *   applied exactly once and in order: a frame is applied only when its seq is the next one; an older seq is a
 *   duplicate and dropped; a newer one means something is missing, so it is dropped and a `sync` replays it.
 * - A heartbeat (`ping`) notices a dead connection that the browser has not noticed.
 *
 * No framework, no build step: `window.InboxRealtime.connect({...})` returns the client.
 */
(function () {
  "use strict";

  var CLOSE_UNAUTHENTICATED = 4401;
  var CLOSE_FORBIDDEN = 4403;

  function RealtimeClient(options) {
    this.url = options.url;
    this.seq = Number(options.seq) || 0;
    this.onFrame = options.onFrame || function () {};
    this.onState = options.onState || function () {};
    this.onResync = options.onResync || function () { window.location.reload(); };
    this.minDelay = options.minDelay || 500;
    this.maxDelay = options.maxDelay || 30000;
    this.pingEvery = options.pingEvery || 25000;
    this.deadAfter = options.deadAfter || 60000;
    this.ws = null;
    this.attempt = 0;
    this.state = "offline";
    this.syncing = false;
    this.resyncWanted = false;
    this.stopped = false;
    this.timer = null;
    this.pingTimer = null;
    this.lastFrameAt = 0;
    this.joined = new Set();
    this.everLive = false;
    // options.activity: a function returning the conversation ids on screen. When given, the client asks for the
    // typing and viewers of every conversation of the tenant (activity:subscribe, docs/realtime.md), with a
    // snapshot of who views the listed ones, on every (re)connect.
    this.activityIds = options.activity || null;
  }

  RealtimeClient.prototype.start = function () {
    var self = this;
    window.addEventListener("online", function () { if (!self.ws && !self.stopped) { self.reconnectNow(); } });
    window.addEventListener("offline", function () { if (self.ws) { self.ws.close(); } });
    this.connect();
    return this;
  };

  RealtimeClient.prototype.setState = function (state, detail) {
    this.state = state;
    this.onState(state, detail || {});
  };

  RealtimeClient.prototype.connect = function () {
    var self = this;
    clearTimeout(this.timer);
    if (this.stopped) { return; }
    if (!("WebSocket" in window)) { this.setState("offline", { reason: "unsupported" }); return; }
    this.setState(this.everLive ? "reconnecting" : "connecting");
    var ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.syncing = false;
    ws.onopen = function () {
      self.lastFrameAt = Date.now();
      self.startHeartbeat();
    };
    ws.onmessage = function (event) {
      self.lastFrameAt = Date.now();
      var frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      if (frame && typeof frame.type === "string") { self.handle(frame); }
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) { return; }
      self.ws = null;
      self.stopHeartbeat();
      if (event.code === CLOSE_FORBIDDEN) {
        // Not a member (any more): nothing to reconnect to. A reload shows the page's own answer.
        self.stopped = true;
        self.setState("offline", { reason: "forbidden" });
        return;
      }
      if (event.code === CLOSE_UNAUTHENTICATED) {
        // The session ended: the page's next request goes to the login page.
        self.stopped = true;
        self.setState("offline", { reason: "unauthenticated" });
        return;
      }
      self.scheduleReconnect();
    };
  };

  RealtimeClient.prototype.scheduleReconnect = function () {
    var self = this;
    if (this.stopped) { return; }
    var ceiling = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt));
    var delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);  // "equal jitter": never 0, never in step
    this.attempt += 1;
    this.setState(navigator.onLine === false ? "offline" : "reconnecting", { retryIn: delay });
    this.timer = setTimeout(function () { self.connect(); }, delay);
  };

  RealtimeClient.prototype.reconnectNow = function () {
    this.attempt = 0;
    this.connect();
  };

  RealtimeClient.prototype.startHeartbeat = function () {
    var self = this;
    this.stopHeartbeat();
    this.pingTimer = setInterval(function () {
      if (!self.ws) { return; }
      if (Date.now() - self.lastFrameAt > self.deadAfter) {
        self.ws.close();  // half-open connection: onclose reconnects
        return;
      }
      self.send("ping", {});
    }, this.pingEvery);
  };

  RealtimeClient.prototype.stopHeartbeat = function () {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  };

  RealtimeClient.prototype.send = function (type, data) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) { return false; }
    this.ws.send(JSON.stringify({ type: type, data: data || {} }));
    return true;
  };

  RealtimeClient.prototype.requestSync = function () {
    if (this.syncing) { this.resyncWanted = true; return; }
    if (this.send("sync", { since: this.seq })) { this.syncing = true; this.resyncWanted = false; }
  };

  RealtimeClient.prototype.join = function (conversationId) {
    this.joined.add(conversationId);
    this.send("conversation:join", { conversation_id: conversationId });
  };

  RealtimeClient.prototype.leave = function (conversationId) {
    if (this.joined.delete(conversationId)) {
      this.send("conversation:leave", { conversation_id: conversationId });
    }
  };

  // Also later, with the ids of rows that appeared since (a filter, "load more"): their viewers' snapshot.
  RealtimeClient.prototype.subscribeActivity = function (conversationIds) {
    var ids = (conversationIds || this.activityIds() || []).map(Number).filter(function (id) { return id > 0; }).slice(0, 100);
    return this.send("activity:subscribe", { conversation_ids: ids });
  };

  RealtimeClient.prototype.handle = function (frame) {
    var self = this;
    if (frame.type === "hello") {
      this.attempt = 0;
      this.requestSync();
      this.joined.forEach(function (id) { self.send("conversation:join", { conversation_id: id }); });
      this.onFrame(frame);  // first: the page forgets the old socket's typing and viewers before the snapshot
      if (this.activityIds) { this.subscribeActivity(); }
      return;
    }
    if (frame.type === "sync:done") {
      this.syncing = false;
      if (!this.everLive || this.state !== "live") { this.everLive = true; this.setState("live"); }
      if (this.resyncWanted) { this.requestSync(); }
      this.onFrame(frame);
      return;
    }
    if (frame.type === "error" && frame.data && frame.data.code === "sync_gap") {
      // Events after our seq were pruned: the page reloads its state over plain HTTP.
      this.syncing = false;
      this.stopped = true;
      if (this.ws) { this.ws.close(); }
      this.onResync(frame);
      return;
    }
    if (frame.type === "error" && frame.data && frame.data.ref === "sync") {
      if (frame.data.code === "sync_in_progress") {
        this.resyncWanted = true;  // the running sync ends with sync:done, which asks again
      } else {
        this.syncing = false;  // the server could not replay: ask again in a moment
        setTimeout(function () { self.requestSync(); }, 1000);
      }
    }
    if (frame.seq !== null && frame.seq !== undefined) {
      var seq = Number(frame.seq);
      if (seq <= this.seq) { return; }  // already applied (replayed and live copies of one event)
      if (seq !== this.seq + 1) {
        this.requestSync();  // something is missing: the log replays it, in order
        return;
      }
      this.seq = seq;
    }
    this.onFrame(frame);
  };

  window.InboxRealtime = {
    connect: function (options) { return new RealtimeClient(options).start(); },
    Client: RealtimeClient
  };
})();
