// deprovisiond dashboard: progressive enhancement only. Every page works without this file; with it, filters
// apply on change, the form shows only the fields of the chosen target kind, and pages of running jobs update
// in place instead of reloading.
(function () {
  "use strict";

  // Filters: apply as soon as a value is chosen. Delegated, because auto-refresh replaces the elements.
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t && t.matches && t.matches("select[data-autosubmit]") && t.form) { t.form.submit(); }
  });

  // New-job form: show the fields the chosen kind uses (all stay in the page; the server ignores the rest).
  var kind = document.getElementById("kind");
  if (kind) {
    var sync = function () {
      document.querySelectorAll("[data-kinds]").forEach(function (el) {
        el.hidden = el.getAttribute("data-kinds").split(" ").indexOf(kind.value) < 0;
      });
    };
    kind.addEventListener("change", sync);
    sync();
  }

  // Auto-refresh: while the server marks the page (data-refresh = seconds), fetch it again and swap the
  // <main> in place, keeping the scroll position; stop when the fresh page no longer asks for it.
  var every = Number(document.body.getAttribute("data-refresh") || 0);
  if (every > 0) {
    var tick = function () {
      fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
        .then(function (text) {
          var fresh = new DOMParser().parseFromString(text, "text/html");
          var main = fresh.getElementById("live");
          var current = document.getElementById("live");
          if (main && current) { current.replaceWith(document.importNode(main, true)); }
          if (fresh.body.getAttribute("data-refresh")) {
            window.setTimeout(tick, every * 1000);
          } else {
            document.body.removeAttribute("data-refresh");
          }
        })
        .catch(function () { window.setTimeout(tick, every * 4000); });
    };
    window.setTimeout(tick, every * 1000);
  }
})();
