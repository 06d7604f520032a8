/* Upstairs pages: shared helpers (no framework, no build step). */
"use strict";
const UP = (() => {
  const body = document.body;
  const tz = body.dataset.tz || "UTC";
  const timeFmt = new Intl.DateTimeFormat("en-GB", {
    timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  function time(iso) {
    if (!iso) return "—";
    return timeFmt.format(new Date(iso)).replace(",", "");
  }
  function num(v, digits = 1, unit = "") {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    const text = Number(v).toLocaleString("en-US", {
      minimumFractionDigits: digits, maximumFractionDigits: digits,
    });
    return unit ? `${text} ${unit}` : text;
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({
      "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
    })[c]);
  }
  async function getJSON(url, options = {}) {
    const r = await fetch(url, { credentials: "same-origin", ...options });
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
    if (!r.ok) {
      const detail = data && data.detail;
      const msg = typeof detail === "string" ? detail : JSON.stringify(detail);
      throw new Error(`${r.status}: ${msg}`);
    }
    return data;
  }
  function status(state, text) {
    const el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }
  /* The live WebSocket: reconnects with jittered backoff; onMessage(type, data). */
  function live(building, onMessage) {
    let backoff = 500;
    function open() {
      const proto = location.protocol === "https:" ? "wss" : "ws";
      const ws = new WebSocket(`${proto}://${location.host}/api/v1/live?building=${encodeURIComponent(building)}`);
      ws.onopen = () => { backoff = 500; status("on", "● live"); };
      ws.onmessage = (ev) => {
        const msg = JSON.parse(ev.data);
        if (msg.type !== "hello") onMessage(msg.type, msg.data);
      };
      ws.onclose = (ev) => {
        if (ev.code === 4401) { location.href = "/sign-in"; return; }
        status("off", "○ reconnecting");
        setTimeout(open, backoff * (0.5 + Math.random()));
        backoff = Math.min(backoff * 2, 15000);
      };
    }
    open();
  }
  function ready() { body.dataset.ready = "1"; }
  return { tz, time, num, esc, getJSON, live, status, ready };
})();
