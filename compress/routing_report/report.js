// The routing report's views, drawn as SVG from the data embedded in the page (no network, no
// library): expert usage heatmaps, per-layer summaries, domain divergence, token-level routing,
// layer comparison, derived models against their statistics, and size frontiers.
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
DATA.statistics.forEach((s) => {  // per MoE layer, in the order of the per-expert arrays
  s.layers = s.summary.layers.map((l) => l.layer);
  s.tokens = s.summary.layers.map((l) => l.tokens);
});
const SVG = "http://www.w3.org/2000/svg";
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const STATE_COLOURS = {kept: "#2a9d8f", dropped: "#d9d9d9", merged: "#e76f51", team: "#457b9d"};

function el(tag, attrs = {}, parent = null, text = null) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
  const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function hue(index) { return `hsl(${(index * 137.508) % 360},65%,72%)`; }
function fmt(x) { return Number.isInteger(x) ? x.toLocaleString("en") : x.toPrecision(4); }
function pct(x) { return (100 * x).toFixed(2) + "%"; }

// --- tooltip: any element with data-tip shows it on hover ------------------------------------------
const tooltip = el("div", {id: "tooltip", role: "tooltip"}, document.body);
document.addEventListener("mouseover", (event) => {
  const target = event.target.closest("[data-tip]");
  if (!target) { tooltip.style.display = "none"; return; }
  tooltip.textContent = target.dataset.tip;
  tooltip.style.display = "block";
});
document.addEventListener("mousemove", (event) => {
  tooltip.style.left = Math.min(event.pageX + 14, window.scrollX + window.innerWidth - tooltip.offsetWidth - 8) + "px";
  tooltip.style.top = event.pageY + 14 + "px";
});

// --- one statistics file's numbers -------------------------------------------------------------------
function expertNumbers(s, li, e) {
  const sel = s.selections[li][e];
  return `${fmt(sel)} selections (${pct(sel / Math.max(s.tokens[li], 1))} of tokens) · gate mass ${fmt(s.gate_mass[li][e])} · ` +
    `REAP saliency ${fmt(s.reap[li][e])}`;
}

function expertTip(s, li, e) { return `${s.name} · layer ${s.layers[li]} · expert ${e}: ${expertNumbers(s, li, e)}`; }

const METRICS = {
  usage: {label: "usage rate (share of tokens)", value: (s, li, e) => s.selections[li][e] / Math.max(s.tokens[li], 1)},
  gate_mass: {label: "gate mass (summed routing weight)", value: (s, li, e) => s.gate_mass[li][e]},
  reap: {label: "REAP saliency (mean g·‖f(x)‖)", value: (s, li, e) => s.reap[li][e]},
};

function heatmap(parent, rows, columns, colour, tip) {
  const cell = Math.max(3, Math.min(18, Math.floor(900 / columns))), height = Math.max(8, cell);
  const left = 44, top = 18;
  const svg = el("svg:svg", {width: left + columns * cell + 4, height: top + rows.length * height + 4, class: "heatmap"}, parent);
  const step = Math.ceil(columns / Math.floor(columns * cell / 40));
  for (let e = 0; e < columns; e += step) el("svg:text", {x: left + e * cell + cell / 2, y: 12, class: "axis"}, svg, e);
  const labelEvery = Math.ceil(11 / height);
  rows.forEach((row, r) => {
    if (r % labelEvery === 0) el("svg:text", {x: left - 4, y: top + r * height + Math.min(height, 11) * 0.8, class: "axis end"}, svg, row.label);
    for (let e = 0; e < row.columns; e++) {
      el("svg:rect", {x: left + e * cell, y: top + r * height, width: cell - (cell > 5 ? 1 : 0), height: height - 1,
        fill: colour(r, e), "data-layer": row.label, "data-expert": e, "data-tip": tip(r, e)}, svg);
    }
  });
  return svg;
}

function usageHeatmap(parent, s, metric) {
  const m = METRICS[metric];
  let max = 0;
  s.layers.forEach((_, li) => s.selections[li].forEach((_, e) => { max = Math.max(max, m.value(s, li, e)); }));
  const rows = s.layers.map((layer, li) => ({label: layer, columns: s.selections[li].length}));
  const columns = Math.max(...rows.map((row) => row.columns));
  heatmap(parent, rows, columns, (li, e) => viridis(max ? m.value(s, li, e) / max : 0), (li, e) => expertTip(s, li, e));
  return max;
}

// --- charts ---------------------------------------------------------------------------------------------
function tick(v) { return Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") : String(+v.toPrecision(3)); }

function lineChart(parent, series, options) {
  // y on a log scale for perplexities (as `compress compare --frontier`), else linear from 0
  const width = options.width || 520, height = options.height || 220, pad = {l: 58, r: 12, t: 22, b: 36};
  const T = options.log ? Math.log10 : (v) => v, inverse = options.log ? (v) => 10 ** v : (v) => v;
  const points = [...series.flatMap((line) => line.points), ...(options.marks || [])];
  const xs = points.map((p) => p[0]), ys = points.map((p) => T(p[1]));
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), options.log ? Math.min(...ys) : Math.min(0, ...ys), Math.max(...ys)];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) y1 = y0 + 1;
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r), Y = (y) => height - pad.b - (T(y) - y0) / (y1 - y0) * (height - pad.t - pad.b);
  const svg = el("svg:svg", {width, height, class: "chart"}, parent);
  el("svg:text", {x: pad.l, y: 14, class: "title"}, svg, options.title || "");
  el("svg:line", {x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, class: "frame"}, svg);
  el("svg:line", {x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b, class: "frame"}, svg);
  [y0, (y0 + y1) / 2, y1].map(inverse).forEach((y) => el("svg:text", {x: pad.l - 4, y: Y(y) + 4, class: "axis end"}, svg, tick(y)));
  const xTicks = options.integerX ? [...new Set(xs)] : [x0, (x0 + x1) / 2, x1];
  xTicks.forEach((x) => el("svg:text", {x: X(x), y: height - pad.b + 14, class: "axis"}, svg, tick(x)));
  el("svg:text", {x: (pad.l + width) / 2, y: height - 4, class: "axis"}, svg, options.xLabel || "");
  series.forEach((line, i) => {
    const colour = line.colour || hue(i);
    el("svg:polyline", {points: line.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), stroke: colour, class: "series"}, svg);
    line.points.forEach((p) => el("svg:circle", {cx: X(p[0]), cy: Y(p[1]), r: 4, fill: colour, "data-tip": p[2]}, svg));
  });
  (options.marks || []).forEach((p) => el("svg:path", {d: `M${X(p[0])},${Y(p[1]) - 7} l6,12 h-12 z`, class: "mark", "data-tip": p[2]}, svg));
  if (series.length > 1) {
    const legend = el("p", {class: "legend"}, parent);
    series.forEach((line, i) => { el("span", {style: `background:${line.colour || hue(i)}`}, legend); legend.append(line.name); });
  }
  return svg;
}

function table(parent, head, rows, attrs = {}) {
  const t = el("table", attrs, parent);
  const tr = el("tr", {}, el("thead", {}, t));
  head.forEach((h) => el("th", {}, tr, h));
  const body = el("tbody", {}, t);
  rows.forEach((row) => { const r = el("tr", {}, body); row.forEach((c) => el("td", {}, r, c)); });
  return t;
}

function select(parent, label, options, onchange) {
  const wrap = el("label", {}, parent, label + " ");
  const s = el("select", {}, wrap);
  options.forEach(([value, text]) => el("option", {value}, s, text));
  s.addEventListener("change", () => onchange(s.value));
  return s;
}

// --- views ----------------------------------------------------------------------------------------------
const VIEWS = [];
function view(id, title, when, draw) { VIEWS.push({id, title, when, draw}); }

view("usage", "Expert usage per layer", () => DATA.statistics.length, (root) => {
  el("p", {class: "note"}, root, "Rows are MoE layers, columns experts. Hover a cell for its selections, gate mass and REAP saliency.");
  const holder = el("div", {class: "sides"});
  const draw = (metric) => {
    holder.replaceChildren();
    DATA.statistics.forEach((s) => {
      const box = el("div", {class: "panel"}, holder);
      el("h3", {}, box, s.name);
      el("p", {class: "note"}, box, s.header);
      const max = usageHeatmap(box, s, metric);
      el("p", {class: "scale"}, box, `0 `).append(el("span"), ` ${tick(max)} ${METRICS[metric].label.split(" (")[0]} (rows: layers, columns: experts)`);
    });
  };
  select(root, "colour by", Object.entries(METRICS).map(([key, m]) => [key, m.label]), draw);
  root.appendChild(holder);
  draw("usage");
});

view("summary", "Per-layer summary (compress stats show)", () => DATA.statistics.length, (root) => {
  DATA.statistics.forEach((s, i) => {
    const box = el("div", {class: "panel"}, root);
    const sum = s.summary;
    el("h3", {}, box, s.name);
    el("p", {class: "note"}, box, `cold (< ${pct(sum.cold_threshold)} of tokens): ${sum.cold_experts_total} of ${sum.experts_total} experts`);
    table(box, ["layer", "tokens", "entropy (nats)", "entropy / ln E", "gini", "cold", "never selected", "top experts (share of tokens)"],
      sum.layers.map((l) => [l.layer, l.tokens, l.entropy_nats, l.entropy_normalized, l.gini, l.cold_experts.length, l.never_selected,
        l.top_experts.map((t) => `${t.expert} (${t.usage_rate})`).join(", ")]), {class: "summary", "data-statistics": i});
  });
});

view("divergence", "Domain divergence per layer", () => DATA.divergence.length, (root) => {
  el("p", {class: "note"}, root, "Jensen–Shannon divergence of expert usage in bits (0 = same, 1 = disjoint), as compress stats diff.");
  lineChart(root, DATA.divergence.map((d) => ({name: `${d.a} vs ${d.b}`,
    points: d.result.layers.map((l) => [l.layer, l.js_divergence_bits, `${d.a} vs ${d.b} · layer ${l.layer}: ${l.js_divergence_bits} bits`])})),
  {title: "JS divergence (bits) per layer", xLabel: "layer", width: 760, integerX: true});
  DATA.divergence.forEach((d) => {
    el("h3", {}, root, `${d.a} → ${d.b}: mean ${d.result.mean_js_divergence_bits} bits`);
    table(root, ["layer", "JS bits", "experts whose usage moved most (B − A, share of tokens)"], d.result.layers.map((l) =>
      [l.layer, l.js_divergence_bits, l.most_shifted.map((m) => `${m.expert} ${m.usage_rate_change > 0 ? "+" : ""}${pct(m.usage_rate_change)}`).join(", ")]), {class: "divergence"});
  });
});

view("tokens", "Token-level routing", () => DATA.traces.length, (root) => {
  el("p", {class: "note"}, root, "Each token's top-k experts per MoE layer, the first the heaviest; colour = that expert. Hover for weights and entropy.");
  DATA.traces.forEach((trace) => {
    const box = el("div", {class: "panel"}, root);
    el("h3", {}, box, `${trace.model}: “${trace.prompt}”`);
    const layers = Object.keys(trace.tokens[0].layers);
    const t = el("table", {class: "tokens"}, box);
    const head = el("tr", {}, el("thead", {}, t));
    ["#", "token", ...layers.map((l) => `L${l}`)].forEach((h) => el("th", {}, head, h));
    const body = el("tbody", {}, t);
    trace.tokens.forEach((token) => {
      const row = el("tr", {}, body);
      el("td", {}, row, token.position);
      el("td", {class: "token"}, row, JSON.stringify(token.token));
      layers.forEach((layer) => {
        const r = token.layers[layer];
        const order = r.experts.map((e, k) => [e, r.weights[k]]).sort((a, b) => b[1] - a[1]);
        el("td", {class: "route", style: `background:${hue(order[0][0])}`, "data-tip": `token ${JSON.stringify(token.token)} · layer ${layer}: ` +
          order.map(([e, w]) => `expert ${e} ${w.toFixed(3)}`).join(", ") + ` · entropy ${r.entropy.toFixed(3)} nats`}, row,
        order.map(([e]) => e).join(","));
      });
    });
  });
});

view("compare", "Layer comparison", () => DATA.statistics.length, (root) => {
  el("p", {class: "note"}, root, "Two layers, or one layer in two domains, side by side: each expert's usage rate, with the layer's summary.");
  const sides = el("div", {class: "sides"}, root);
  const choices = DATA.statistics.flatMap((s, si) => s.layers.map((layer, li) => [`${si}:${li}`, `${s.name} · layer ${layer}`]));
  // side B: the second file's first layer, or the first file's second layer
  const second = DATA.statistics.length > 1 ? "1:0" : choices[Math.min(1, choices.length - 1)][0];
  [choices[0][0], second].forEach((initial, side) => {
    const box = el("div", {class: "panel side", id: `compare-${side}`}, sides);
    const chart = el("div");
    const draw = (key) => {
      const [si, li] = key.split(":").map(Number), s = DATA.statistics[si], l = s.summary.layers[li];
      chart.replaceChildren();
      el("p", {class: "note"}, chart, `entropy ${l.entropy_nats} nats (${l.entropy_normalized} of ln E) · gini ${l.gini} · ` +
        `${l.cold_experts.length} cold · top ${l.top_experts.map((t) => t.expert).join(", ")}`);
      const rates = s.selections[li].map((c) => c / Math.max(s.tokens[li], 1)), max = Math.max(...rates, 1e-9);
      const width = 420, bar = width / rates.length, svg = el("svg:svg", {width, height: 140, class: "chart"}, chart);
      rates.forEach((rate, e) => el("svg:rect", {x: e * bar, y: 130 - 120 * rate / max, width: Math.max(bar - 1, 1), height: 120 * rate / max,
        fill: viridis(rate / max), "data-tip": expertTip(s, li, e)}, svg));
    };
    const s = select(box, `side ${side ? "B" : "A"}`, choices, draw);
    s.value = initial;
    box.appendChild(chart);
    draw(initial);
  });
});

view("derived", "Derived models", () => DATA.derived.length, (root) => {
  DATA.derived.forEach((d) => {
    const box = el("div", {class: "panel derived"}, root);
    el("h3", {}, box, `${d.name} — ${d.operation} of ${d.source}`);
    const p = d.parameters;
    if (p) el("p", {class: "note"}, box, `parameters ${fmt(p.before.total)} → ${fmt(p.after.total)}, active ${fmt(p.before.active)} → ${fmt(p.after.active)}`);
    if (d.command) el("pre", {}, box, d.command);
    if (d.units) {
      const s = d.statistics === null ? null : DATA.statistics[d.statistics];
      const states = new Set(Object.values(d.units).flat().map((u) => u.state));
      const legend = el("p", {class: "legend"}, box);
      Object.entries(STATE_COLOURS).filter(([state]) => states.has(state)).forEach(([state, colour]) => {
        el("span", {style: `background:${colour}`}, legend);
        legend.append(state + (state === "merged" || state === "team" ? " (one colour per group)" : ""));
      });
      if (s) legend.append(` · darker: less used in ${s.name}`);
      const layers = Object.keys(d.units);
      const rows = layers.map((layer) => ({label: layer, columns: d.units[layer].length}));
      const columns = Math.max(...rows.map((r) => r.columns));
      const usage = (r, e) => {
        const li = s ? s.layers.indexOf(Number(layers[r])) : -1;
        return li < 0 || e >= s.selections[li].length ? null : s.selections[li][e] / Math.max(s.tokens[li], 1);
      };
      heatmap(box, rows, columns, (r, e) => {
        // brightness: the expert's usage against twice the uniform rate top-k / E
        const u = d.units[layers[r]][e], rate = usage(r, e), uniform = s ? (s.summary.top_k || 1) / d.units[layers[r]].length : 1;
        const base = u.state === "merged" || u.state === "team" ? hue(u.group) : STATE_COLOURS[u.state];
        return rate === null ? base : `color-mix(in srgb, ${base} ${Math.round(35 + 65 * Math.min(rate / (2 * uniform), 1))}%, #000)`;
      }, (r, e) => {
        const u = d.units[layers[r]][e], li = s ? s.layers.indexOf(Number(layers[r])) : -1;
        const fate = u.state === "dropped" ? "dropped" : u.state === "kept" ? "kept" :
          `${u.state === "team" ? "in team" : "merged in group"} ${u.group} (${u.members.join(", ")})`;
        return `${d.name} · layer ${layers[r]} · expert ${e}: ${fate}` + (li >= 0 ? ` — ${expertNumbers(s, li, e)}` : "");
      });
    }
    d.evaluations.forEach((record) => {
      el("h4", {}, box, `${record.command}${record.base ? " against " + record.base : ""}${record.limited ? " — limited to " + record.limited : ""}`);
      if (record.changes.length) {
        table(box, ["task", "metric", "base", "this model", "change"], record.changes.map((c) =>
          [c.task, c.metric.split(",")[0], fmt(c.base), fmt(c.candidate), `${c.relative > 0 ? "+" : ""}${pct(c.relative)}`]), {class: "evaluation"});
      } else {
        table(box, ["task", "metric", "value"], Object.entries(record.tasks).flatMap(([task, metrics]) =>
          Object.entries(metrics).map(([m, v]) => [task, m.split(",")[0], fmt(v)])), {class: "evaluation"});
      }
      if (record.verdict) el("p", {}, box, `quality gate: ${record.verdict.passed ? "pass" : "fail"} (${record.verdict.band})`);
    });
    if (!d.evaluations.length) el("p", {class: "note"}, box, "No evaluation recorded: run compress eval, compare or gate on it.");
  });
});

view("frontier", "Size frontiers: quality against size", () => DATA.frontiers.length, (root) => {
  DATA.frontiers.forEach((f) => {
    const box = el("div", {class: "panel frontier"}, root);
    el("h3", {}, box, `${f.name} — ${f.of} frontier of ${f.source}`);
    if (f.command) el("pre", {}, box, f.command);
    const tasks = [...new Set(f.members.flatMap((m) => Object.keys(m.tasks)))];
    if (!tasks.length) el("p", {class: "note"}, box, "No evaluation recorded: run compress compare --base SOURCE --candidate each member --frontier.");
    tasks.forEach((task) => {
      const measured = f.members.filter((m) => m.tasks[task] && m.parameters);
      const metric = measured[0].tasks[task].metric;
      const points = measured.map((m) => [m.parameters / 1e6, m.tasks[task].value, `${m.name}: ${metric} ${fmt(m.tasks[task].value)} at ${fmt(m.parameters)} parameters`]);
      const base = f.base.tasks[task] !== undefined && f.base.parameters ? [[f.base.parameters / 1e6, f.base.tasks[task], `${f.base.name} (base): ${metric} ${fmt(f.base.tasks[task])}`]] : [];
      lineChart(box, [{name: task, points}], {title: `${task}: ${metric}${base.length ? " (▲ base)" : ""}`, xLabel: "parameters (M)",
        marks: base, log: metric.includes("perplexity"), width: 380});
    });
    table(box, ["model", "parameters", ...tasks], f.members.map((m) => [m.name, m.parameters ? fmt(m.parameters) : "—",
      ...tasks.map((t) => (m.tasks[t] ? fmt(m.tasks[t].value) : "—"))]), {class: "frontier-table"});
  });
});

// --- page -----------------------------------------------------------------------------------------------
const nav = document.getElementById("nav"), main = document.getElementById("views");
VIEWS.filter((v) => v.when()).forEach((v) => {
  const section = el("section", {id: v.id}, main);
  el("h2", {}, section, v.title);
  el("a", {href: `#${v.id}`}, nav, v.title);
  try {
    v.draw(section);
  } catch (error) {
    el("p", {class: "error"}, section, `this view failed: ${error}`);
    console.error(error);
  }
});
document.documentElement.dataset.renderedMs = performance.now().toFixed(1);
