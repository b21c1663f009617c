/*
 * The inbox page's behaviour: composer, scrolling, keyboard shortcuts, and applying real-time frames.
 *
 * The server renders every piece of HTML (htmx partials); a frame only says *what* changed, and this module fetches
 * the partial for it (a bubble, a list row, the thread header) and puts it in place, keyed by id, so that a
 * message arriving twice (over the socket and as the composer's response, or replayed after a reconnect) is shown
 * once. Without a WebSocket, every action still works by plain requests.
 */
(function () {
  "use strict";

  var app = null;
  var rt = null;
  var online = new Set();
  var me = 0;
  var lastReadPosted = {};
  var unseenBelow = 0;
  var hiddenNew = 0;
  var typingTimers = {};
  var typingNames = {};
  var fetchChains = {};
  var lastTypingSent = 0;
  var typingStopTimer = null;
  var seenMessageIds = new Set();
  var pageLoadedAt = Date.now();
  var clockOffset = 0;  // server time minus this browser's time, from `hello`

  var STATUS_LABEL = { pending: "Sending", sent: "Sent", delivered: "Delivered", read: "Read", failed: "Failed" };

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"]; } catch (err) { return ""; }
  }

  function fromHTML(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function activate(el) {
    if (window.htmx && el) { window.htmx.process(el); }
    localizeTimes(el);
    return el;
  }

  function getHTML(url) {
    return fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" }).then(function (response) {
      if (response.status === 204) { return null; }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    });
  }

  // Requests about one object run one after another, so a later answer is never overwritten by an earlier one.
  function chained(key, task) {
    var previous = fetchChains[key] || Promise.resolve();
    var next = previous.catch(function () {}).then(task);
    fetchChains[key] = next;
    var cleanup = function () { if (fetchChains[key] === next) { delete fetchChains[key]; } };
    next.then(cleanup, cleanup);  // callers handle the failure; this branch must not be an unhandled rejection
    return next;
  }

  function currentThread() { return $("#thread"); }
  function openConversationId() {
    var thread = currentThread();
    return thread ? Number(thread.dataset.conversationId) : null;
  }
  function messagesBox() { return $("#messages"); }

  // --- Times and dividers ------------------------------------------------------------------------------------------

  function sameDay(a, b) { return a.toDateString() === b.toDateString(); }

  function localizeTimes(root) {
    var now = new Date();
    $all("time[data-fmt]", root && root.querySelectorAll ? root : document).forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) { return; }
      var fmt = el.dataset.fmt;
      var time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      if (fmt === "time") { el.textContent = time; }
      else if (fmt === "short") {
        el.textContent = sameDay(when, now) ? time : when.toLocaleDateString([], { day: "numeric", month: "short" });
      } else { el.textContent = when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }); }
      el.title = when.toLocaleString();
    });
  }

  function dayLabel(isoDate) {
    var parts = isoDate.split("-").map(Number);
    var day = new Date(parts[0], parts[1] - 1, parts[2]);
    var today = new Date();
    var yesterday = new Date(); yesterday.setDate(today.getDate() - 1);
    if (sameDay(day, today)) { return "Today"; }
    if (sameDay(day, yesterday)) { return "Yesterday"; }
    return day.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long", year: "numeric" });
  }

  // The day of a message in this browser's time zone (the server renders UTC days for the page without script).
  function localDate(msg) {
    var when = new Date(msg.dataset.ts);
    if (isNaN(when)) { return msg.dataset.date; }
    return when.getFullYear() + "-" + String(when.getMonth() + 1).padStart(2, "0") + "-" + String(when.getDate()).padStart(2, "0");
  }

  // One divider before the first message of each day, whatever order pages and live messages arrived in.
  function fixDividers() {
    var box = messagesBox();
    if (!box) { return; }
    $all(".day-divider", box).forEach(function (d) { d.remove(); });
    var previous = null;
    $all(".msg", box).forEach(function (msg) {
      var date = localDate(msg);
      if (date && date !== previous) {
        var divider = document.createElement("div");
        divider.className = "day-divider";
        divider.dataset.date = date;
        var span = document.createElement("span");
        span.textContent = dayLabel(date);
        divider.appendChild(span);
        msg.parentNode.insertBefore(divider, msg);
      }
      previous = date;
    });
  }

  // --- Scrolling ---------------------------------------------------------------------------------------------------

  function atBottom() {
    var box = messagesBox();
    return !box || box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToBottom() {
    var box = messagesBox();
    if (box) { box.scrollTop = box.scrollHeight; }
    unseenBelow = 0;
    var pill = $("#new-pill");
    if (pill) { pill.hidden = true; }
  }

  function showNewPill() {
    var pill = $("#new-pill");
    if (!pill) { return; }
    unseenBelow += 1;
    pill.textContent = unseenBelow === 1 ? "1 new message ↓" : unseenBelow + " new messages ↓";
    pill.hidden = false;
  }

  // --- Bubbles -----------------------------------------------------------------------------------------------------

  function bubbleKey(el) { return [el.dataset.ts || "", Number(el.dataset.id || Infinity)]; }

  function insertInOrder(el) {
    var box = messagesBox();
    var key = bubbleKey(el);
    var bubbles = $all(".msg", box);
    for (var i = bubbles.length - 1; i >= 0; i--) {
      var other = bubbleKey(bubbles[i]);
      if (other[0] < key[0] || (other[0] === key[0] && other[1] <= key[1])) {
        bubbles[i].after(el);
        return;
      }
    }
    var older = $(".load-older", box);
    if (older) { older.after(el); } else { box.prepend(el); }
  }

  // Put a rendered bubble in place: replace the same message (by id) or its pending copy (by client id).
  function upsertBubble(html, options) {
    var el = fromHTML(html);
    var box = messagesBox();
    if (!el || !box || Number(el.dataset.conversationId) !== openConversationId()) { return null; }
    var existing = document.getElementById(el.id);
    if (!existing && el.dataset.clientId) {
      existing = $all(".msg", box).find(function (m) { return m.dataset.clientId === el.dataset.clientId; }) || null;
    }
    if (!existing && $(".load-older", box)) {
      // Older than everything loaded (a reaction on an old message, say): it shows when the agent scrolls back.
      var first = $(".msg[data-id]", box);
      var key = bubbleKey(el);
      var firstKey = first ? bubbleKey(first) : null;
      if (firstKey && (key[0] < firstKey[0] || (key[0] === firstKey[0] && key[1] < firstKey[1]))) { return null; }
    }
    var wasAtBottom = atBottom();
    if (existing) {
      existing.replaceWith(el);
    } else {
      insertInOrder(el);
      fixDividers();
      if ((options && options.own) || wasAtBottom) { scrollToBottom(); } else { showNewPill(); }
    }
    activate(el);
    if (options && options.own) { scrollToBottom(); }
    markReadSoon();
    return el;
  }

  function refreshBubble(messageId) {
    var thread = currentThread();
    if (!thread) { return Promise.resolve(); }
    var url = thread.dataset.messageUrlTemplate.replace(/0\/$/, messageId + "/");
    return chained("msg-" + messageId, function () {
      return getHTML(url).then(function (html) { if (html) { upsertBubble(html); } });
    }).catch(function () {});
  }

  function pendingBubble(clientId, text, replyText) {
    var el = document.createElement("article");
    el.className = "msg msg-out is-pending";
    el.dataset.clientId = clientId;
    el.dataset.status = "pending";
    el.dataset.direction = "out";
    el.dataset.conversationId = String(openConversationId());
    var now = new Date();
    el.dataset.ts = now.toISOString().replace(/\.\d{3}Z$/, "Z");
    el.dataset.date = now.getFullYear() + "-" + String(now.getMonth() + 1).padStart(2, "0") + "-" + String(now.getDate()).padStart(2, "0");
    var bubble = document.createElement("div");
    bubble.className = "bubble";
    if (replyText) {
      var quote = document.createElement("span");
      quote.className = "quote";
      quote.textContent = replyText;
      bubble.appendChild(quote);
    }
    var body = document.createElement("p");
    body.className = "body";
    body.textContent = text;
    bubble.appendChild(body);
    var meta = document.createElement("p");
    meta.className = "meta";
    var time = document.createElement("time");
    time.textContent = now.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    var ticks = document.createElement("span");
    ticks.className = "ticks ticks-pending";
    ticks.setAttribute("role", "img");
    ticks.setAttribute("aria-label", STATUS_LABEL.pending);
    ticks.textContent = "◷";
    meta.appendChild(time);
    meta.appendChild(ticks);
    bubble.appendChild(meta);
    el.appendChild(bubble);
    messagesBox().appendChild(el);
    fixDividers();
    scrollToBottom();
    return el;
  }

  // --- Read markers ------------------------------------------------------------------------------------------------

  var markReadTimer = null;
  function markReadSoon() {
    clearTimeout(markReadTimer);
    markReadTimer = setTimeout(markRead, 300);
  }

  function markRead() {
    var thread = currentThread();
    if (!thread || document.hidden || !atBottom()) { return; }
    var ids = $all(".msg[data-id]", messagesBox()).map(function (m) { return Number(m.dataset.id); }).filter(Boolean);
    if (!ids.length) { return; }
    var last = Math.max.apply(null, ids);
    var conversationId = openConversationId();
    if (lastReadPosted[conversationId] >= last) { return; }
    lastReadPosted[conversationId] = last;
    var body = new FormData();
    body.append("message_id", String(last));
    fetch(thread.dataset.readUrl, {
      method: "POST", body: body, credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() }
    }).then(function () {
      // The row's badge: the server's count is the truth (the message:read frame refreshes it too).
      var row = document.getElementById("conv-" + conversationId);
      if (row) { refreshRow(conversationId); }
    }).catch(function () { lastReadPosted[conversationId] = 0; });
  }

  // --- Conversation list -------------------------------------------------------------------------------------------

  function filterQuery() {
    var list = $("#conversation-list");
    var form = $("#filters");
    if (form) { return new URLSearchParams(new FormData(form)).toString(); }
    return list ? list.dataset.filterQuery : "";
  }

  function placeRow(row) {
    var list = $("#conversation-list");
    var activity = row.dataset.activity || "";
    var rows = $all(".conv-row", list).filter(function (r) { return r !== row; });
    var before = rows.find(function (r) {
      var other = r.dataset.activity || "";
      return other < activity || (other === activity && Number(r.dataset.conversationId) < Number(row.dataset.conversationId));
    });
    if (before) { list.insertBefore(row, before); } else { list.appendChild(row); }
    var empty = $(".empty-list", list);
    if (empty) { empty.remove(); }
  }

  function refreshRow(conversationId) {
    var base = app.dataset.baseUrl + "conversations/" + conversationId + "/row/";
    return chained("row-" + conversationId, function () {
      var query = filterQuery();
      return getHTML(base + "?" + query).then(function (html) {
        if (query !== filterQuery()) {
          // The agent changed tab or filter while this was on its way: the answer is for the old list. Ask again.
          window.setTimeout(function () { refreshRow(conversationId); }, 0);
          return;
        }
        var existing = document.getElementById("conv-" + conversationId);
        if (!html) { if (existing) { existing.remove(); } updateTitle(); return; }
        var row = fromHTML(html);
        if (Number(conversationId) === openConversationId()) { markActive(row); }
        if (existing) { existing.replaceWith(row); }
        placeRow(row);
        activate(row);
        renderActivity(row);
        if (!existing) { snapshotNewRowsSoon(); }
        updatePresence();
        updateTitle();
      });
    }).catch(function () {});
  }

  function markActive(row) {
    row.classList.add("active");
    var link = row.querySelector(".conv-link");
    if (link) { link.setAttribute("aria-current", "true"); }
  }

  function setActiveRow(conversationId) {
    $all(".conv-row").forEach(function (row) {
      var active = Number(row.dataset.conversationId) === conversationId;
      row.classList.toggle("active", active);
      var link = row.querySelector(".conv-link");
      if (link) { if (active) { link.setAttribute("aria-current", "true"); } else { link.removeAttribute("aria-current"); } }
    });
  }

  function updateTitle() {
    var total = $all(".conv-row").reduce(function (sum, row) { return sum + (Number(row.dataset.unread) || 0); }, 0);
    total = Math.max(total, hiddenNew);
    var base = "Inbox · " + (app ? app.dataset.tenantName : "");
    document.title = total > 0 ? "(" + total + ") " + base : base;
  }

  // --- Thread header, window countdown --------------------------------------------------------------------------

  // A choice the agent made in the header and has not submitted yet (e.g. an assignee picked, Assign not clicked).
  function unsaved(root) {
    return $all("select", root).some(function (select) {
      var options = Array.prototype.slice.call(select.options);
      // Without a default (the assignee left the team) the browser shows the first option: nothing was chosen.
      return options.some(function (o) { return o.defaultSelected; }) &&
        options.some(function (o) { return o.selected !== o.defaultSelected; });
    });
  }

  function refreshHeader() {
    var thread = currentThread();
    if (!thread) { return; }
    var conversationId = openConversationId();
    chained("header-" + conversationId, function () {
      return getHTML(thread.dataset.headerUrl).then(function (html) {
        var header = $("#thread-header");
        if (!html || !header || openConversationId() !== conversationId) { return; }
        var el = fromHTML(html);
        if (header.contains(document.activeElement) || unsaved(header)) { return; }  // do not pull a control from under the agent
        header.replaceWith(el);
        activate(el);
        tickWindow();
      });
    }).catch(function () {});
  }

  function tickWindow() {
    var el = $(".window[data-expires]");
    if (!el || !el.dataset.expires) { return; }
    var left = new Date(el.dataset.expires) - new Date();
    var composer = $("#composer");
    if (left <= 0) {
      el.textContent = "24-hour window closed: templates only";
      el.classList.remove("window-open"); el.classList.add("window-closed");
      if (composer && composer.dataset.windowOpen === "1" && !composer.dataset.reloading) {
        composer.dataset.reloading = "1";
        reloadThread();  // the composer becomes the template picker
      }
      return;
    }
    var hours = Math.floor(left / 3600000);
    var minutes = Math.floor((left % 3600000) / 60000);
    el.textContent = "Reply window: " + (hours ? hours + "h " : "") + minutes + "m left";
    el.classList.add("window-open"); el.classList.remove("window-closed");
    if (composer && composer.dataset.windowOpen === "0" && !composer.dataset.reloading) {
      composer.dataset.reloading = "1";
      reloadThread();  // the customer wrote again: free text is allowed again
    }
  }

  function reloadThread() {
    var thread = currentThread();
    if (!thread || !window.htmx) { return; }
    var url = thread.dataset.headerUrl.replace("?part=header", "") + "?" + filterQuery();
    window.htmx.ajax("GET", url, { target: "#thread-pane", swap: "innerHTML" });
  }

  // --- Typing ------------------------------------------------------------------------------------------------------

  function showTyping(data, on) {
    var key = data.conversation_id + ":" + data.user_id;
    clearTimeout(typingTimers[key]);
    if (on) {
      typingTimers[key] = setTimeout(function () { showTyping(data, false); }, Number(data.expires_in) || 6000);
    } else {
      delete typingTimers[key];
    }
    typingNames[key] = data.name || typingNames[key] || memberName(data.user_id);
    if (!on) { delete typingNames[key]; }
    var row = document.getElementById("conv-" + data.conversation_id);
    if (row) { renderRowTyping(row); }
    if (Number(data.conversation_id) === openConversationId()) {
      var box = $("#typing");
      if (box) {
        if (on) { box.dataset["u" + data.user_id] = data.name || "Someone"; } else { delete box.dataset["u" + data.user_id]; }
        var names = Object.keys(box.dataset).filter(function (k) { return /^u\d+$/.test(k); }).map(function (k) { return box.dataset[k]; });
        box.textContent = names.length ? names.join(", ") + (names.length > 1 ? " are typing…" : " is typing…") : "";
      }
    }
  }

  function renderRowTyping(row) {
    var prefix = row.dataset.conversationId + ":";
    var names = Object.keys(typingTimers).filter(function (k) { return k.indexOf(prefix) === 0; })
      .map(function (k) { return typingNames[k] || "Someone"; });
    row.classList.toggle("is-typing", names.length > 0);
    var marker = row.querySelector(".conv-typing");
    if (marker) {
      marker.hidden = names.length === 0;
      marker.title = names.join(", ");
    }
  }

  function sendTyping() {
    var conversationId = openConversationId();
    if (!rt || !conversationId) { return; }
    var now = Date.now();
    if (now - lastTypingSent > 2000) {
      rt.send("typing:start", { conversation_id: conversationId });
      lastTypingSent = now;
    }
    clearTimeout(typingStopTimer);
    typingStopTimer = setTimeout(stopTyping, 4000);
  }

  function stopTyping() {
    clearTimeout(typingStopTimer);
    var conversationId = openConversationId();
    if (rt && conversationId && lastTypingSent) {
      rt.send("typing:stop", { conversation_id: conversationId });
    }
    lastTypingSent = 0;
  }

  // --- Presence, viewers -------------------------------------------------------------------------------------------

  function updatePresence() {
    $all("[data-presence-user]").forEach(function (dot) {
      var isOnline = online.has(Number(dot.dataset.presenceUser));
      dot.classList.toggle("online", isOnline);
      dot.title = isOnline ? "Online" : "Offline";
    });
    $all("[data-presence-text]").forEach(function (el) {
      el.textContent = online.has(Number(el.dataset.presenceText)) ? " (online)" : " (offline)";
    });
  }

  var viewersByConversation = {};

  function showViewers(data) {
    viewersByConversation[data.conversation_id] = data.user_ids || [];
    renderViewers(data.conversation_id);
  }

  function renderViewers(conversationId) {
    var el = $('[data-viewers-for="' + conversationId + '"]');
    if (!el) { return; }
    var others = (viewersByConversation[conversationId] || []).filter(function (id) { return Number(id) !== me; });
    var names = others.map(memberName);
    el.textContent = names.length ? names.join(", ") + " viewing" : "";
    el.title = names.length ? names.join(", ") + (names.length > 1 ? " have" : " has") + " this conversation open" : "";
  }

  function memberName(userId) {
    var option = $('#team-names option[data-user-id="' + Number(userId) + '"]');
    return option ? option.value : "an agent";
  }

  // --- The list follows every conversation's typing and viewers (activity:subscribe) ------------------------------

  var snapshotted = new Set();  // rows whose current viewers this socket has asked for
  var snapshotTimer = null;

  var SNAPSHOT_MAX = 100;  // ids per activity:subscribe (the server's limit)

  function rowsWithoutSnapshot() {
    return $all(".conv-row").map(function (row) { return Number(row.dataset.conversationId); })
      .filter(function (id) { return id > 0 && !snapshotted.has(id); });
  }

  // Called by the realtime client on every (re)connect, after `hello` reset what was known.
  function listedConversationIds() {
    var ids = rowsWithoutSnapshot();
    if (ids.length > SNAPSHOT_MAX) { snapshotNewRowsSoon(); }  // the rest in the next subscribe
    ids = ids.slice(0, SNAPSHOT_MAX);
    ids.forEach(function (id) { snapshotted.add(id); });
    return ids;
  }

  // Rows that appeared after the subscription (filters, "load more", a conversation moving into the list): ask
  // for their viewers once; changes after that arrive live anyway.
  function snapshotNewRowsSoon() {
    clearTimeout(snapshotTimer);
    snapshotTimer = setTimeout(function () {
      var fresh = rowsWithoutSnapshot().slice(0, SNAPSHOT_MAX);
      if (!rt || !fresh.length || !rt.subscribeActivity(fresh)) { return; }  // not connected: hello will ask
      fresh.forEach(function (id) { snapshotted.add(id); });
      snapshotNewRowsSoon();
    }, 300);
  }

  function forgetActivity() {
    snapshotted = new Set();
    viewersByConversation = {};
    Object.keys(typingTimers).forEach(function (key) {
      var parts = key.split(":");
      showTyping({ conversation_id: Number(parts[0]), user_id: Number(parts[1]) }, false);
    });
    $all("[data-viewers-for]").forEach(function (el) { el.textContent = ""; el.title = ""; });
  }

  // Rows rendered again by the server start blank: put back what the socket has told.
  function renderActivity(root) {
    var rows = root && root.classList && root.classList.contains("conv-row") ? [root] : $all(".conv-row", root);
    rows.forEach(function (row) {
      var id = row.dataset.conversationId;
      renderViewers(id);
      renderRowTyping(row);
    });
  }

  // --- Toasts and notifications ------------------------------------------------------------------------------------

  function toast(title, text, onClick) {
    var box = $("#toasts");
    if (!box) { return; }
    var el = document.createElement("button");
    el.type = "button";
    el.className = "toast";
    var strong = document.createElement("strong");
    strong.textContent = title;
    el.appendChild(strong);
    el.appendChild(document.createTextNode(text));
    el.addEventListener("click", function () { el.remove(); if (onClick) { onClick(); } });
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 6000);
    while (box.children.length > 4) { box.firstElementChild.remove(); }
  }

  function openConversation(conversationId) {
    var link = $("#conv-" + conversationId + " .conv-link");
    if (link) { link.click(); return; }
    window.location.href = app.dataset.baseUrl + "conversations/" + conversationId + "/";
  }

  function notify(title, text, conversationId) {
    if (!("Notification" in window) || Notification.permission !== "granted") { return; }
    try {
      var n = new Notification(title, { body: text, tag: "conversation-" + conversationId });
      n.onclick = function () { window.focus(); openConversation(conversationId); n.close(); };
    } catch (err) { /* some browsers only allow notifications from a service worker */ }
  }

  function contactName(conversationId) {
    var name = $("#conv-" + conversationId + " .conv-name");
    return name ? name.textContent : "New message";
  }

  function messagePreview(message) {
    if (message.text) { return message.text.slice(0, 120); }
    return { image: "📷 Photo", video: "🎥 Video", audio: "🎤 Audio", document: "📄 Document", location: "📍 Location",
      contacts: "👤 Contact", sticker: "Sticker" }[message.type] || "New message";
  }

  // --- Frames ------------------------------------------------------------------------------------------------------

  // While a thread is being fetched, its message frames are kept and applied once it is shown: a message that
  // committed after the server rendered the thread but arrived before the swap is not lost.
  var loadingConversation = null;
  var framesWhileLoading = [];

  function onFrame(frame) {
    var data = frame.data || {};
    if (loadingConversation && (frame.type === "message:new" || frame.type === "message:status") &&
        Number(data.conversation_id) === loadingConversation) {
      framesWhileLoading.push(frame.type === "message:new" ? data.id : data.message_id);
    }
    switch (frame.type) {
      case "hello":
        if (data.server_time) { clockOffset = Date.parse(data.server_time) - Date.now() || 0; }
        forgetActivity();  // a new socket: the subscription that follows sends a fresh snapshot
        online = new Set((data.online_user_ids || []).map(Number));
        updatePresence();
        break;
      case "message:new": {
        var isOpen = Number(data.conversation_id) === openConversationId();
        if (isOpen) { refreshBubble(data.id); }
        // A reaction, edit or deletion re-sends its (older) message as message:new: only new arrivals alert.
        var firstTime = !seenMessageIds.has(data.id) && Date.parse(data.created_at) - clockOffset > pageLoadedAt - 60000;
        seenMessageIds.add(data.id);
        if (firstTime && data.direction === "in" && data.type !== "reaction") {
          var title = contactName(data.conversation_id);
          if (!isOpen) {
            toast(title, messagePreview(data), function () { openConversation(data.conversation_id); });
          }
          if (document.hidden) {
            hiddenNew += 1;
            updateTitle();
            notify(title, messagePreview(data), data.conversation_id);
          }
        }
        break;
      }
      case "message:status":
        if (Number(data.conversation_id) === openConversationId() && (document.getElementById("msg-" + data.message_id) ||
            (data.client_id && $all(".msg.is-pending").some(function (m) { return m.dataset.clientId === data.client_id; })))) {
          refreshBubble(data.message_id);
        }
        var row = document.getElementById("conv-" + data.conversation_id);
        if (row) { refreshRow(data.conversation_id); }
        break;
      case "message:read":
        if (Number(data.user_id) === me) { refreshRow(data.conversation_id); }
        break;
      case "conversation:updated":
        refreshRow(data.id);
        if (Number(data.id) === openConversationId()) { refreshHeader(); }
        break;
      case "typing:start":
        if (Number(data.user_id) !== me) { showTyping(data, true); }
        break;
      case "typing:stop":
        if (Number(data.user_id) !== me) { showTyping(data, false); }
        break;
      case "user:online":
        online.add(Number(data.user_id));
        updatePresence();
        break;
      case "user:offline":
        online.delete(Number(data.user_id));
        updatePresence();
        break;
      case "conversation:viewers":
        showViewers(data);
        break;
      default:
        break;
    }
  }

  function onState(state, detail) {
    var badge = $("#conn-badge");
    if (!badge) { return; }
    var labels = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline" };
    badge.textContent = labels[state] || state;
    badge.dataset.state = state;
    badge.className = "conn-badge conn-" + (state === "connecting" ? "reconnecting" : state);
    badge.title = detail && detail.reason === "unauthenticated" ? "Signed out: reload the page" : "";
    if (detail && detail.reason === "unauthenticated") { toast("Signed out", "Reload the page to sign in again."); }
    if (detail && detail.reason === "forbidden") { toast("No access", "You are no longer a member of this inbox."); }
    if (state !== "live") { online = new Set(); updatePresence(); }
  }

  // --- Composer ----------------------------------------------------------------------------------------------------

  function newClientId() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    return "c" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
  }

  function composerErrors(form, html) {
    var box = form.querySelector(".composer-errors");
    if (!box) { return; }
    box.innerHTML = "";
    if (html) {
      var el = fromHTML(html);
      if (el) { box.appendChild(el); }
    }
  }

  function setReply(form, messageId, text) {
    form.elements.reply_to.value = messageId || "";
    var preview = form.querySelector(".reply-preview");
    if (!preview) { return; }
    preview.hidden = !messageId;
    preview.querySelector(".reply-preview-text").textContent = messageId ? "Replying to: " + text : "";
  }

  // Capture phase on the document: runs before htmx's own submit handler on the form.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || form.id !== "composer") { return; }
    var text = form.elements.text ? form.elements.text.value.trim() : "";
    var file = form.elements.media && form.elements.media.files.length ? form.elements.media.files[0] : null;
    var isTemplate = !!form.elements.template;
    if (!text && !file && !isTemplate) {
      event.preventDefault();
      event.stopPropagation();
      return;
    }
    // A retry of a send whose answer was lost keeps its client id: the server then returns the same message.
    var clientId = form.dataset.retryClientId && form.dataset.retryText === text ? form.dataset.retryClientId : newClientId();
    delete form.dataset.retryClientId;
    form.elements.client_id.value = clientId;
    form.dataset.pendingText = text;
    if (!window.htmx) { return; }  // plain form post
    var replyPreview = form.querySelector(".reply-preview-text");
    var label = isTemplate ? "Template: " + form.elements.template.selectedOptions[0].textContent : (file ? "📎 " + file.name + (text ? " — " + text : "") : text);
    pendingBubble(clientId, label, form.elements.reply_to.value && replyPreview ? replyPreview.textContent : "");
    composerErrors(form, "");
    stopTyping();
  }, true);

  document.addEventListener("htmx:beforeRequest", function (event) {
    var target = event.detail.target;
    if (target && target.id === "thread-pane") {
      var match = /\/conversations\/(\d+)\//.exec(event.detail.pathInfo ? event.detail.pathInfo.requestPath : "");
      loadingConversation = match ? Number(match[1]) : null;
      framesWhileLoading = [];
    }
    var form = event.detail.elt;
    if (!form || form.id !== "composer") { return; }
    // The values are collected by now: clear the composer so the agent can type the next message.
    if (form.elements.text) { form.elements.text.value = ""; autosize(form.elements.text); }
    if (form.elements.media) { form.elements.media.value = ""; }
    var name = form.querySelector(".attachment-name");
    if (name) { name.textContent = ""; }
    setReply(form, "", "");
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = event.detail.elt;
    var xhr = event.detail.xhr;
    if (!elt || !xhr) { return; }
    if (elt.id === "composer") {
      var clientId = elt.elements.client_id.value;
      var pending = $all(".msg.is-pending", messagesBox()).find(function (m) { return m.dataset.clientId === clientId; });
      if (xhr.status === 200) {
        upsertBubble(xhr.responseText, { own: true });
      } else {
        if (pending) { pending.remove(); }
        if (elt.elements.text && !elt.elements.text.value) { elt.elements.text.value = elt.dataset.pendingText || ""; }
        if (xhr.status === 0 || xhr.status >= 500) {
          elt.dataset.retryClientId = clientId;  // the send may have gone through: retry with the same id
          elt.dataset.retryText = elt.dataset.pendingText || "";
          composerErrors(elt, "<div><p>Not sent: the connection failed. Press Enter to try again.</p></div>");
        } else {
          composerErrors(elt, xhr.responseText);
        }
      }
      return;
    }
    if (elt.classList && elt.classList.contains("msg-form")) {
      if (xhr.status === 200) { upsertBubble(xhr.responseText); }
      var menu = elt.closest("details");
      if (menu) { menu.open = false; }
      else if (xhr.status !== 200) { toast("Could not do that", xhr.responseText.replace(/<[^>]+>/g, " ").trim().slice(0, 200)); }
    }
  });

  document.addEventListener("htmx:sendError", function (event) {
    var elt = event.detail.elt;
    if (elt && elt.id !== "composer") { toast("Connection problem", "That did not reach the server. Try again."); }
  });

  function autosize(textarea) {
    // Grow by the rows attribute, not an inline style: htmx's history snapshot re-parses the page's HTML, and a
    // style attribute in it is an inline style that the Content-Security-Policy (style-src 'self') reports.
    textarea.rows = 1;
    while (textarea.rows < 6 && textarea.scrollHeight > textarea.clientHeight) { textarea.rows += 1; }
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && target.id === "composer-text" && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      target.form.requestSubmit();
      return;
    }
    if (event.altKey && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
      event.preventDefault();
      moveConversation(event.key === "ArrowDown" ? 1 : -1);
      return;
    }
    if (event.altKey && (event.key === "m" || event.key === "M" || event.code === "KeyM")) {
      var composer = $("#composer-text") || $("#composer select, #composer input:not([type=hidden])");
      if (composer) { event.preventDefault(); composer.focus(); }
      return;
    }
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT" || target.isContentEditable);
    if (event.key === "/" && !typing) {
      event.preventDefault();
      var q = $("#q");
      if (q) { q.focus(); q.select(); }
      return;
    }
    if (event.key === "Escape") {
      var form = $("#composer");
      if (form && form.elements.reply_to && form.elements.reply_to.value) { setReply(form, "", ""); return; }
      if (app && app.classList.contains("has-thread") && window.matchMedia("(max-width: 800px)").matches) { backToList(); }
    }
  });

  document.addEventListener("input", function (event) {
    var target = event.target;
    if (target && target.id === "composer-text") {
      autosize(target);
      if (target.value.trim()) { sendTyping(); } else { stopTyping(); }
    }
  });

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (!target) { return; }
    if (target.name === "media" && target.form && target.form.id === "composer") {
      var name = target.form.querySelector(".attachment-name");
      if (name) { name.textContent = target.files.length ? target.files[0].name : ""; }
    }
    if (target.name === "template" && target.form && target.form.id === "composer") { syncTemplateParams(target); }
  });

  function syncTemplateParams(select) {
    var option = select.selectedOptions[0];
    if (!option) { return; }
    var count = Number(option.dataset.params) || 0;
    var body = select.form.querySelector(".template-body");
    if (body) { body.textContent = option.dataset.body || ""; }
    $all(".template-param", select.form).forEach(function (input) {
      var needed = Number(input.dataset.index) <= count;
      input.hidden = !needed;
      input.required = needed;
      if (!needed) { input.value = ""; }
    });
  }

  document.addEventListener("focusout", function (event) {
    if (event.target && event.target.id === "composer-text") { stopTyping(); }
  });

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) { return; }
    $all("details.react-menu[open], details.menu[open]").forEach(function (menu) {
      if (!menu.contains(target)) { menu.open = false; }
    });
    var reply = target.closest(".reply-btn");
    if (reply) {
      var form = $("#composer");
      if (form && form.elements.reply_to) {
        setReply(form, reply.dataset.replyTo, reply.dataset.replyText);
        var text = $("#composer-text");
        if (text) { text.focus(); }
      }
      return;
    }
    if (target.closest(".reply-cancel")) { setReply($("#composer"), "", ""); return; }
    if (target.closest("#new-pill")) { scrollToBottom(); markReadSoon(); return; }
    if (target.closest(".back-link") && window.matchMedia("(max-width: 800px)").matches) {
      event.preventDefault();
      backToList();
      return;
    }
    if (target.closest("#shortcuts-btn")) {
      var panel = $("#shortcuts");
      panel.hidden = !panel.hidden;
      target.closest("#shortcuts-btn").setAttribute("aria-expanded", String(!panel.hidden));
      return;
    }
    if (target.closest("#notify-btn")) {
      Notification.requestPermission().then(function () { $("#notify-btn").hidden = Notification.permission !== "default"; });
      return;
    }
    var quote = target.closest("a.quote");
    if (quote) {
      var dest = document.querySelector(quote.getAttribute("href"));
      if (dest) {
        event.preventDefault();
        dest.scrollIntoView({ block: "center" });
        dest.classList.add("is-highlight");
        setTimeout(function () { dest.classList.remove("is-highlight"); }, 1500);
      }
    }
  });

  function moveConversation(step) {
    var rows = $all(".conv-row");
    if (!rows.length) { return; }
    var index = rows.findIndex(function (r) { return r.classList.contains("active"); });
    var next = rows[Math.max(0, Math.min(rows.length - 1, index + step))];
    if (index === -1) { next = rows[0]; }
    var link = next.querySelector(".conv-link");
    if (link) { link.click(); link.focus(); }
  }

  // Without the tenant-wide subscription typing and viewers come only for the joined conversation: what is known
  // of one left behind would go stale. With it (the page always asks), the list keeps following every row.
  function forgetConversation(conversationId) {
    if (rt && rt.activityIds) { return; }
    delete viewersByConversation[conversationId];
    renderViewers(conversationId);
    Object.keys(typingTimers).forEach(function (key) {
      var parts = key.split(":");
      if (parts[0] === String(conversationId)) {
        showTyping({ conversation_id: conversationId, user_id: Number(parts[1]) }, false);
      }
    });
  }

  function backToList() {
    var open = openConversationId();
    if (open && rt) { stopTyping(); rt.leave(open); forgetConversation(open); joinedConversation = null; }
    app.classList.remove("has-thread");
    var pane = $("#thread-pane");
    if (pane) { pane.innerHTML = '<div class="empty-thread"><p>Select a conversation to start.</p></div>'; }
    setActiveRow(null);
    history.pushState({}, "", app.dataset.baseUrl + (filterQuery() ? "?" + filterQuery() : ""));
    var first = $(".conv-row .conv-link");
    if (first) { first.focus(); }
  }

  // --- Thread lifecycle --------------------------------------------------------------------------------------------

  var joinedConversation = null;

  function threadOpened() {
    var conversationId = openConversationId();
    if (rt && joinedConversation && joinedConversation !== conversationId) {
      rt.leave(joinedConversation);
      forgetConversation(joinedConversation);
    }
    joinedConversation = conversationId;
    if (!conversationId) { return; }
    app.classList.add("has-thread");
    setActiveRow(conversationId);
    if (rt) { rt.join(conversationId); }
    unseenBelow = 0;
    fixDividers();
    localizeTimes(currentThread());
    scrollToBottom();
    tickWindow();
    var select = $("#composer select[name=template]");
    if (select) { syncTemplateParams(select); }
    if (loadingConversation === conversationId) { framesWhileLoading.forEach(refreshBubble); }
    loadingConversation = null;
    framesWhileLoading = [];
    markReadSoon();
  }

  var olderAnchor = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && target.classList && target.classList.contains("load-older")) {
      var box = messagesBox();
      olderAnchor = box ? box.scrollHeight - box.scrollTop : null;
    }
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (!target) { return; }
    if (target.id === "thread-pane") { threadOpened(); return; }
    if (target.id === "conversation-list") {
      var list = $("#conversation-list");
      list.dataset.filterQuery = filterQuery();
      setActiveRow(openConversationId());
      localizeTimes(list);
      renderActivity(list);
      snapshotNewRowsSoon();
      updatePresence();
      updateTitle();
      return;
    }
    if (!messagesBox() || !messagesBox().contains(target)) {  // e.g. "load more" put rows in place of its link
      renderActivity($("#conversation-list"));
      snapshotNewRowsSoon();
    }
    if (olderAnchor !== null && messagesBox()) {
      fixDividers();
      localizeTimes(messagesBox());
      var box = messagesBox();
      box.scrollTop = box.scrollHeight - olderAnchor;
      olderAnchor = null;
    }
  });

  document.addEventListener("scroll", function (event) {
    if (event.target && event.target.id === "messages" && atBottom()) {
      unseenBelow = 0;
      var pill = $("#new-pill");
      if (pill) { pill.hidden = true; }
      markReadSoon();
    }
  }, true);

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      hiddenNew = 0;
      updateTitle();
      markReadSoon();
    }
  });

  function init() {
    app = $("#app");
    if (!app) { return; }
    me = Number(app.dataset.userId);
    if (window.htmx) {
      window.htmx.config.historyCacheSize = 0;  // back/forward fetch the page again: never a stale snapshot
      window.htmx.config.refreshOnHistoryMiss = true;
    }
    localizeTimes(document);
    updateTitle();
    if ("Notification" in window && Notification.permission === "default") { $("#notify-btn").hidden = false; }
    if (window.InboxRealtime && app.dataset.wsPath) {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      rt = window.InboxRealtime.connect({
        url: scheme + window.location.host + app.dataset.wsPath,
        seq: app.dataset.seq,
        onFrame: onFrame,
        onState: onState,
        activity: listedConversationIds
      });
      window.inboxRealtime = rt;  // for the browser tests and the console
    }
    if (openConversationId()) { threadOpened(); }
    setInterval(function () { tickWindow(); localizeTimes(document); }, 30000);
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
