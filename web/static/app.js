// Valet Key: the little JavaScript of the pages (no library; the CSP allows only this file,
// logs.js and no inline script). Everything works without it, only less live:
//  - times: the server writes UTC; here they become the viewer's local time with its zone;
//  - the confirmation dialog (plan, reason) before every action, and one post per click;
//  - the environment page's service cards, kept current while the tab is visible;
//  - the job page's timeline, fed by long-polling /api/v1/jobs/{id}/events.
(function () {
  "use strict";

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }  // never innerHTML: messages are untrusted text
    return e;
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // ---- times ------------------------------------------------------------------------
  function utcText(d) {
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }
  function localText(d, timeOnly) {
    var opts = {hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"};
    if (!timeOnly) { opts.year = "numeric"; opts.month = "short"; opts.day = "numeric"; }
    return d.toLocaleString(undefined, opts);
  }
  function timeElement(iso, timeOnly) {
    var t = el("time");
    t.setAttribute("datetime", iso);
    var d = new Date(iso);
    if (isNaN(d)) { t.textContent = iso; return t; }
    t.title = utcText(d);
    t.textContent = localText(d, timeOnly);
    return t;
  }
  function localizeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) { return; }
      if (t.hasAttribute("data-relative")) {  // "5 h ago" stays; the exact time is on hover, both zones
        t.title = localText(d, false) + " (" + utcText(d) + ")";
        return;
      }
      t.title = utcText(d);
      t.textContent = localText(d, false);
    });
  }
  function zoneName() {
    var parts = new Intl.DateTimeFormat(undefined, {timeZoneName: "short"}).formatToParts(new Date());
    var z = parts.filter(function (p) { return p.type === "timeZoneName"; })[0];
    return z ? z.value : "local";
  }

  // A datetime-local field is the person's own time; the server gets UTC (ISO 8601 with Z),
  // and the UTC equivalent is shown beside the field while they choose.
  function utcInputs(root) {
    root.querySelectorAll("input[data-utc-input]").forEach(function (input) {
      var out = input.id ? document.querySelector("output[for='" + input.id + "']") : null;
      var label = input.form && input.form.querySelector("[data-local-zone-label]");
      if (label) { label.textContent = label.getAttribute("data-local-zone-label").replace("{zone}", zoneName()); }
      function show() {
        if (!out) { return; }
        var d = input.value ? new Date(input.value) : null;
        out.textContent = d && !isNaN(d) ? "= " + utcText(d) : "";
      }
      input.addEventListener("input", show);
      show();
    });
  }
  function toUtcBeforeSubmit(form) {
    form.querySelectorAll("input[data-utc-input]").forEach(function (input) {
      if (!input.value || !input.name) { return; }
      var d = new Date(input.value);
      if (isNaN(d)) { return; }
      var hidden = el("input");
      hidden.type = "hidden";
      hidden.name = input.name;
      hidden.value = d.toISOString().replace(/\.\d{3}Z$/, "Z");
      input.removeAttribute("name");
      form.appendChild(hidden);
    });
  }

  // ---- one post per click -------------------------------------------------------------
  function disableSubmit(form) {
    form.querySelectorAll("button[type=submit], button:not([type])").forEach(function (b) {
      b.disabled = true;
      b.setAttribute("aria-busy", "true");
    });
  }
  function csrfToken() {
    var t = document.querySelector("input[name=csrf_token]");
    return t ? t.value : "";
  }

  // ---- the confirmation dialog --------------------------------------------------------
  var confirmState = {form: null, opener: null};
  // Mirrors web/page_base.py MECHANISM_WORDS.
  var MECHANISM_WORDS = {deployment: "A new ECS deployment of the same image", batches: "Tasks replaced in batches (stop, then wait for the replacement)"};

  function renderPlan(box, plan) {
    box.textContent = "";
    if (plan.mechanism) { box.appendChild(el("p", "plan-mechanism", MECHANISM_WORDS[plan.mechanism] || plan.mechanism)); }
    if (plan.steps && plan.steps.length) {
      var ol = el("ol", "plan-steps");
      plan.steps.forEach(function (s) { ol.appendChild(el("li", "", s)); });
      box.appendChild(ol);
    }
    (plan.warnings || []).forEach(function (w) { box.appendChild(el("p", "notice", "Warning: " + w)); });
    if (plan.blocked) {
      box.appendChild(el("p", "error", "This would be refused: " + plan.blocked));
      $("confirm-ok").disabled = true;
    }
  }

  function fetchPlan(url, box) {
    box.textContent = "";
    box.appendChild(el("p", "muted", "Checking what would happen…"));
    var unavailable = "No plan could be fetched; Valet Key checks everything again when the job runs.";
    fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrfToken()},
      body: JSON.stringify({dry_run: true})
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) { return {r: r, body: body}; });
    }).then(function (res) {
      if (res.r.status === 202 && res.body.id) {
        // A server that does not know dry_run started the job: show it rather than hide it.
        window.location.href = "/jobs/" + encodeURIComponent(res.body.id);
        return;
      }
      if (!res.r.ok) { box.textContent = ""; box.appendChild(el("p", "muted", unavailable)); return; }
      var plan = res.body && typeof res.body.plan === "object" && res.body.plan ? res.body.plan : res.body;
      renderPlan(box, plan || {});
    }).catch(function () { box.textContent = ""; box.appendChild(el("p", "muted", unavailable)); });
  }

  function openConfirm(form, opener) {
    var dlg = $("confirm");
    if (!dlg || typeof dlg.showModal !== "function") { return false; }
    var asks = form.hasAttribute("data-reason");
    var required = asks && form.hasAttribute("data-require-reason");
    $("confirm-title").textContent = form.getAttribute("data-confirm");
    var explain = form.getAttribute("data-explain") || "";
    if (asks && form.hasAttribute("data-two-person")) {
      explain += (explain ? " " : "") + "It waits for a second person's approval (an operator or admin) before it runs.";
    }
    $("confirm-explain").textContent = explain;
    $("confirm-ok").textContent = form.getAttribute("data-confirm-button") || "Confirm";
    $("confirm-ok").disabled = false;
    var reason = $("confirm-reason");
    reason.value = "";
    reason.required = required;
    $("confirm-reason-row").hidden = !asks;
    $("confirm-reason-need").textContent = required ?
      "(required in this environment; goes to the audit trail)" : "(optional; goes to the audit trail)";
    var box = $("confirm-plan");
    box.textContent = "";
    if (form.getAttribute("data-plan")) { fetchPlan(form.getAttribute("data-plan"), box); }
    confirmState.form = form;
    confirmState.opener = opener;
    dlg.returnValue = "";
    dlg.showModal();
    // A touch screen would open its keyboard over the plan for an optional field.
    var touch = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
    (touch && !required || !asks ? $("confirm-ok") : reason).focus();
    return true;
  }

  function setupConfirm() {
    var dlg = $("confirm");
    if (dlg) {
      dlg.addEventListener("close", function () {
        var form = confirmState.form, opener = confirmState.opener;
        confirmState.form = confirmState.opener = null;
        if (!form) { return; }
        if (dlg.returnValue !== "ok") { if (opener) { opener.focus(); } return; }
        if (form.hasAttribute("data-reason")) {
          // The form's own reason field exists only without JavaScript (<noscript>): send the dialog's.
          var field = form.querySelector("input[name=reason]");
          if (!field) {
            field = el("input");
            field.type = "hidden";
            field.name = "reason";
            form.appendChild(field);
          }
          field.value = $("confirm-reason").value.trim();
        }
        toUtcBeforeSubmit(form);
        disableSubmit(form);
        form.submit();  // does not fire "submit" again
      });
    }
    document.addEventListener("submit", function (e) {
      var form = e.target;
      if (!(form instanceof HTMLFormElement) || (form.method || "").toLowerCase() !== "post") { return; }
      if (form.hasAttribute("data-confirm") && openConfirm(form, e.submitter || form.querySelector("button"))) {
        e.preventDefault();
        return;
      }
      toUtcBeforeSubmit(form);
      // After this event: a disabled submitter would not be sent with the form.
      setTimeout(function () { disableSubmit(form); }, 0);
    });
    // Back from the job page (bfcache): the buttons must work again.
    window.addEventListener("pageshow", function (e) {
      if (!e.persisted) { return; }
      document.querySelectorAll("button[aria-busy=true]").forEach(function (b) {
        b.disabled = false;
        b.removeAttribute("aria-busy");
      });
    });
  }

  // ---- sections collapsed on a phone ---------------------------------------------------
  function collapseOnPhone() {
    if (!window.matchMedia || !window.matchMedia("(max-width: 700px)").matches) { return; }
    var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
    document.querySelectorAll("details[data-phone-collapse]").forEach(function (d) {
      if (d.hasAttribute("data-keep-open") || (target && d.contains(target))) { return; }
      d.removeAttribute("open");
    });
  }

  // ---- the environment page, live ------------------------------------------------------
  var HEALTH_WORDS = {HEALTHY: "Healthy", DEPLOYING: "Deploying", DEGRADED: "Degraded", STOPPED: "Stopped",
    FAILED: "Failed", DRAINING: "Draining", INACTIVE: "Inactive"};
  var STATUS_WORDS = {awaiting_approval: "awaiting approval"};  // mirrors web/page_base.py status_words()
  function statusWords(status) { return STATUS_WORDS[status] || status; }
  var ACTION_WORDS = {"service.restart": "Restart", "service.redeploy": "Redeploy", "redis.flush": "Redis flush",
    "task.run": "One-off task"};

  // Mirrors web/page_base.py short_image().
  function shortImage(image) {
    if (!image) { return "—"; }
    var m = /@sha256:([0-9a-f]{7,})/i.exec(image);
    var name = image.replace(/@sha256:[0-9a-f]+/i, "").split("/").pop();
    return m ? name + " · sha:" + m[1].slice(0, 7) : name;
  }

  function liveEnvironment(list) {
    var api = list.getAttribute("data-api"), jobsApi = list.getAttribute("data-jobs-api");
    var jobPage = list.getAttribute("data-job-page");
    var statusEl = $("live-status");
    var announce = el("p", "visually-hidden");
    announce.setAttribute("aria-live", "polite");
    list.parentNode.insertBefore(announce, list);
    var FAST = 3000, SETTLING = 10000, SLOW = 30000, MAX_BACKOFF = 60000;
    var timer = null, busy = false, due = false, delay = FAST, hadJobs = list.querySelector("[data-field=job] a") !== null;

    function getJSON(url) {
      return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}).then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      });
    }
    function set(card, field, value) {
      var node = card.querySelector("[data-field='" + field + "']");
      if (!node || node.textContent === String(value)) { return false; }
      node.textContent = value;
      node.classList.remove("changed");
      void node.offsetWidth;  // restart the highlight animation
      node.classList.add("changed");
      return true;
    }
    function updateCard(card, s) {
      var changed = false;
      var health = card.querySelector("[data-field=status]");
      if (health) {
        health.className = "health health-" + String(s.status).toLowerCase();
      }
      changed = set(card, "status", HEALTH_WORDS[s.status] || s.status) || changed;
      changed = set(card, "running", s.running) || changed;
      changed = set(card, "desired", s.desired) || changed;
      set(card, "pending", s.pending ? " · " + s.pending + " pending" : "");
      set(card, "image-short", shortImage(s.image));
      set(card, "image", s.image);
      set(card, "task_definition", s.task_definition);
      if (changed) {
        announce.textContent = s.name + ": " + (HEALTH_WORDS[s.status] || s.status) + ", " + s.running + " of " +
          s.desired + " running";
      }
    }
    function updateJobs(jobs) {
      var byTarget = {};
      jobs.forEach(function (j) { byTarget[j.target] = j; });
      list.querySelectorAll("li[data-service]").forEach(function (card) {
        var slot = card.querySelector("[data-field=job]");
        var j = byTarget[card.getAttribute("data-service")];
        var a = slot.querySelector("a");
        if (!j) { if (a) { slot.textContent = ""; } return; }
        var text = (ACTION_WORDS[j.action] || j.action) + " " + statusWords(j.status) + " — view";
        if (a && a.textContent === text) { return; }
        slot.textContent = "";
        a = el("a", "", text);
        a.href = jobPage.replace("JOB", encodeURIComponent(j.id));
        slot.appendChild(a);
      });
    }
    function steady(services) {
      return services.every(function (s) {
        return s.status === "HEALTHY" && s.running === s.desired && !s.pending;
      });
    }
    function schedule(ms) {
      if (timer) { clearTimeout(timer); }
      due = true;
      if (document.hidden) { timer = null; return; }  // visibilitychange picks it up again
      timer = setTimeout(tick, ms);
    }
    function tick() {
      timer = null;
      due = false;
      if (busy) { return; }
      busy = true;
      Promise.all([getJSON(jobsApi), getJSON(api)]).then(function (res) {
        busy = false;
        var jobs = res[0].jobs || [], detail = res[1];
        updateJobs(jobs);
        var known = {};
        (detail.services || []).forEach(function (s) {
          known[s.name] = true;
          var card = list.querySelector("li[data-service='" + CSS.escape(s.name) + "']");
          if (card) { updateCard(card, s); }
        });
        var extra = (detail.services || []).some(function (s) { return !list.querySelector("li[data-service='" + CSS.escape(s.name) + "']"); });
        statusEl.textContent = "· live, updated " + localText(new Date(), true) +
          (extra ? " · new services appeared: reload to see them" : "");
        // A job that just ended: one quick look more, then settle down.
        var next = jobs.length || hadJobs ? FAST : steady(detail.services || []) ? SLOW : SETTLING;
        hadJobs = jobs.length > 0;
        delay = next;
        schedule(next);
      }).catch(function (err) {
        busy = false;
        delay = Math.min(Math.max(delay * 2, FAST), MAX_BACKOFF);
        statusEl.textContent = "· could not refresh (" + err.message + "); retrying in " + Math.round(delay / 1000) + " s";
        schedule(delay);
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && due && !timer && !busy) { tick(); }
    });
    statusEl.textContent = "· live";
    schedule(hadJobs ? FAST : SETTLING);
  }

  // ---- the job page: a timeline ---------------------------------------------------------
  var STEP_WORDS = {queued: "Requested", running: "Picked up", plan: "Plan", state: "State", progress: "Progress", deployment: "Deployment",
    started: "Started", logs: "Logs", resume: "Resumed", count: "Counted", output: "Output", batch: "Batch",
    succeeded: "Succeeded", failed: "Failed", approved: "Approved", rejected: "Rejected"};
  var TERMINAL = {succeeded: true, failed: true, rejected: true};
  var DIAGNOSTIC = /stopp|exit|reason|cannot|unhealthy|fail|error|rolled back|circuit/i;

  function duration(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) { return s + " s"; }
    var m = Math.floor(s / 60);
    if (m < 60) { return m + " min " + pad(s % 60) + " s"; }
    return Math.floor(m / 60) + " h " + pad(m % 60) + " min";
  }

  function watchJob(root) {
    var id = root.getAttribute("data-job-id");
    var list = $("job-events"), statusEl = $("job-status"), detailEl = $("job-detail");
    var outcomeEl = $("job-outcome"), elapsedEl = $("job-elapsed");
    var events = [], outputLines = [], outputBlock = null;
    var after = "", delay = 1000;
    var job = {status: root.getAttribute("data-status"), created_at: root.getAttribute("data-created"),
      started_at: root.getAttribute("data-started"), finished_at: root.getAttribute("data-finished"), detail: detailEl.textContent};

    function tickElapsed() {
      var start = new Date(job.started_at || job.created_at);
      if (isNaN(start)) { return; }
      var end = job.finished_at ? new Date(job.finished_at) : new Date();
      elapsedEl.textContent = (job.finished_at ? "took " : "") + duration(end - start) +
        (job.started_at || job.finished_at ? "" : job.status === "awaiting_approval" ? " (waiting for approval)" : " (waiting for a worker)");
    }
    var clock = setInterval(function () { tickElapsed(); if (TERMINAL[job.status]) { clearInterval(clock); } }, 1000);

    function addOutput(e) {
      // The worker sends a container's last lines as one event ("Last 3 line(s) of app's output:\n…"),
      // or one line saying there was none; single lines in a row are one block as well.
      var lines = String(e.message).split("\n"), head = "";
      if (lines.length > 1) { head = lines.shift(); outputBlock = null; }
      else if (/^Output of [^:]*: /.test(lines[0])) { head = lines.shift(); outputBlock = null; }
      if (!outputBlock) {
        var item = el("li", "step step-output");
        item.appendChild(timeElement(e.time, true));
        item.appendChild(el("span", "step-type", STEP_WORDS.output));
        if (head) { item.appendChild(el("span", "step-msg", head)); }
        list.appendChild(item);
        if (!lines.length) { return; }
        outputBlock = el("pre", "output");
        item.appendChild(outputBlock);
      }
      outputBlock.textContent += (outputBlock.textContent ? "\n" : "") + lines.join("\n");
      outputLines.push.apply(outputLines, lines);
    }

    function addEvent(e) {
      events.push(e);
      if (e.type === "output") { addOutput(e); return; }
      outputBlock = null;
      var li = el("li", "step step-" + String(e.type).replace(/[^a-z0-9_-]/gi, ""));
      li.appendChild(timeElement(e.time, true));
      li.appendChild(el("span", "step-type", STEP_WORDS[e.type] || e.type));
      li.appendChild(el("span", "step-msg", e.message));
      list.appendChild(li);
    }

    function outcomeSentence() {
      if (job.status === "succeeded") { return "Done: " + (job.detail || "succeeded") + "."; }
      if (job.status === "failed") { return "Failed: " + (job.detail || "no reason given") + "."; }
      if (job.status === "rejected") { return "Rejected: " + (job.detail || "not approved") + "."; }
      if (job.status === "awaiting_approval") { return "Waiting for a second person's approval: nothing has run yet."; }
      if (job.status === "running") { return "In progress…"; }
      return "Waiting for a worker…";
    }

    function diagnose() {
      var box = $("job-diagnosis");
      if (!box) { return; }
      $("diagnosis-heading").textContent = job.status === "rejected" ? "Why it did not run" : "Why it failed";
      $("diagnosis-detail").textContent = job.detail || "The job failed without a reason.";
      var facts = $("diagnosis-facts");
      facts.textContent = "";
      events.filter(function (e) {
        return e.type !== "output" && e.type !== "failed" && DIAGNOSTIC.test(e.message);
      }).slice(-5).forEach(function (e) { facts.appendChild(el("li", "", e.message)); });
      var out = $("diagnosis-output");
      out.textContent = "";
      if (outputLines.length) {
        out.appendChild(el("p", "", "Last lines of its output:"));
        out.appendChild(el("pre", "output", outputLines.slice(-20).join("\n")));
      }
      box.hidden = false;
      var next = $("job-next");
      if (next) { next.hidden = false; }
    }

    function show(j) {
      job = j;
      statusEl.textContent = statusWords(j.status);
      statusEl.className = "status status-" + j.status;
      detailEl.textContent = j.detail || "—";
      outcomeEl.textContent = outcomeSentence();
      outcomeEl.className = "job-outcome outcome-" + j.status;
      root.setAttribute("data-status", j.status);
      var approval = $("job-approval");  // decided (here or by someone else): the buttons go
      if (approval && j.status !== "awaiting_approval") { approval.hidden = true; }
      tickElapsed();
      if (j.status === "failed" || j.status === "rejected") { diagnose(); }
    }

    function refreshJob() {
      return fetch("/api/v1/jobs/" + encodeURIComponent(id), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(show)
        .catch(function () { /* the next event (or the final one) refreshes again */ });
    }

    function poll() {
      // The contract's long-poll URL, unchanged whatever serves it.
      var url = "/api/v1/jobs/" + encodeURIComponent(id) + "/events?wait=20" + (after ? "&after=" + encodeURIComponent(after) : "");
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(function (page) {
          delay = 1000;
          page.events.forEach(addEvent);
          if (page.next) { after = page.next; }
          if (page.done) { refreshJob(); return; }
          if (page.events.length) { refreshJob(); }
          setTimeout(poll, 100);
        })
        .catch(function () {
          // Back off on errors so a broken connection never hammers the server.
          delay = Math.min(delay * 2, 15000);
          setTimeout(poll, delay);
        });
    }
    tickElapsed();
    if (job.status === "failed" || job.status === "rejected") { $("job-next").hidden = false; }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    document.querySelectorAll("[data-zone-name]").forEach(function (z) { z.textContent = zoneName(); });
    utcInputs(document);
    setupConfirm();
    collapseOnPhone();
    var services = $("services");
    if (services) { liveEnvironment(services); }
    var job = $("job");
    if (job) { watchJob(job); }
  });
})();
