// Valet Key: live job progress by long-polling /api/v1/jobs/{id}/events.
(function () {
  "use strict";
  function text(el, value) { el.textContent = value; }

  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.title = d.toISOString() + " (UTC)"; t.textContent = d.toLocaleString(); }
    });
  }

  function watchJob(root) {
    var id = root.getAttribute("data-job-id");
    var list = document.getElementById("job-events");
    var status = document.getElementById("job-status");
    var detail = document.getElementById("job-detail");
    var after = "";
    var delay = 1000;

    function refreshJob() {
      return fetch("/api/v1/jobs/" + id, {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (job) {
          text(status, job.status);
          status.className = "status status-" + job.status;
          text(detail, job.detail || "—");
          root.setAttribute("data-status", job.status);
        });
    }

    function poll() {
      var url = "/api/v1/jobs/" + id + "/events?wait=20" + (after ? "&after=" + encodeURIComponent(after) : "");
      fetch(url, {credentials: "same-origin"})
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(function (page) {
          delay = 1000;
          page.events.forEach(function (e) {
            var li = document.createElement("li");
            var t = document.createElement("time");
            t.setAttribute("datetime", e.time);
            t.title = e.time;
            t.textContent = new Date(e.time).toLocaleTimeString();
            li.appendChild(t);
            li.appendChild(document.createTextNode(" " + e.type + ": " + e.message));
            list.appendChild(li);
          });
          if (page.next) { after = page.next; }
          if (page.events.length) { refreshJob(); }
          if (page.done) { refreshJob(); return; }
          setTimeout(poll, 100);
        })
        .catch(function () {
          // Back off on errors so a broken connection never hammers the server.
          delay = Math.min(delay * 2, 15000);
          setTimeout(poll, delay);
        });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    var job = document.getElementById("job");
    if (job) { watchJob(job); }
  });
})();
