/* Alerts view: acknowledge, shelve, reset through the API; reload on new events. */
"use strict";
(() => {
  const out = document.getElementById("action-status");
  const LABEL = { ack: "acknowledged", shelve: "shelved for 1 h", unshelve: "unshelved", reset: "reset" };
  document.getElementById("alerts").addEventListener("click", async (ev) => {
    const button = ev.target.closest("button[data-action]");
    if (!button) return;
    const { action, id } = button.dataset;
    button.disabled = true;
    out.textContent = `Asking the alert engine: ${action} alert ${id}…`;
    try {
      const body = action === "shelve" ? { duration_s: 3600 } : {};
      const alert = await UP.getJSON(`/api/v1/alerts/${id}/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      out.textContent = `✓ Alert ${id} ${LABEL[action]} (now ${alert.state}).`;
      setTimeout(() => location.reload(), 300);
    } catch (e) {
      out.textContent = `⚠ Alert ${id}: ${e.message}`;
      button.disabled = false;
    }
  });
  if (document.body.dataset.role === "operator") {
    let pending = null;
    UP.live(document.body.dataset.building, (type) => {
      if (type !== "alert_event" || pending) return;
      pending = setTimeout(() => location.reload(), 1000);
    });
  }
  UP.ready();
})();
