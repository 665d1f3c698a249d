"use strict";
// Copies each fresh view from the data endpoint into the page as text; never builds markup from data.
(() => {
  const body = document.body;
  const source = body.dataset.source;
  const every = Math.max(100, Number(body.dataset.refresh) * 1000);
  const $ = (id) => document.getElementById(id);
  let lastGood = Date.now();

  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }

  function apply(view) {
    const state = $("state");
    state.className = "state state-" + view.state;
    setText(state, view.state_text);
    document.title = "flowgpt-gateway: " + view.state_text;
    setText($("meta"), view.meta);
    setText($("inflight"), view.inflight);
    setText($("retries"), view.retries);
    setText($("window"), view.window);
    setText($("history"), view.history);
    for (const list of ["rejections", "received"]) {
      for (const entry of view[list]) {
        const item = document.querySelector("#" + list + ' [data-key="' + CSS.escape(entry.key) + '"]');
        setText(item && item.querySelector(".num"), entry.text);
      }
    }
    showEvents(view.events);
    const rows = new Map();
    for (const row of document.querySelectorAll("tr[data-route]")) rows.set(row.dataset.route, row);
    const names = view.routes.map((route) => route.name);
    if (names.length !== rows.size || names.some((name) => !rows.has(name))) {
      // The gateway restarted with other routes: let the server render the new rows.
      location.reload();
      return;
    }
    for (const route of view.routes) {
      const row = rows.get(route.name);
      row.className = "route " + route.class;
      for (const [cell, text] of Object.entries(route.cells)) {
        setText(row.querySelector('[data-cell="' + cell + '"]'), text);
      }
      for (const [key, spark] of Object.entries(route.sparks)) {
        const svg = row.querySelector('svg[data-spark="' + key + '"]');
        if (!svg) continue;
        svg.querySelector("path.line").setAttribute("d", spark.d);
        setText(svg.querySelector("title"), spark.title);
        setText(row.querySelector('[data-scale="' + key + '"]'), spark.scale);
      }
    }
  }

  // The timeline's lines are rebuilt from text nodes only.
  function showEvents(events) {
    const list = $("events");
    const lines = events.map((event) => {
      const line = document.createElement("li");
      for (const [cls, text, after] of [["when", event.time, " "], ["route", event.route, " "],
        ["change", event.change, ": "], ["why", event.reason, ""]]) {
        const part = document.createElement(cls === "route" ? "strong" : "span");
        if (cls !== "route") part.className = cls;
        part.textContent = text;
        line.append(part, after);
      }
      return line;
    });
    list.replaceChildren(...lines);
  }

  function showFreshness(ok, reason) {
    if (ok) lastGood = Date.now();
    const stale = $("stale");
    stale.hidden = ok;
    body.classList.toggle("is-stale", !ok);
    if (!ok) {
      // The last known state is no longer known: the badge says so, not "Serving".
      const state = $("state");
      state.className = "state state-stale";
      setText(state, "Stale");
      document.title = "flowgpt-gateway: Stale";
      const ago = Math.round((Date.now() - lastGood) / 1000);
      setText(stale, "Stale: the gateway did not answer (" + reason + "); last update " + ago + " s ago.");
    }
    setText($("updated"), new Date(lastGood).toLocaleTimeString());
  }

  async function refresh() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), every);
    try {
      const response = await fetch(source, { cache: "no-store", credentials: "same-origin", signal: abort.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      apply((await response.json()).view);
      showFreshness(true, "");
    } catch (error) {
      showFreshness(false, error instanceof Error ? error.message : "unknown error");
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, every);
    }
  }

  showFreshness(true, "");
  setTimeout(refresh, every);
})();
