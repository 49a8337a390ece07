// Trident search page: plain JavaScript over the JSON API (POST /v1/search, GET /v1/index).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const keyHeader = document.querySelector('meta[name="trident-api-key-header"]').content || "X-API-Key";
  let indexLoaded = false;
  $("apikey").value = localStorage.getItem("trident-api-key") || "";

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("apikey").value.trim();
    if (key) { h[keyHeader] = key; localStorage.setItem("trident-api-key", key); }
    return h;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  async function loadIndex() {
    if (indexLoaded) return;
    const resp = await fetch("/v1/index", { headers: headers() });
    if (!resp.ok) return;
    const info = await resp.json();
    indexLoaded = true;
    $("index-info").textContent = `${info.doc_count} documents · ${info.retrievers.join(", ")}`;
    const mode = $("mode");
    for (const r of info.retrievers) mode.append(el("option", { value: r }, r));
  }

  function filters() {
    const text = $("filters").value.trim();
    return text ? JSON.parse(text) : {};
  }

  function body() {
    const b = { query: $("q").value, mode: $("mode").value, k: Number($("k").value) || 10, explain: true };
    const f = filters();
    if (Object.keys(f).length) b.filters = f;
    if (b.mode === "hybrid") {
      const fusion = {};
      if ($("fusion").value) fusion.method = $("fusion").value;
      if ($("normalization").value) fusion.normalization = $("normalization").value;
      if (Object.keys(fusion).length) b.fusion = fusion;
    }
    if ($("min-score").value !== "") b.min_score = Number($("min-score").value);
    const facets = $("facets").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (facets.length) b.facets = facets;
    if ($("collapse").value.trim()) b.collapse = { field: $("collapse").value.trim(), inner_hits: 2 };
    return b;
  }

  function explainTable(hit, fusion) {
    // RRF terms are 1/(k + rank): the bar shows them relative to rank 1's term, 1/(k + 1).
    const unit = fusion && fusion.method === "rrf" ? 1 / ((fusion.rrf_k || 0) + 1) : 1;
    const rows = Object.entries(hit.explain || {}).map(([name, e]) => {
      const pct = Math.max(0, Math.min(1, e.normalized_score / unit)) * 100;
      return el("tr", { class: "explain-row" },
        el("td", {}, name),
        el("td", {}, e.rank === null ? "—" : `#${e.rank}`),
        el("td", {}, e.raw_score === null ? "not retrieved" : `raw ${e.raw_score.toFixed(3)}`),
        el("td", { class: "bar-cell" }, el("div", { class: "bar", role: "img",
          "aria-label": `${name} normalised ${e.normalized_score.toFixed(3)}` },
          el("span", { style: `width:${pct.toFixed(1)}%` }))),
        el("td", {}, `+${e.weighted_score.toFixed(4)}`));
    });
    const final = hit.normalized_score === null || hit.normalized_score === undefined ? ""
      : ` · final ${hit.normalized_score.toFixed(3)} on [0, 1]`;
    return el("details", { class: "explain" }, el("summary", {}, `Why this rank (score ${hit.score.toFixed(4)}${final})`),
      el("table", {}, el("tbody", {}, ...rows)));
  }

  function card(hit, fusion) {
    const snippet = (hit.text || "").slice(0, 280) + ((hit.text || "").length > 280 ? "…" : "");
    const meta = Object.entries(hit.metadata || {}).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(" · ");
    const inner = (hit.inner_hits || []).map((h) => el("li", {}, `${h.title} (#${h.rank})`));
    return el("li", { class: "hit", "data-id": hit.id },
      el("h2", {}, el("a", { href: `/v1/documents/${encodeURIComponent(hit.id)}` }, `${hit.rank}. ${hit.title || hit.id}`)),
      el("div", { class: "meta" }, meta),
      snippet ? el("p", {}, snippet) : null,
      inner.length ? el("ul", { class: "inner" }, ...inner) : null,
      explainTable(hit, fusion));
  }

  function toggleFacet(field, value) {
    const f = filters();
    if (JSON.stringify(f[field]) === JSON.stringify(value)) delete f[field]; else f[field] = value;
    $("filters").value = Object.keys(f).length ? JSON.stringify(f) : "";
    run();
  }

  function facetList(facets) {
    const box = $("facet-list");
    box.replaceChildren();
    const active = filters();
    for (const [field, res] of Object.entries(facets || {})) {
      const buttons = (res.values || []).map((v) => el("button", {
        type: "button", class: "facet-value", "data-field": field, "data-value": JSON.stringify(v.value),
        "aria-pressed": String(JSON.stringify(active[field]) === JSON.stringify(v.value)),
        onclick: () => toggleFacet(field, v.value),
      }, el("span", {}, String(v.value)), el("span", {}, `${v.count} (${v.candidates})`)));
      const ranges = (res.ranges || []).map((b) => el("div", { class: "muted" }, `${b.key}: ${b.count} (${b.candidates})`));
      box.append(el("section", { class: "facet" }, el("h3", {}, field), ...buttons, ...ranges));
    }
  }

  async function run(event) {
    if (event) event.preventDefault();
    const status = $("status");
    status.className = "";
    let b;
    try { b = body(); } catch (e) { status.className = "error"; status.textContent = `Filters are not valid JSON: ${e.message}`; return; }
    status.textContent = "Searching…";
    await loadIndex();
    const resp = await fetch("/v1/search", { method: "POST", headers: headers(), body: JSON.stringify(b) });
    const data = await resp.json();
    if (!resp.ok) {
      status.className = "error";
      const err = data.error || {};
      status.textContent = `${resp.status}: ${err.message || "error"}${err.field ? ` (${err.field})` : ""}`;
      return;
    }
    const how = data.fusion ? `${data.fusion.method}${data.fusion.normalization ? "/" + data.fusion.normalization : ""}` : data.mode;
    status.textContent = `${data.total} results · mode ${data.mode} · ${how}${data.warnings.length ? " · " + data.warnings.join("; ") : ""}`;
    $("results").replaceChildren(...data.hits.map((h) => card(h, data.fusion)));
    facetList(data.facets);
    $("timings").textContent = "Timings (ms): " + Object.entries(data.timings_ms).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(" · ");
  }

  $("search").addEventListener("submit", run);
  for (const id of ["mode", "fusion", "normalization"]) $(id).addEventListener("change", () => { if ($("q").value) run(); });
  loadIndex();
})();
