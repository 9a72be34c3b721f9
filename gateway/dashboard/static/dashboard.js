// lendcore operator dashboard: htmx wiring (CSRF header, form reset) and the uPlot charts.
// No inline script in the pages: everything the browser runs is in the static files.
(function () {
  "use strict";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // Every htmx request carries the session's CSRF token (checked on every POST).
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  // A form that succeeded is emptied for the next entry (the blacklist's "add").
  document.addEventListener("htmx:afterRequest", function (event) {
    const form = event.detail.elt;
    if (event.detail.successful && form.matches && form.matches("form.reset-on-success")) {
      form.reset();
    }
  });

  // ---- charts ------------------------------------------------------------------------
  const PALETTE = ["#1f4fa3", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207"];
  const REFRESH_MS = 5000;
  const charts = {};

  function size(element) {
    return { width: Math.max(320, element.clientWidth), height: 200 };
  }

  function draw(id, seriesSpec, data) {
    const element = document.getElementById(id);
    if (!element) { return; }
    const signature = seriesSpec.map(function (s) { return s.label; }).join("|");
    const existing = charts[id];
    if (existing && existing.signature === signature) {
      existing.plot.setData(data);
      return;
    }
    if (existing) { existing.plot.destroy(); }
    const options = Object.assign(size(element), {
      series: [{}].concat(seriesSpec.map(function (s, i) {
        return { label: s.label, stroke: PALETTE[i % PALETTE.length], width: 1.5,
                 scale: s.scale || "y", spanGaps: false };
      })),
      axes: [{}, { scale: "y" }].concat(
        seriesSpec.some(function (s) { return s.scale === "ms"; })
          ? [{ scale: "ms", side: 1, grid: { show: false } }] : []),
      // One sample has no span: show the minute before it rather than years around it.
      scales: { x: { time: true, range: function (u, min, max) {
        return min === max ? [min - 60, max + 5] : [min, max];
      } } },
      legend: { live: false },
    });
    charts[id] = { signature: signature, plot: new uPlot(options, data, element) };
  }

  function render(payload) {
    const t = payload.t;
    const routes = payload.routes;
    const routeSeries = routes.map(function (r) { return { label: r.name }; });
    const perRoute = function (key) {
      return [t].concat(routes.map(function (r) { return r[key]; }));
    };
    draw("chart-rps", routeSeries, perRoute("requests_per_s"));
    draw("chart-errors", routeSeries, perRoute("error_pct"));
    draw("chart-p99", routeSeries, perRoute("p99_ms"));
    draw("chart-shards", [
      { label: "batches/s" },
      { label: "commit ms (mean)", scale: "ms" },
      { label: "Ray call p50 ms", scale: "ms" },
      { label: "Ray call p99 ms", scale: "ms" },
    ], [t, payload.shards.batches_per_s, payload.shards.commit_ms,
        payload.ray_call.p50_ms, payload.ray_call.p99_ms]);
    document.getElementById("charts").dataset.samples = String(t.length);
  }

  function refreshCharts(container) {
    fetch(container.dataset.src, { credentials: "same-origin", headers: { "HX-Request": "true" } })
      .then(function (response) {
        if (response.status === 401) { window.location.href = "/dashboard/login"; return null; }
        if (!response.ok) { throw new Error("charts: HTTP " + response.status); }
        return response.json();
      })
      .then(function (payload) { if (payload) { render(payload); } })
      .catch(function (error) { container.dataset.error = String(error); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const container = document.getElementById("charts");
    if (!container || typeof uPlot === "undefined") { return; }
    refreshCharts(container);
    window.setInterval(function () { refreshCharts(container); }, REFRESH_MS);
  });
})();
