/* Building view: keep every floor band current from the live floor states. */
"use strict";
(() => {
  const building = document.body.dataset.building;
  const tenants = JSON.parse(document.getElementById("floor-tenants").textContent);
  const numbers = JSON.parse(document.getElementById("floor-numbers").textContent);
  const states = {};
  const STATUS = {
    fire: ["FIRE", "✹"], evacuate: ["Evacuate", "⚑"], critical: ["Critical", "✖"],
    warning: ["Warning", "⚠"], trouble: ["Trouble", "⚙"], unknown: ["No data", "?"],
    normal: ["Normal", "✓"],
  };
  const SEV = { critical: "✖", warning: "⚠", trouble: "⚙", info: "ℹ" };
  const { num, esc } = UP;

  /* Same rules as api.pages.floor_status. */
  function statusOf(fs) {
    const a = fs.open_alerts || {};
    const load = fs.max_zone_load_pct || 0, power = fs.power_pct || 0;
    if (fs.fire_state === "alarm" || (fs.evacuation_from || []).includes(fs.floor)) return "fire";
    if (fs.evacuation) return "evacuate";
    if (a.critical || load >= 100 || power >= 100) return "critical";
    if (a.warning || load >= 90 || power >= 90) return "warning";
    if (a.trouble || fs.fire_state === "fault") return "trouble";
    if (fs.load_quality === "unknown" && fs.power_quality === "unknown") return "unknown";
    if (fs.gateway === "offline") return "unknown";
    return "normal";
  }
  function badge(s) {
    return `<span class="badge s-${s}"><span class="icon" aria-hidden="true">${STATUS[s][1]}</span> ${STATUS[s][0]}</span>`;
  }
  function loadCell(fs) {
    if (fs.max_zone_load_pct === null || fs.max_zone_load_pct === undefined) return '<span class="muted">no data</span>';
    const max = Math.max(...fs.zones.filter((z) => z.load_kg_m2 !== null).map((z) => z.load_kg_m2));
    const kg = Number.isFinite(max) ? ` <small>(${num(max, 0)} kg/m²)</small>` : "";
    return `<strong>${num(fs.max_zone_load_pct, 0)} %</strong> of limit${kg}`;
  }
  function powerCell(fs) {
    if (fs.power_kw === null || fs.power_kw === undefined) return `<span class="muted">no data</span> / ${num(fs.power_capacity_kw, 0)} kW`;
    return `<strong>${num(fs.power_kw, 0)}</strong> / ${num(fs.power_capacity_kw, 0)} kW <small>(${num(fs.power_pct, 0)} %)</small>`;
  }
  function fireCell(fs) {
    return { alarm: "✹ ALARM", fault: "⚙ fault", normal: "✓ normal" }[fs.fire_state] || "? unknown";
  }
  function alertsCell(fs) {
    const a = fs.open_alerts || {};
    const parts = ["critical", "warning", "trouble", "info"].filter((s) => a[s]).map((s) =>
      `<a class="sev sev-${s}" href="/alerts?floor=${fs.floor}&severity=${s}"><span aria-hidden="true">${SEV[s]}</span> ${a[s]} ${s}</a>`);
    return parts.length ? parts.join(" ") : '<span class="muted">none</span>';
  }
  function qualityCell(fs) {
    const q = fs.gateway === "offline" ? "unknown" : (fs.load_quality === "good" && fs.power_quality === "good" ? "good" : (fs.load_quality === "unknown" && fs.power_quality === "unknown" ? "unknown" : "partial"));
    const stale = (fs.stale_sensors || []).length;
    const text = { good: "✓ good", partial: "◐ partial", unknown: "? no data" }[q];
    return stale ? `${text} <small>(${stale} stale)</small>` : text;
  }
  function render(fs) {
    const band = document.getElementById(`floor-${fs.floor}`);
    if (!band) return;
    const s = statusOf(fs);
    band.className = `band s-${s}`;
    band.dataset.status = s;
    const cells = {
      status: badge(s), load: loadCell(fs), power: powerCell(fs),
      temp: num(fs.max_temperature_c, 1, "°C"), fire: fireCell(fs),
      alerts: alertsCell(fs), quality: qualityCell(fs),
    };
    for (const [k, html] of Object.entries(cells)) {
      const el = band.querySelector(`[data-f="${k}"]`);
      if (el && el.innerHTML !== html) el.innerHTML = html;
    }
  }
  function banner() {
    const fires = new Set();
    Object.values(states).forEach((fs) => (fs.evacuation_from || []).forEach((f) => fires.add(f)));
    const box = document.getElementById("evacuation");
    if (!fires.size) { box.hidden = true; box.innerHTML = ""; return; }
    const lines = [...fires].sort((a, b) => a - b).map((f) => {
      let floors = Object.values(states).filter((fs) => fs.evacuation && (fs.evacuation_from || []).includes(f)).map((fs) => fs.floor);
      if (!floors.length) floors = [f - 1, f, f + 1].filter((n) => numbers.includes(n));
      floors.sort((a, b) => a - b);
      const who = floors.filter((n) => tenants[n]).map((n) => `Floor ${n}: ${tenants[n].map((t) => esc(t.name)).join(", ")}.`).join(" ");
      return `<p>✹ <strong>FIRE on floor ${f}</strong> — evacuate floors <strong>${floors.join(", ")}</strong>. ${who}</p>`;
    });
    box.innerHTML = lines.join("");
    box.hidden = false;
  }
  UP.live(building, (type, data) => {
    if (type !== "floor_state") return;
    states[data.floor] = data;
    render(data);
    banner();
    document.getElementById("last-update").textContent = UP.time(data.at);
  });
  UP.ready();
})();
