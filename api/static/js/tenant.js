/* Tenant view: 30-day chart, this month's bill, move-in check, live power and evacuation. */
"use strict";
(() => {
  const info = JSON.parse(document.getElementById("tenant-data").textContent);
  const q = (s) => encodeURIComponent(s);
  const base = `/api/v1/tenants/${q(info.tenant)}`;
  const chartEl = document.getElementById("chart-daily");
  const daily = UP.getJSON(`${base}/power?building=${q(info.building)}&step=1d&from=${q(chartEl.dataset.from)}`)
    .then((p) => {
      CHARTS.lines(chartEl, [{ label: "kWh per day", t: p.t, v: p.energy_kwh }], "kWh", { bars: true, yMin: 0, height: 240, from: chartEl.dataset.from, to: new Date(Date.now() + 86400e3).toISOString() });
      const total = p.energy_kwh.reduce((a, b) => a + (b || 0), 0);
      document.getElementById("daily-note").textContent = `${UP.num(total, 0, "kWh")} in ${p.t.length} days with data.`;
    })
    .catch((e) => { chartEl.textContent = `Could not load the chart: ${e.message}`; });
  const billTable = document.getElementById("bill");
  const bill = UP.getJSON(`${base}/bill?building=${q(info.building)}&month=${q(billTable.dataset.month)}`)
    .then((b) => {
      const rows = b.periods.map((p) => `<tr><td>${UP.esc(p.name)}</td><td class="r">${UP.num(p.price_per_kwh, 2)} ${b.currency}/kWh</td><td class="r">${UP.num(p.kwh, 1, "kWh")}</td><td class="r">${UP.num(p.cost, 2, b.currency)}</td></tr>`);
      billTable.tBodies[0].innerHTML = rows.join("") || '<tr><td colspan="4" class="muted">No energy this month yet.</td></tr>';
      billTable.tFoot.innerHTML = `<tr><th>Total</th><td></td><th class="r">${UP.num(b.total_kwh, 1, "kWh")}</th><th class="r">${UP.num(b.total_cost, 2, b.currency)}</th></tr>`;
      const peak = b.peak_demand_kw === null ? "no demand measured yet" : `peak 15-minute demand ${UP.num(b.peak_demand_kw, 0, "kW")} at ${UP.time(b.peak_demand_at)} = ${UP.num(b.contract_utilisation_pct, 0, "%")} of the ${UP.num(b.contracted_kw, 0, "kW")} contract`;
      document.getElementById("bill-extra").textContent = `Month in ${b.timezone}; ${peak}.`;
    })
    .catch((e) => { billTable.tBodies[0].innerHTML = `<tr><td colspan="4">Could not load the bill: ${UP.esc(e.message)}</td></tr>`; });
  Promise.all([daily, bill]).then(UP.ready);

  const form = document.getElementById("movein");
  const result = document.getElementById("movein-result");
  const NAMES = { zone_load: "Zone floor load", point_load: "Point load under the machine", height: "Height under the ceiling", floor_power: "Floor electrical capacity", tenant_contract: "Your contracted power" };
  const VERDICT = { ok: ["✓", "OK"], warn: ["⚠", "Check first"], refuse: ["✖", "No"] };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const zone = form.zone.selectedOptions[0];
    const body = { zone: data.get("zone") };
    for (const k of ["mass_kg", "footprint_m2", "height_m", "power_kw"]) body[k] = Number(data.get(k));
    result.innerHTML = "Checking…";
    try {
      const r = await UP.getJSON(`/api/v1/buildings/${q(form.dataset.building)}/floors/${zone.dataset.floor}/load-check`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const head = { ok: "Yes: the machine fits every limit.", warn: "Maybe: at least one check needs a closer look before move-in.", refuse: "No: the machine would exceed a limit." }[r.verdict];
      const rows = r.checks.map((c) => `<tr class="v-${c.verdict}"><td>${NAMES[c.name] || c.name}</td><td>${VERDICT[c.verdict][0]} ${VERDICT[c.verdict][1]}</td><td class="r">${UP.num(c.value, 1, c.unit)}</td><td class="r">${UP.num(c.limit, 1, c.unit)}</td><td class="r">${UP.num(c.margin, 1, c.unit)}</td><td>${UP.esc(c.reason)}</td></tr>`);
      result.innerHTML = `<p class="verdict v-${r.verdict}"><strong>${VERDICT[r.verdict][0]} ${head}</strong></p><table class="compact"><thead><tr><th>Check</th><th>Verdict</th><th class="r">After move-in</th><th class="r">Limit</th><th class="r">Margin</th><th>Why</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
    } catch (e) {
      result.textContent = `⚠ ${e.message}`;
    }
  });

  /* Live: power now and evacuation, from this page's own endpoint (no other tenant's data). */
  async function poll() {
    try {
      const s = await UP.getJSON(`/tenant/live.json?tenant=${q(info.tenant)}`);
      UP.status("on", "● live");
      document.getElementById("kw-now").textContent = UP.num(s.kw_now, 0, "kW");
      const box = document.getElementById("evacuation");
      box.hidden = !s.evacuations.length;
      document.getElementById("evacuation-text").innerHTML = s.evacuations.map((e) =>
        `✹ <strong>FIRE on floor ${e.fire_floor}</strong> — evacuate floors <strong>${e.floors.join(", ")}</strong>. Your space on floor ${e.yours.join(", ")} is in the evacuation zone: leave by the stairs now.`).join("<br>");
    } catch (e) {
      UP.status("off", "○ offline");
    }
  }
  poll();
  setInterval(poll, 3000);
})();
