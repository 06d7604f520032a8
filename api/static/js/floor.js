/* Floor view: 24-hour charts from the history API; zone loads live from floor states. */
"use strict";
(() => {
  const building = document.body.dataset.building;
  const floor = JSON.parse(document.getElementById("floor-data").textContent).floor;
  const to = new Date();
  const from = new Date(to.getTime() - 24 * 3600 * 1000);
  const jobs = [...document.querySelectorAll(".chart[data-metric]")].map(async (el) => {
    const metric = el.dataset.metric;
    const url = `/api/v1/buildings/${encodeURIComponent(building)}/floors/${floor}/history?metric=${metric}&step=5m&from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
    try {
      const h = await UP.getJSON(url);
      const series = h.series.map((s) => ({
        label: s.zone || s.sensor, t: h.t || s.t, v: metric === "load" ? s.max : s.avg,
      }));
      CHARTS.lines(el, series, el.dataset.unit, { yMin: 0, from: from.toISOString(), to: to.toISOString() });
    } catch (e) {
      el.textContent = `Could not load the chart: ${e.message}`;
    }
  });
  Promise.all(jobs).then(UP.ready);
  UP.live(building, (type, fs) => {
    if (type !== "floor_state" || fs.floor !== floor) return;
    for (const z of fs.zones) {
      const row = document.querySelector(`tr[data-zone="${CSS.escape(z.zone)}"]`);
      if (!row) continue;
      const pct = z.load_pct;
      row.className = pct === null ? "" : pct >= 100 ? "s-critical" : pct >= 90 ? "s-warning" : "";
      row.querySelector('[data-f="load"]').textContent = UP.num(z.load_kg_m2, 0, "kg/m²");
      row.querySelector('[data-f="pct"]').textContent = pct === null ? "? no fresh reading"
        : `${pct >= 100 ? "✖ " : pct >= 90 ? "⚠ " : ""}${UP.num(pct, 1, "%")}`;
    }
  });
})();
