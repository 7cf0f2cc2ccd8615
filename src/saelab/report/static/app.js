// saelab report: draws the plotly figures, the feature table (DataTables) and feature cards.
// Data comes from the JSON blocks of this page; plotly.js and DataTables are inlined above.
const $id = (id) => document.getElementById(id);
const json = (id) => JSON.parse($id(id).textContent);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => (
  { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const INT = new Intl.NumberFormat("en");
const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v)) ? "–"
  : (typeof v === "number" ? (Number.isInteger(v) ? INT.format(v) : v.toPrecision(d)) : esc(v));
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const data = json("report-data");
const drawn = new Set();

function drawFigure(id, into) {
  const el = $id(into || id);
  if (!el || drawn.has(into || id)) return;
  const fig = json(id);
  Plotly.newPlot(el, fig.data, fig.layout, PLOT_CONFIG);
  drawn.add(into || id);
}

// ---- feature cards ------------------------------------------------------------------------
function pValue(p, lp) {
  if (p === null || p === undefined) return "–";
  return p > 0 ? p.toPrecision(2) : "1e" + Math.round(lp);
}

function tokensHtml(ctx, peak) {
  return ctx.tokens.map((t, i) => {
    const a = ctx.acts[i] || 0;
    const level = peak > 0 ? Math.max(0, Math.min(1, a / peak)) : 0;
    const isPeak = ctx.start + i === ctx.position ? " peak" : "";
    const text = esc(t).replace(/\n/g, "↵").replace(/ /g, "&nbsp;");
    return `<span class="tok${isPeak}" style="background:rgba(234,88,12,${level.toFixed(3)})"`
      + ` title="${esc(t)}: ${a.toPrecision(3)}">${text || "&nbsp;"}</span>`;
  }).join("");
}

function contextsHtml(card, kind) {
  const rows = card.contexts.filter((c) => c.kind === kind);
  if (!rows.length) return kind === "top"
    ? '<p class="empty">No context: the feature never fires on these texts.</p>' : "";
  return '<table class="contexts">' + rows.map((c) =>
    `<tr><td class="num">${kind === "top" ? "" : "q" + c.quantile.toFixed(1) + " "}${c.value.toPrecision(3)}</td>`
    + `<td class="pid">${esc(c.prompt_id)}</td><td class="toks">${tokensHtml(c, card.max_value)}</td></tr>`
  ).join("") + "</table>";
}

function lensHtml(lens) {
  if (!lens || !lens.promoted) return '<p class="empty">No logit lens (SAE off the residual stream width).</p>';
  const chips = (toks, vals) => toks.map((t, i) =>
    `<span class="chip" title="${vals[i].toFixed(3)}">${esc(t).replace(/ /g, "&nbsp;")}</span>`).join(" ");
  return `<p><b>promotes</b> ${chips(lens.promoted, lens.promoted_logits)}</p>`
    + `<p><b>suppresses</b> ${chips(lens.suppressed, lens.suppressed_logits)}</p>`;
}

function statsHtml(row) {
  if (!row) return "";
  const g = data.contrast ? data.contrast.groups : { a: "A", b: "B" };
  return `<table class="plain"><tr><th></th><th>${esc(g.a)}</th><th>${esc(g.b)}</th></tr>`
    + `<tr><td>mean</td><td>${fmt(row.mean_a)}</td><td>${fmt(row.mean_b)}</td></tr>`
    + (row.sd_a !== undefined ? `<tr><td>SD</td><td>${fmt(row.sd_a)}</td><td>${fmt(row.sd_b)}</td></tr>` : "")
    + `<tr><td>prompts firing</td><td>${fmt(row.active_a)}</td><td>${fmt(row.active_b)}</td></tr></table>`
    + `<p>d ${fmt(row.cohen_d)}${row.hedges_g !== undefined ? ", g " + fmt(row.hedges_g) : ""}, AUC ${fmt(row.auc)},`
    + ` p ${pValue(row.p_t ?? (row.log10_p_t === null ? null : Math.pow(10, row.log10_p_t)), row.log10_p_t)},`
    + ` q ${fmt(row.q, 2)} (per hook ${fmt(row.q_hook, 2)})`
    + `${row.significant ? ' <span class="sig">significant</span>' : ""}${row.tested === false ? " (not tested)" : ""}</p>`;
}

function patchHtml(rows) {
  if (!rows || !rows.length) return "";
  return '<table class="plain"><tr><th>edit</th><th>group</th><th>n</th><th>mean KL</th><th>change of logp diff (95% CI)</th></tr>'
    + rows.map((r) => `<tr><td><code>${esc(r.edit)}</code></td><td>${esc(r.group)}</td><td>${fmt(r.n)}</td>`
      + `<td>${fmt(r.mean_kl)}</td><td>${fmt(r.delta_logp_diff)}${r.ci95 ? ` (${fmt(r.ci95[0])} to ${fmt(r.ci95[1])})` : ""}</td></tr>`).join("")
    + "</table>";
}

function openCard(hook, feature, row) {
  const card = data.cards[hook + ":" + feature];
  const panel = $id("card");
  let html = `<button class="close" onclick="document.getElementById('card').hidden=true">×</button>`
    + `<h2>${esc(hook)} · feature ${feature}</h2>`;
  if (!card) {
    html += `<p class="empty">No card yet for this feature: <code>saelab inspect ${esc(data.run)}`
      + ` --hook ${esc(hook)} --features ${feature}</code></p>` + statsHtml(row);
  } else {
    const means = Object.entries(card.group_means || {});
    html += `<p>fires on ${fmt(card.n_fire)} of ${fmt(card.n_tokens)} tokens (density ${fmt(card.density)}),`
      + ` in ${fmt(card.n_prompts_fire)} of ${fmt(card.n_prompts)} contexts; max ${fmt(card.max_value)}`
      + ` <span class="dim">(${esc(card.source)})</span></p>`
      + (means.length ? `<p>mean per group (${esc(card.pool)} over tokens): `
        + means.map(([g, m]) => `${esc(g)} ${fmt(m)}`).join(", ") + "</p>" : "")
      + '<div id="card-hist" class="fig small"></div>'
      + "<h3>top contexts</h3>" + contextsHtml(card, "top")
      + "<h3>lower quantiles</h3>" + (contextsHtml(card, "quantile") || '<p class="empty">none</p>')
      + "<h3>logit lens</h3>" + lensHtml(card.lens)
      + (card.contrast || row ? "<h3>contrast</h3>" + statsHtml(card.contrast || row) : "")
      + (card.patch && card.patch.length ? "<h3>patch effects</h3>" + patchHtml(card.patch) : "");
  }
  panel.innerHTML = html;
  panel.hidden = false;
  panel.scrollTop = 0;
  if (card && card.hist_counts.length) {
    const e = card.hist_edges;
    const x = card.hist_counts.map((_, i) => (e[i] + e[i + 1]) / 2);
    Plotly.newPlot("card-hist", [{ type: "bar", x, y: card.hist_counts, width: e[1] - e[0],
      marker: { color: "#ea580c" }, hovertemplate: "%{x:.3g}: %{y} tokens<extra></extra>" }],
    { title: { text: "non-zero activations", font: { size: 13 } }, height: 220,
      margin: { l: 50, r: 10, t: 30, b: 35 }, template: "plotly_white", bargap: 0.05,
      xaxis: { title: { text: "activation" } }, yaxis: { title: { text: "tokens" } } }, PLOT_CONFIG);
  }
}

// ---- contrast: volcano per hook and the feature table ----------------------------------------
function setupVolcano() {
  const c = data.contrast;
  if (!c || !c.volcanoes.length) return;
  const sel = $id("volcano-hook");
  sel.innerHTML = c.volcanoes.map((v, i) => `<option value="${i}">${esc(v.title)}</option>`).join("");
  const show = () => {
    const v = c.volcanoes[+sel.value];
    const fig = json(v.id);
    Plotly.react("volcano", fig.data, fig.layout, PLOT_CONFIG);
    const el = $id("volcano");
    el.removeAllListeners && el.removeAllListeners("plotly_click");
    el.on("plotly_click", (ev) => {
      const pt = ev.points[0];
      openCard(v.hook, pt.customdata, findRow(v.source, v.hook, pt.customdata));
    });
  };
  sel.addEventListener("change", show);
  show();
}

let table = null;
let rows = [];
let colIndex = {};

function findRow(source, hook, feature) {
  const r = rows.find((x) => x[colIndex.hook] === hook && x[colIndex.feature] === feature
    && x[colIndex.source] === source);
  if (!r) return null;
  const o = {};
  for (const [k, i] of Object.entries(colIndex)) o[k] = r[i];
  return o;
}

function setupTable(DataTable) {
  const t = json("table-data");
  const cols = t.columns;
  cols.forEach((c, i) => { colIndex[c] = i; });
  // text columns come as levels + index, booleans as 1/0
  const columnsData = cols.map((c) => {
    const d = t.data[c];
    return d && d.levels ? d.index.map((i) => d.levels[i]) : d;
  });
  const n = columnsData[0].length;
  rows = new Array(n);
  for (let r = 0; r < n; r++) rows[r] = columnsData.map((d) => d[r]);
  const hasCard = (r) => Object.prototype.hasOwnProperty.call(data.cards, r[colIndex.hook] + ":" + r[colIndex.feature]);
  // Explicit types and display-only renderers: DataTables then neither detects types nor
  // renders 100,000 x 13 cells for sorting; only hook and feature are searched as text.
  const num = (d) => ({ data: colIndex[d], title: d, type: "num", searchable: false,
    render: { display: (v) => fmt(v) } });
  const columns = [
    { data: colIndex.source, title: "source", type: "string" },
    { data: colIndex.hook, title: "hook", type: "string" },
    { data: colIndex.feature, title: "feature", type: "num",
      render: { display: (v, _t, r) => `${v}${hasCard(r) ? ' <span class="has-card" title="card stored">●</span>' : ""}` } },
    num("active_a"), num("active_b"), num("mean_a"), num("mean_b"), num("cohen_d"), num("auc"),
    // untested features (no p or q) sort after every tested one
    { data: colIndex.log10_p_t, title: "p", type: "num", searchable: false,
      render: { display: (v) => pValue(v === null ? null : Math.pow(10, v), v), sort: (v) => v ?? Infinity } },
    { data: colIndex.q, title: "q", type: "num", searchable: false,
      render: { display: (v) => fmt(v, 2), sort: (v) => v ?? Infinity } },
    { data: colIndex.q_hook, title: "q (hook)", type: "num", searchable: false,
      render: { display: (v) => fmt(v, 2), sort: (v) => v ?? Infinity } },
    { data: colIndex.significant, title: "sig.", type: "string", searchable: false,
      render: { display: (v) => (v ? "✔" : "") } },
  ];
  const hookSel = $id("filter-hook");
  const hooks = t.data.hook.levels || [...new Set(t.data.hook)];
  hookSel.innerHTML = '<option value="">all hooks</option>' + hooks.map((h) => `<option>${esc(h)}</option>`).join("");
  // the filter controls are read once per draw (settings.iDraw), not once per row
  let seen = -1;
  let f = null;
  DataTable.ext.search.push((settings, _searchData, index) => {
    if (settings.nTable.id !== "features") return true;
    if (settings.iDraw !== seen) {
      seen = settings.iDraw;
      const d = parseFloat($id("filter-d").value);
      f = { hook: hookSel.value, sig: $id("filter-sig").checked, card: $id("filter-card").checked,
        minD: Number.isNaN(d) ? null : d };
      f.any = f.hook || f.sig || f.card || f.minD !== null;
    }
    if (!f.any) return true;
    const r = rows[index];
    if (f.hook && r[colIndex.hook] !== f.hook) return false;
    if (f.sig && !r[colIndex.significant]) return false;
    if (f.card && !hasCard(r)) return false;
    if (f.minD !== null && !(Math.abs(r[colIndex.cohen_d] ?? 0) >= f.minD)) return false;
    return true;
  });
  table = new DataTable("#features", {
    // autoWidth off: measuring columns would render every row's cells
    data: rows, columns, deferRender: true, autoWidth: false, pageLength: 25, searchDelay: 150,
    order: [[colIndex.q !== undefined ? 10 : 2, "asc"]],
    language: { search: "search:" },
  });
  for (const id of ["filter-hook", "filter-sig", "filter-card", "filter-d"]) {
    $id(id).addEventListener(id === "filter-d" ? "input" : "change", () => table.draw());
  }
  $id("features").querySelector("tbody").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr");
    if (!tr) return;
    const r = table.row(tr).data();
    if (!r) return;
    const o = {};
    for (const [k, i] of Object.entries(colIndex)) o[k] = r[i];
    openCard(o.hook, o.feature, o);
  });
  performance.mark("table-ready");
}

async function loadDataTables() {
  const b64 = $id("dt-bundle").textContent.trim();
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "text/javascript" }));
  try {
    return await import(url);
  } finally {
    URL.revokeObjectURL(url);
  }
}

async function main() {
  performance.mark("app-start");
  if ($id("table-data")) {
    const mod = await loadDataTables();
    performance.mark("datatables-loaded");
    setupTable(mod.default);
  }
  for (const id of data.figures) drawFigure(id, id.replace(/^json-/, ""));
  setupVolcano();
  performance.mark("figures-drawn");
  window.saelabReport = { table: () => table, openCard, ready: true };
  document.body.dataset.ready = "1";
}

main();
