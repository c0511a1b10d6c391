// storerec explorer: re-rank as a control changes. Forms marked data-live are plain GET forms
// (they work without this script); here a change fetches the same page and swaps its #results,
// keeping the focus where it is. The address bar follows, so a view can be bookmarked or shared.
(function () {
  "use strict";
  let pending = null;
  let seq = 0;

  async function refresh(form) {
    const params = new URLSearchParams(new FormData(form));
    const url = form.action + "?" + params.toString();
    const results = document.getElementById("results");
    const mine = ++seq;
    if (results) results.setAttribute("aria-busy", "true");
    try {
      const resp = await fetch(url, { headers: { accept: "text/html" } });
      const html = await resp.text();
      if (mine !== seq) return; // a later change is on its way
      const doc = new DOMParser().parseFromString(html, "text/html");
      const fresh = doc.getElementById("results");
      if (results && fresh) {
        results.innerHTML = fresh.innerHTML;
      } else if (results) { // an error page (bad parameter): show its message in place
        const err = doc.querySelector(".error");
        results.innerHTML = "";
        const p = document.createElement("p");
        p.className = "error";
        p.setAttribute("role", "alert");
        p.textContent = err ? err.textContent : "HTTP " + resp.status;
        results.appendChild(p);
      }
      const h1 = doc.querySelector("main h1"), mine_h1 = document.querySelector("main h1");
      if (h1 && mine_h1) mine_h1.textContent = h1.textContent;
      document.title = doc.title || document.title;
      history.replaceState(null, "", url);
      document.body.dataset.loaded = String(mine); // tests wait for this
    } catch (e) {
      if (results) results.textContent = "Could not reach the service: " + e;
    } finally {
      if (mine === seq && results) results.setAttribute("aria-busy", "false");
    }
  }

  function schedule(form, delay) {
    clearTimeout(pending);
    pending = setTimeout(function () { refresh(form); }, delay);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.body.dataset.loaded = "0";
    document.querySelectorAll("form[data-live], form[data-refresh]").forEach(function (form) {
      form.addEventListener("submit", function (ev) { ev.preventDefault(); clearTimeout(pending); refresh(form); });
      if (!form.hasAttribute("data-live")) return;
      form.addEventListener("change", function () { schedule(form, 50); });
      form.addEventListener("input", function (ev) {
        const t = ev.target;
        if (t && (t.type === "number" || t.type === "range")) schedule(form, 350); // typed text waits for Enter or a change
      });
    });
  });
})();
