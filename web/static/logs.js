// Valet Key: a service's logs. History by time range and filter pattern, and a
// live tail: the page polls the logs API with the cursor of the previous answer,
// which returns only lines not shown before. Polling runs only while "Follow"
// is on and the tab is visible, and backs off on errors.
(function () {
  "use strict";
  var POLL_MS = 2000;       // tail interval while following
  var CATCH_UP_MS = 300;    // next page when the server says more lines are ready
  var MAX_CATCH_UP = 10;    // pages fetched in a row before asking the user
  var MAX_BACKOFF_MS = 30000;
  var PAGE = 500;
  var MAX_LINES = 5000;     // older lines are dropped to keep the page light

  function $(id) { return document.getElementById(id); }

  function pad(n, w) { n = String(n); while (n.length < (w || 2)) { n = "0" + n; } return n; }

  function localTime(d) {
    var t = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
    var now = new Date();
    if (d.toDateString() === now.toDateString()) { return t; }
    return d.toLocaleDateString(undefined, {month: "short", day: "numeric"}) + " " + t;
  }

  function isoFromLocal(value) {
    if (!value) { return ""; }
    var d = new Date(value);  // datetime-local values are the user's local time
    return isNaN(d) ? null : d.toISOString();
  }

  // A datetime-local value (the user's local time) for an ISO instant.
  function localInput(iso) {
    var d = new Date(iso);
    if (isNaN(d)) { return ""; }
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  var ERROR_LINE = /\bERROR\b/;

  function fieldMessages(body) {
    var errs = body && body.errors;
    if (!errs) { return ""; }
    return Object.keys(errs).map(function (k) {
      var v = errs[k];
      return k + ": " + (Array.isArray(v) ? v.join(", ") : String(v));
    }).join("; ");
  }

  function LogViewer(form) {
    var api = form.getAttribute("data-api");
    var el = {
      filter: $("log-filter"), range: $("log-range"), custom: $("log-custom"), customUntil: $("log-custom-until"),
      since: $("log-since"), until: $("log-until"), follow: $("log-follow"), autoscroll: $("log-autoscroll"),
      wrap: $("log-wrap"), status: $("log-status"), view: $("log-view"), lines: $("log-lines"),
      more: $("log-more"), newest: $("log-newest")
    };
    var query = {since: form.getAttribute("data-default-since") || "15m", until: "", filter: ""};
    var cursor = null;
    var timer = null;
    var wanted = false;     // a fetch is due (kept while the tab is hidden)
    var busy = false;
    var generation = 0;     // answers of an abandoned query are ignored
    var delay = POLL_MS;
    var caughtUp = 0;
    var lastOk = null;

    function status(text, isError) {
      el.status.textContent = text;
      el.status.classList.toggle("error", !!isError);
    }

    function following() { return el.follow.checked && !query.until; }

    function stopTimer() { if (timer) { clearTimeout(timer); timer = null; } }

    function schedule(ms) {
      stopTimer();
      wanted = true;
      if (document.hidden) { return; }  // a hidden tab does not poll; visibilitychange resumes
      var gen = generation;
      timer = setTimeout(function () { timer = null; wanted = false; fetchPage(gen); }, ms);
    }

    function readForm() {
      var q = {filter: el.filter.value.trim(), since: el.range.value, until: ""};
      if (el.range.value === "custom") {
        var since = isoFromLocal(el.since.value), until = isoFromLocal(el.until.value);
        if (!since) { status("Choose when the custom range starts.", true); el.since.focus(); return null; }
        if (until === null) { status("The end of the range is not a valid time.", true); el.until.focus(); return null; }
        q.since = since;
        q.until = until;
      }
      return q;
    }

    // The query in the address bar, so that the view can be shared as a link.
    function remember(q) {
      var params = new URLSearchParams(location.search);
      ["filter", "range", "since", "until"].forEach(function (k) { params.delete(k); });
      if (q.filter) { params.set("filter", q.filter); }
      params.set("range", el.range.value);
      if (el.range.value === "custom") {
        params.set("since", q.since);
        if (q.until) { params.set("until", q.until); }
      }
      var qs = params.toString();
      history.replaceState(null, "", location.pathname + (qs ? "?" + qs : "") + location.hash);
    }

    // A shared link: the filter and range it carries.
    function fromAddress() {
      var params = new URLSearchParams(location.search);
      if (params.get("filter")) { el.filter.value = params.get("filter"); }
      var range = params.get("range");
      if (range && el.range.querySelector("option[value='" + range.replace(/[^a-z0-9]/gi, "") + "']")) { el.range.value = range; }
      if (el.range.value === "custom") {
        el.custom.hidden = el.customUntil.hidden = false;
        if (params.get("since")) { el.since.value = localInput(params.get("since")); }
        if (params.get("until")) { el.until.value = localInput(params.get("until")); }
      }
      var q = readForm();
      if (q) { return q; }
      el.range.value = "15m";
      el.custom.hidden = el.customUntil.hidden = true;
      return readForm();
    }

    function restart(q) {
      remember(q);
      generation += 1;
      stopTimer();
      wanted = false;
      query = q;
      cursor = null;
      delay = POLL_MS;
      caughtUp = 0;
      el.lines.textContent = "";
      el.more.hidden = true;
      el.newest.hidden = true;
      status("Loading…");
      fetchPage(generation);
    }

    function lineFor(ev) {
      var li = document.createElement("li");
      var d = new Date(ev.timestamp);
      li.setAttribute("data-ts", String(d.getTime()));
      var t = document.createElement("time");
      t.setAttribute("datetime", ev.timestamp);
      t.title = ev.timestamp + " (UTC)";
      t.textContent = localTime(d);
      var s = document.createElement("span");
      s.className = "log-stream";
      var parts = (ev.stream || "").split("/");
      s.textContent = (parts[parts.length - 1] || "").slice(0, 8);
      s.title = ev.stream || "";
      var m = document.createElement("span");
      m.className = "log-msg";
      m.textContent = ev.message;  // never innerHTML: log lines are untrusted text
      if (ERROR_LINE.test(ev.message || "")) { li.classList.add("log-error"); }
      li.appendChild(t);
      li.appendChild(s);
      li.appendChild(m);
      return li;
    }

    // Lines that arrive late (another task's batch) can be older than the last
    // one shown: put them where they belong instead of at the bottom.
    function insert(li) {
      var ts = Number(li.getAttribute("data-ts"));
      var node = el.lines.lastElementChild;
      while (node && Number(node.getAttribute("data-ts")) > ts) { node = node.previousElementSibling; }
      el.lines.insertBefore(li, node ? node.nextElementSibling : el.lines.firstElementChild);
    }

    function append(events) {
      events.forEach(function (ev) { insert(lineFor(ev)); });
      while (el.lines.childElementCount > MAX_LINES) { el.lines.removeChild(el.lines.firstElementChild); }
      if (events.length && el.autoscroll.checked) { el.view.scrollTop = el.view.scrollHeight; }
    }

    function describe(body) {
      var n = el.lines.childElementCount;
      var shown = n === 1 ? "1 line" : n + " lines";
      if (body.notice) { return body.notice; }
      if (!n) { return following() ? "No lines in this range yet; following…" : "No lines in this range."; }
      var when = lastOk ? " · updated " + lastOk.toLocaleTimeString() : "";
      if (following()) { return shown + " · following" + when; }
      return shown + (body.more ? " · more available" : body.cursor ? "" : " · end of range");
    }

    function onPage(body) {
      delay = POLL_MS;
      lastOk = new Date();
      append(body.events || []);
      cursor = body.cursor;
      el.more.hidden = true;
      el.newest.hidden = true;
      status(describe(body));
      if (!cursor) { return; }              // a closed range, read to its end
      if (body.more) {
        if (following() && caughtUp < MAX_CATCH_UP) { caughtUp += 1; schedule(CATCH_UP_MS); return; }
        el.more.hidden = false;
        if (!query.until) { el.newest.hidden = false; }
        status(describe(body) + " · showing the oldest lines of the range first");
        return;
      }
      caughtUp = 0;
      if (following()) { schedule(POLL_MS); }
    }

    function onError(r, body) {
      if (r.status === 400 && body.errors && body.errors.cursor && cursor) {
        restart(query);                     // e.g. the server's key changed: start the query again
        return;
      }
      if (r.status === 401) { status("Your session has ended; sign in again to see the logs.", true); return; }
      if (r.status === 429 || r.status >= 500) {
        var after = parseInt(r.headers.get("Retry-After") || "", 10);
        delay = Math.min(Math.max(delay * 2, isNaN(after) ? 0 : after * 1000), MAX_BACKOFF_MS);
        status((body.detail || "The server could not read the logs.") + " Retrying in " + Math.round(delay / 1000) + " s.", true);
        schedule(delay);
        return;
      }
      // 400 (a bad pattern or time), 404, 422: retrying cannot help.
      var fields = fieldMessages(body);
      status((body.detail || ("HTTP " + r.status)) + (fields ? " — " + fields : ""), true);
    }

    function fetchPage(gen) {
      if (busy || gen !== generation) { return; }
      var params = new URLSearchParams();
      params.set("limit", String(PAGE));
      if (cursor) { params.set("cursor", cursor); } else { params.set("since", query.since); }
      if (query.until) { params.set("until", query.until); }
      if (query.filter) { params.set("filter", query.filter); }
      busy = true;
      fetch(api + "?" + params.toString(), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) {
          return r.json().catch(function () { return {}; }).then(function (body) { return {r: r, body: body}; });
        })
        .then(function (res) {
          busy = false;
          // A newer query started while this answer was on its way (its own fetch was held
          // back by ``busy``): drop this answer and fetch the newer one now.
          if (gen !== generation) { fetchPage(generation); return; }
          if (res.r.ok) { onPage(res.body); } else { onError(res.r, res.body); }
        })
        .catch(function () {
          busy = false;
          if (gen !== generation) { fetchPage(generation); return; }
          // Back off so a broken connection never hammers the server.
          delay = Math.min(delay * 2, MAX_BACKOFF_MS);
          status("Cannot reach Valet Key; retrying in " + Math.round(delay / 1000) + " s.", true);
          schedule(delay);
        });
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var q = readForm();
      if (q) { restart(q); }
    });
    el.range.addEventListener("change", function () {
      var custom = el.range.value === "custom";
      el.custom.hidden = !custom;
      el.customUntil.hidden = !custom;
      if (custom) { el.since.focus(); return; }
      var q = readForm();
      if (q) { restart(q); }
    });
    el.follow.addEventListener("change", function () {
      if (following() && cursor && !busy) { caughtUp = 0; stopTimer(); wanted = false; fetchPage(generation); }
      else if (!following()) { stopTimer(); wanted = false; }
      if (el.lines.childElementCount || !el.follow.checked) { status(describe({cursor: cursor})); }
    });
    el.wrap.addEventListener("change", function () { el.view.classList.toggle("log-wrap", el.wrap.checked); });
    el.view.addEventListener("scroll", function () {
      // Scrolling up to read pauses auto-scroll; back at the bottom resumes it.
      el.autoscroll.checked = el.view.scrollHeight - el.view.scrollTop - el.view.clientHeight < 40;
    });
    el.autoscroll.addEventListener("change", function () {
      if (el.autoscroll.checked) { el.view.scrollTop = el.view.scrollHeight; }
    });
    el.more.addEventListener("click", function () { caughtUp = 0; el.more.hidden = true; fetchPage(generation); });
    el.newest.addEventListener("click", function () {
      el.range.value = "5m";
      var q = readForm();
      if (q) { restart(q); }
    });
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { stopTimer(); return; }
      if (wanted && !busy && !timer) { wanted = false; fetchPage(generation); }
    });

    restart(fromAddress() || query);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("log-controls");
    if (form) { LogViewer(form); }
  });
})();
