/* Small wrapper around the vendored uPlot: time series in the building's timezone. */
"use strict";
const CHARTS = (() => {
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  function width(el) { return Math.max(280, el.clientWidth || 600); }
  /* series: [{label, t: [iso], v: [number|null]}] merged on a common time axis. */
  function lines(el, series, unit, opts = {}) {
    const times = [...new Set(series.flatMap((s) => s.t))].sort();
    const index = new Map(times.map((t, i) => [t, i]));
    const data = [times.map((t) => Date.parse(t) / 1000)];
    for (const s of series) {
      const col = new Array(times.length).fill(null);
      s.t.forEach((t, i) => { col[index.get(t)] = s.v[i]; });
      data.push(col);
    }
    const uSeries = [{}].concat(series.map((s, i) => ({
      label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
      value: (u, v) => (v === null ? "—" : `${v.toFixed(1)} ${unit}`),
      ...(opts.bars ? { paths: uPlot.paths.bars({ size: [0.7, 40] }), fill: "#1f77b4aa" } : {}),
    })));
    el.innerHTML = "";
    if (!times.length) { el.innerHTML = '<p class="muted">No data in this period.</p>'; return null; }
    return new uPlot({
      width: width(el), height: opts.height || 220, series: uSeries,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), UP.tz),
      axes: [{}, { label: unit, size: 60 }],
      /* a fixed window (opts.from/opts.to, ISO) keeps a short series from stretching the axis */
      scales: { x: opts.from ? { time: true, range: () => [Date.parse(opts.from) / 1000, Date.parse(opts.to || new Date().toISOString()) / 1000] } : { time: true }, y: opts.yMin === 0 ? { range: (u, lo, hi) => [0, hi * 1.1 || 1] } : {} },
      legend: { live: true },
    }, data, el);
  }
  return { lines };
})();
