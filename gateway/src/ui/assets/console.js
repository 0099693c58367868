// The console's only script (wiki/console.md). It follows an execution's event stream to update
// its step states in place, and refreshes the first page of the listing. It only ever writes
// text (textContent, data-* attributes) or swaps in nodes parsed from the console's own
// server-rendered (escaped) pages; it never builds HTML from strings.
(function () {
  "use strict";

  // What an event of the log says about its step's state.
  var STEP_STATUS = {
    step_dispatched: "dispatched",
    step_started: "running",
    step_attempt_failed: "pending",
    step_reset: "pending",
    step_succeeded: "succeeded",
    step_failed: "failed",
    step_skipped: "skipped",
    step_cancelled: "cancelled"
  };
  var EXECUTION_STATUS = {
    execution_started: "running",
    execution_succeeded: "succeeded",
    execution_failed: "failed",
    execution_cancelled: "cancelled"
  };
  // Every kind the stream may name: an event stream delivers a named event only to its listeners.
  var KINDS = Object.keys(STEP_STATUS).concat(Object.keys(EXECUTION_STATUS), [
    "execution_created", "ctx_set", "step_routed", "step_continued", "step_goto"
  ]);

  function setBadge(container, status) {
    var badge = container && container.querySelector(".badge");
    if (badge) {
      badge.dataset.status = status;
      badge.textContent = status;
    }
  }

  // Replaces the element with `id` by the same element of a fresh copy of this page.
  function swapFromServer(ids) {
    return fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        ids.forEach(function (id) {
          var now = document.getElementById(id);
          var next = fresh.getElementById(id);
          if (now && next) { now.replaceWith(document.importNode(next, true)); }
        });
      });
  }

  function follow(root) {
    var byStep = new Map();
    root.querySelectorAll("[data-step]").forEach(function (el) {
      var name = el.dataset.step;
      if (!byStep.has(name)) { byStep.set(name, []); }
      byStep.get(name).push(el);
    });
    var timeline = document.getElementById("timeline");
    var status = document.getElementById("exec-status");
    var source = new EventSource(root.dataset.stream);

    function onEvent(message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      var payload = event.payload || {};
      var stepStatus = STEP_STATUS[event.kind];
      if (stepStatus && typeof payload.step === "string") {
        (byStep.get(payload.step) || []).forEach(function (el) {
          el.dataset.status = stepStatus;
          var cell = el.querySelector(".st");
          if (cell) { cell.textContent = stepStatus; }
        });
      }
      if (EXECUTION_STATUS[event.kind]) { setBadge(status, EXECUTION_STATUS[event.kind]); }
      if (timeline && !timeline.querySelector('[data-seq="' + Number(event.seq) + '"]')) {
        var item = document.createElement("li");
        item.dataset.seq = String(event.seq);
        var seq = document.createElement("span");
        seq.className = "seq";
        seq.textContent = String(event.seq);
        var when = document.createElement("time");
        when.textContent = String(event.created_at);
        var kind = document.createElement("strong");
        kind.textContent = String(event.kind);
        var code = document.createElement("code");
        code.textContent = JSON.stringify(payload);
        item.append(seq, " ", when, " ", kind, " ", code);
        timeline.append(item);
      }
    }

    KINDS.forEach(function (kind) { source.addEventListener(kind, onEvent); });
    source.addEventListener("end", function (message) {
      source.close();
      setBadge(status, String(message.data));
      root.dataset.ended = String(message.data);
      // The final overview (no more cancel) and the results, errors and timings of the
      // finished steps, without reloading the page.
      swapFromServer(["overview", "steps"]).catch(function () { /* the live states stay */ });
    });
    source.addEventListener("error", function (message) {
      // A named `error` event ends the stream; a lost connection is retried by the browser.
      if (message.data) {
        source.close();
        root.dataset.streamError = "true";
      }
    });
  }

  // One listing request per interval, never two at once, and none while the tab is hidden.
  function refresh(listing) {
    var seconds = Number(listing.dataset.refresh) || 5;
    function tick() {
      if (document.hidden) { window.setTimeout(tick, seconds * 1000); return; }
      swapFromServer(["listing"])
        .catch(function () { /* the next interval retries */ })
        .then(function () { window.setTimeout(tick, seconds * 1000); });
    }
    window.setTimeout(tick, seconds * 1000);
  }

  var execution = document.getElementById("execution");
  if (execution && execution.dataset.stream) { follow(execution); }
  var listing = document.getElementById("listing");
  if (listing && listing.dataset.refresh) { refresh(listing); }
})();
