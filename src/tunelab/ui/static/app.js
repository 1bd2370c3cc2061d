// tunelab ui: one page, hash routes, plain DOM and inline SVG charts; every number comes from the server,
// which reads the run directories. The address (#/run/<id>, #/compare/<ids>) and, for chat, localStorage
// hold all the page's state, so a reload shows the same thing.
"use strict";

const $main = document.getElementById("main");
let timers = [];           // polling of the current page, cleared on every route change
let routeToken = 0;        // a page that was left ignores the answers of its late requests

// -- small helpers ----------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false)
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
const enc = encodeURIComponent;
function fmt(x, d = 4) {
  if (x === null || x === undefined || x === "") return "-";
  if (typeof x === "number") return Number.isInteger(x) ? x.toLocaleString("en-US") : x.toFixed(d);
  return String(x);
}
function dur(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min`;
}
function stepText(r) {  // "12 / 40", or with epochs "12 (epoch 0.43 of 1)"
  if (r.step === null || r.step === undefined) return "-";
  if (r.max_steps > 0) return `${fmt(r.step)} / ${fmt(r.max_steps)}`;
  return r.epoch && !["finished", "failed"].includes(r.status) ? `${fmt(r.step)} (epoch ${(+r.epoch).toFixed(2)}/${r.epochs ?? "?"})` : fmt(r.step);
}
function badge(status, detail) { return h("span", {class: `badge ${status}`, "data-status": status, title: detail || ""}, status); }
function every(ms, fn) { const t = setInterval(fn, ms); timers.push(t); }
function table(cols, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, cols.map(c => h("th", {}, c)))),
    h("tbody", {}, rows.map(r => h("tr", {}, r.map(c => h("td", {}, c))))));
}
function copyButton(getText) {
  return h("button", {onclick: async (e) => {
    const text = getText();
    try { await navigator.clipboard.writeText(text); e.target.textContent = "copied"; }
    catch { const ta = h("textarea", {}, text); document.body.append(ta); ta.select(); document.execCommand("copy"); ta.remove(); e.target.textContent = "copied"; }
    setTimeout(() => e.target.textContent = "copy", 1500);
  }}, "copy");
}

// -- charts: inline SVG, drawn here -------------------------------------------------------------
const COLORS = ["#2f6fde", "#d4443b", "#2e9d5b", "#e09a1c", "#8e44ad", "#16a2b8", "#6b7380", "#c2185b"];
function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}
function tickLabel(v) {
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(1) : String(+v.toPrecision(4));
}
function lineChart({name, title, series, xlabel = "step"}) {
  const W = 460, H = 250, L = 58, R = 12, T = 24, B = 38;
  const ns = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; return e; };
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, "data-chart": name});
  svg.append(s("text", {x: L, y: 15, class: "title"}, title));
  const pts = series.flatMap(x => x.points);
  if (!pts.length) { svg.append(s("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no data yet")); return h("div", {class: "chart"}, svg); }
  let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const pad = (y1 - y0) * 0.06 || Math.abs(y0) * 0.05 || 1; y0 -= pad; y1 += pad;
  const X = v => L + (v - x0) / (x1 - x0) * (W - L - R), Y = v => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  for (const t of ticks(y0, y1)) {
    svg.append(s("line", {x1: L, x2: W - R, y1: Y(t), y2: Y(t), stroke: "#eceff3"}));
    svg.append(s("text", {x: L - 5, y: Y(t) + 4, "text-anchor": "end"}, tickLabel(t)));
  }
  for (const t of ticks(x0, x1, 6)) {
    if (t < x0 || t > x1) continue;
    svg.append(s("line", {x1: X(t), x2: X(t), y1: H - B, y2: H - B + 4, stroke: "#9aa4b4"}));
    svg.append(s("text", {x: X(t), y: H - B + 16, "text-anchor": "middle"}, tickLabel(t)));
  }
  svg.append(s("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9aa4b4"}));
  svg.append(s("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"}, xlabel));
  series.forEach((ser, i) => {
    const color = ser.color || COLORS[i % COLORS.length];
    const g = s("g", {"data-series": ser.label, "data-points": ser.points.length});
    if (ser.points.length > 1)
      g.append(s("path", {d: ser.points.map((p, k) => `${k ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(""),
                          fill: "none", stroke: color, "stroke-width": 1.6, "stroke-dasharray": ser.dash || ""}));
    if (ser.dots || ser.points.length === 1)
      for (const p of ser.points) g.append(s("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.6, fill: color}));
    svg.append(g);
    const lx = L + 8 + (i % 3) * 130, ly = T + 8 + Math.floor(i / 3) * 14;
    svg.append(s("rect", {x: lx, y: ly - 7, width: 10, height: 3, fill: color}));
    svg.append(s("text", {x: lx + 14, y: ly - 3}, ser.label));
  });
  return h("div", {class: "chart"}, svg);
}
function seriesOf(rows, split, key) {
  return rows.filter(r => r.split === split && typeof r[key] === "number").map(r => [r.step, r[key]]);
}

// -- router ---------------------------------------------------------------------------------
const routes = [
  [/^#\/run\/(.+)$/, m => runPage(decodeURIComponent(m[1]))],
  [/^#\/compare\/?(.*)$/, m => comparePage(m[1] ? m[1].split(",").map(decodeURIComponent) : [])],
  [/^#\/launch\/?(\w*)\??(.*)$/, m => launchPage(m[1] || "train", new URLSearchParams(m[2]))],
  [/^#\/chat/, () => chatPage()],
  [/^.*$/, () => boardPage()],
];
function route() {
  timers.forEach(clearInterval); timers = []; routeToken++;
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll("header nav a"))
    a.classList.toggle("active", hash.startsWith(a.getAttribute("href")) && (a.getAttribute("href") !== "#/" || hash === "#/" || hash.startsWith("#/run")));
  for (const [re, fn] of routes) { const m = hash.match(re); if (m) { $main.replaceChildren(); fn(m); return; } }
}
window.addEventListener("hashchange", route);

// -- the board: runs, experiments, sweeps, evaluations, jobs -----------------------------------------
const picked = new Set(JSON.parse(sessionStorage.getItem("picked") || "[]"));
function savePicked() { sessionStorage.setItem("picked", JSON.stringify([...picked])); }

function boardPage() {
  const token = routeToken;
  const body = h("div", {id: "board"});
  const compareBtn = h("button", {class: "primary", id: "compare-picked", onclick: () => location.hash = "#/compare/" + [...picked].map(enc).join(",")}, "Compare selected");
  $main.append(h("h1", {}, "Runs"), h("div", {class: "toolbar"}, compareBtn, h("a", {class: "button", href: "#/launch"}, "Launch a training…"),
    h("span", {class: "muted", id: "updated"}, "")), body);
  const render = (b) => {
    if (token !== routeToken) return;
    compareBtn.disabled = picked.size < 1;
    const runRows = b.runs.map(r => h("tr", {"data-run-id": r.id},
      h("td", {}, h("input", {type: "checkbox", checked: picked.has(r.id), onchange: e => { e.target.checked ? picked.add(r.id) : picked.delete(r.id); savePicked(); compareBtn.disabled = picked.size < 1; }})),
      h("td", {class: "wrap"}, h("a", {href: "#/run/" + enc(r.id)}, r.label.replace(/\//g, "/\u200b"))),  // may break after a /
      h("td", {class: "wrap"}, r.parent ? h("a", {href: "#/compare/" + b.runs.filter(x => x.parent && x.parent.id === r.parent.id).map(x => enc(x.id)).join(",")}, `${r.parent.kind} ${r.parent.name}`) : "-"),
      h("td", {class: "status"}, badge(r.status, r.detail), h("div", {class: "detail"}, r.detail || "")),
      h("td", {class: "stage"}, r.stage || "-"), h("td", {}, r.method || "-"), h("td", {}, r.model || "-"), h("td", {class: "wrap"}, r.data || "-"),
      h("td", {class: "num step"}, stepText(r)),
      h("td", {class: "num"}, fmt(r.best_val_loss)), h("td", {class: "num"}, r.peak_mem_mb ? fmt(Math.round(r.peak_mem_mb)) : "-"),
      h("td", {class: "num"}, dur(r.time_s))));
    const parts = [h("table", {id: "runs-table"}, h("thead", {}, h("tr", {}, ["", "run", "in", "status", "stage", "method", "model", "data", "step", "best val loss", "peak MB", "time"].map(c => h("th", {}, c)))),
      h("tbody", {}, runRows.length ? runRows : h("tr", {}, h("td", {colspan: 12, class: "muted"}, `no run under ${b.roots.join(", ")} yet`))))];
    if (b.experiments.length) parts.push(h("h2", {}, "Experiments"), table(["experiment", "status", "variants", "evaluations", ""],
      b.experiments.map(e => [e.label, badge(e.status, e.detail), `${e.runs.length}`, `${e.evals.length}`,
        h("a", {href: "#/compare/" + e.runs.map(enc).join(",")}, "compare")])));
    if (b.sweeps.length) parts.push(h("h2", {}, "Sweeps"), table(["sweep", "status", "trials", "best"],
      b.sweeps.map(s => [s.label, badge(s.status, s.detail), `${s.runs.length}`, s.best ? JSON.stringify(s.best.best_value ?? s.best.best ?? s.best) : "-"])));
    if (b.evals.length) parts.push(h("h2", {}, "Evaluations"), table(["evaluation", "task", "model", "status", "score"],
      b.evals.map(e => [e.label, e.task, e.model || "-", badge(e.status), (e.cells || [])[0] || "-"])));
    if (b.jobs.length) parts.push(h("h2", {}, "Launched from this board"), table(["job", "command", "state"],
      b.jobs.slice(0, 12).map(j => [j.target ? h("a", {href: "#/run/" + enc(j.target)}, j.id) : j.id, h("code", {}, j.command), h("span", {}, badge(j.state), " ", h("span", {class: "detail"}, j.error || ""))])));
    body.replaceChildren(...parts);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("roots").textContent = b.roots.join("  ");
  };
  const load = () => api("/api/board").then(render).catch(e => body.replaceChildren(h("p", {class: "error"}, e.message)));
  load(); every(2000, load);
}

// -- a run's page -----------------------------------------------------------------------------
function runPage(id) {
  const token = routeToken;
  let rows = [], status = null, defs = [], defsKey = "", samplesSeen = -1;
  const head = h("div"), charts = h("div", {class: "charts", id: "charts"}), samples = h("div", {id: "samples"}), rest = h("div");
  $main.append(head, h("h2", {}, "Training curves"), charts, samples, rest);
  const drawCharts = () => {  // which metrics each chart draws comes with the rows (views.charts: by the run's stage)
    charts.replaceChildren(...defs.map(c => lineChart({name: c.name, title: c.title,
      series: c.series.map(x => ({label: x.label, points: seriesOf(rows, x.split, x.key), dots: x.dots}))})));
  };
  const drawHead = (r) => {
    const buttons = [];
    if (r.job_detail && r.job_detail.state === "running")
      buttons.push(h("button", {class: "danger", id: "stop", onclick: async (e) => { e.target.disabled = true; await api("/api/stop", {job: r.job_detail.id}); refresh(); }}, "Stop"));
    if (r.resumable && !["running", "starting"].includes(r.status))
      buttons.push(h("button", {class: "primary", id: "resume", onclick: async (e) => { e.target.disabled = true;
        try { await api("/api/resume", {id}); } catch (err) { alert(err.message); } refresh(); }}, "Resume"));
    if (r.has_model) buttons.push(h("a", {class: "button", href: "#/chat", onclick: () => setChat({modelA: id})}, "Chat with it"));
    buttons.push(h("a", {class: "button", href: "#/launch/train?base=" + enc(id)}, "Launch with this config"));
    if (r.parent) buttons.push(h("a", {class: "button", href: "#/compare/" + enc(id)}, "Compare…"));
    head.replaceChildren(h("h1", {}, r.label, " ", badge(r.status, r.detail)),
      h("p", {class: "detail", id: "status-detail"}, r.detail || ""),
      h("div", {class: "stats"}, [["stage", r.stage], ["method", r.method], ["model", r.model], ["data", r.data], ["step", stepText(r)],
        ["best validation loss", fmt(r.best_val_loss)], ["peak memory MB", r.peak_mem_mb ? fmt(Math.round(r.peak_mem_mb)) : "-"],
        ["time", dur(r.time_s)], ["in", r.parent ? `${r.parent.kind} ${r.parent.name}` : "-"]].map(([k, v]) =>
          h("div", {class: "stat"}, h("div", {class: "label"}, k), h("div", {class: "value"}, v ?? "-")))),
      h("div", {class: "toolbar"}, buttons));
  };
  const drawRest = (r) => {
    const parts = [];
    if (r.error_text) parts.push(h("h2", {}, "Error"), h("pre", {class: "error", id: "error-text"}, r.error_text));
    if (r.job_detail) parts.push(h("h2", {}, "Launched from this board"), h("p", {}, h("code", {}, r.job_detail.command), " ", badge(r.job_detail.state)),
      h("pre", {id: "job-log"}, r.job_detail.log || ""));
    if (r.evals.length) {
      const preds = h("div", {id: "predictions"});
      parts.push(h("h2", {}, "Evaluations"), table(["evaluation", "task", ...(r.evals[0].columns || []), ""],
        r.evals.map(e => [e.label, e.task, ...(e.cells || []), e.has_predictions ? h("button", {onclick: () => showPredictions(e, preds)}, "predictions") : ""])), preds);
    }
    const ex = h("div", {id: "example"}, h("p", {class: "muted"}, "loading the example…"));
    parts.push(h("h2", {}, "Data"), dataStats(r.data_stats), h("h3", {}, "First training example (supervised tokens highlighted)"), ex);
    if (r.summary) parts.push(h("h2", {}, "Summary"), h("pre", {}, JSON.stringify(r.summary, null, 2)));
    parts.push(h("h2", {}, "Resolved config"), h("div", {class: "toolbar"}, copyButton(() => r.config_yaml || "")), h("pre", {id: "config"}, r.config_yaml || "(no config.yaml yet)"));
    if (r.has_model) {
      const out = h("input", {type: "text", size: 40, id: "export-output", value: r.label + "-export"});
      const dtype = h("select", {id: "export-dtype"}, ["auto", "fp32", "bf16", "fp16"].map(d => h("option", {value: d}, d)));
      const msg = h("span", {id: "export-msg"});
      parts.push(h("h2", {}, "Export"), h("p", {class: "muted"}, "Merge the adapter into the base weights and save a plain transformers model (tunelab export)."),
        h("div", {class: "toolbar"}, "output", out, "dtype", dtype, h("button", {id: "export", onclick: async () => {
          try { const j = await api("/api/export", {id, output: out.value, dtype: dtype.value}); msg.replaceChildren(h("span", {class: "ok"}, "started: "), h("code", {}, j.command)); }
          catch (e) { msg.replaceChildren(h("span", {class: "error"}, e.message)); } }}, "Export"), msg));
    }
    rest.replaceChildren(...parts);
    api("/api/example?id=" + enc(id)).then(x => {
      if (token !== routeToken) return;
      ex.replaceChildren(x.error ? h("p", {class: "muted"}, x.error) : h("div", {},
        h("p", {class: "muted"}, `${x.tokens} tokens, ${x.supervised_tokens} supervised; tokenizer: ${x.tokenizer}${x.cut ? "; cut for display" : ""}`),
        h("div", {class: "example"}, x.parts.map(p => h("span", {class: p.supervised ? "sup" : ""}, p.text)))));
    }).catch(e => ex.replaceChildren(h("p", {class: "error"}, e.message)));
  };
  let lastDetail = null;
  const refresh = () => api("/api/run?id=" + enc(id)).then(r => { if (token !== routeToken) return; status = r.status; drawHead(r); drawRest(r); lastDetail = r; });
  const poll = async () => {
    const m = await api(`/api/metrics?id=${enc(id)}&after=${rows.length}`);
    if (token !== routeToken) return;
    if (m.total < rows.length) { rows = []; return poll(); }  // resumed: rows after the checkpoint were dropped
    const key = JSON.stringify(m.charts);
    if (m.rows.length || key !== defsKey) { rows = rows.concat(m.rows); defs = m.charts; defsKey = key; drawCharts(); }
    if (m.samples !== samplesSeen && (m.samples > 0 || m.stage === "grpo")) {
      samplesSeen = m.samples;
      api(`/api/samples?id=${enc(id)}&limit=${SAMPLES_SHOWN}`).then(x => { if (token === routeToken) drawSamples(x, samples); }).catch(() => { samplesSeen = -1; });
    }
    if (m.status !== status) refresh();
  };
  drawCharts();
  refresh().then(poll).catch(e => head.replaceChildren(h("p", {class: "error"}, e.message)));
  every(2000, () => { if (["running", "starting"].includes(status) || rows.length === 0) poll().catch(() => {}); });
  every(5000, () => { if (lastDetail && lastDetail.job_detail && lastDetail.job_detail.state === "running") refresh(); });
}
function dataStats(s) {
  if (!s) return h("p", {class: "muted"}, "no data statistics yet");
  const tl = s.token_length || {}, out = s.examples_out || {};
  return table(["what", "value"], [["source", s.source], ["examples in", fmt(s.examples_in)], ["train / validation", `${fmt(out.train)} / ${fmt(out.validation)}`],
    ["dropped", Object.entries(s.dropped || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "none"],
    ["tokens (supervised fraction)", `${fmt(s.tokens)} (${s.supervised_fraction !== undefined ? (100 * s.supervised_fraction).toFixed(1) + "%" : "-"})`],
    ["tokens per example", `p50 ${tl.p50}, p90 ${tl.p90}, p99 ${tl.p99}, max ${tl.max}`], ["template / end of turn", `${s.template} / ${s.end_of_turn || "-"}`],
    ["fingerprint", s.data_fingerprint || "-"]], {class: "kv", id: "data-stats"});
}
// A GRPO run's samples.jsonl: every objective.sample_every steps, one prompt, its answer and its sampled
// completions with their rewards. Newest first; long texts folded. Text goes in as text, never as HTML.
const SAMPLES_SHOWN = 20, FOLD_CHARS = 320, FOLD_LINES = 5;
function folded(text, cls) {
  text = typeof text === "string" ? text : JSON.stringify(text, null, 1);
  const long = text.length > FOLD_CHARS || text.split("\n").length > FOLD_LINES;
  const box = h("div", {class: `fold ${cls || ""}${long ? " folded" : ""}`}, text);
  if (!long) return box;
  const more = h("button", {class: "link", onclick: () => { const f = box.classList.toggle("folded"); more.textContent = f ? `show all (${text.length} characters)` : "fold"; }},
    `show all (${text.length} characters)`);
  return h("div", {}, box, more);
}
function drawSamples(s, box) {
  if (!s.total) { box.replaceChildren(h("h2", {}, "Samples"), h("p", {class: "muted"}, "no samples yet (samples.jsonl: one every objective.sample_every steps)")); return; }
  const card = x => {
    const comps = x.completions || [];
    const names = ["reward", ...new Set(comps.flatMap(c => Object.keys(c)).filter(k => k !== "text" && k !== "reward"))];
    const mean = comps.length ? comps.reduce((a, c) => a + (+c.reward || 0), 0) / comps.length : null;
    return h("div", {class: "card sample", "data-step": x.step},
      h("div", {class: "toolbar"}, h("b", {}, `step ${x.step}`), h("span", {}, "answer ", h("code", {class: "answer"}, x.answer ?? "-")),
        h("span", {class: "muted"}, `${comps.length} completions, mean reward ${fmt(mean, 3)}`)),
      folded(x.prompt, "prompt"),
      table(["#", "completion", ...names], comps.map((c, i) => [i + 1, folded(c.text ?? "", "completion"),
        ...names.map(n => h("span", {class: `num${n === "reward" && c.reward > 0 ? " pred-correct" : ""}`}, fmt(c[n], 3)))]), {class: "completions"}));
  };
  box.replaceChildren(h("h2", {}, "Samples"),
    h("p", {class: "muted"}, `${s.total} logged in samples.jsonl (one prompt every objective.sample_every steps); ${s.rows.length < s.total ? `the latest ${s.rows.length}, ` : ""}newest first`),
    ...s.rows.map(card));
}
function showPredictions(ev, box) {
  let wrong = false, offset = 0;
  const load = async () => {
    const p = await api(`/api/predictions?id=${enc(ev.id)}&wrong=${wrong ? 1 : 0}&offset=${offset}&limit=50`);
    const cb = h("input", {type: "checkbox", id: "only-wrong", checked: wrong, onchange: e => { wrong = e.target.checked; offset = 0; load(); }});
    box.replaceChildren(h("h3", {}, `${ev.label}: ${p.total} predictions, ${p.wrong} wrong`),
      h("div", {class: "toolbar"}, h("label", {}, cb, " only the wrong ones"), h("span", {class: "muted"}, `showing ${p.rows.length} of ${p.matching}`),
        offset > 0 ? h("button", {onclick: () => { offset -= 50; load(); }}, "previous") : "",
        offset + 50 < p.matching ? h("button", {onclick: () => { offset += 50; load(); }}, "next") : ""),
      table(["id", "prompt", "prediction", "extracted", "gold", ""], p.rows.map(r => [r.id, h("div", {class: "long"}, r.prompt || ""), h("div", {class: "long"}, r.prediction || ""),
        r.extracted ?? "-", r.gold ?? "-", r.correct === true ? h("span", {class: "pred-correct"}, "✓") : r.correct === false ? h("span", {class: "pred-wrong"}, "✗") : "-"]), {id: "predictions-table"}));
  };
  load().catch(e => box.replaceChildren(h("p", {class: "error"}, e.message)));
}

// -- compare ------------------------------------------------------------------------------
function comparePage(ids) {
  const token = routeToken;
  if (!ids.length) {
    $main.append(h("h1", {}, "Compare runs"), h("p", {class: "muted"}, "Pick runs on the Runs page (the boxes in the first column), or here:"));
    const box = h("div");
    $main.append(box);
    api("/api/board").then(b => {
      const chosen = new Set();
      box.replaceChildren(...b.runs.map(r => h("div", {}, h("label", {}, h("input", {type: "checkbox", onchange: e => e.target.checked ? chosen.add(r.id) : chosen.delete(r.id)}), " ", r.label, " ", badge(r.status)))),
        h("div", {class: "toolbar"}, h("button", {class: "primary", onclick: () => location.hash = "#/compare/" + [...chosen].map(enc).join(",")}, "Compare")));
    });
    return;
  }
  const head = h("div"), charts = h("div", {class: "charts"}), tables = h("div");
  $main.append(head, charts, tables);
  let live = true;
  const load = () => api("/api/compare?ids=" + ids.map(enc).join(",")).then(c => {
    if (token !== routeToken) return;
    // as tunelab report draws them: loss charts hold the sft/pt runs (an alignment loss shares no scale with a
    // token cross-entropy), each alignment stage its own panels, training lines and validation dots
    const lossRuns = c.labels.filter(l => ["sft", "pt"].includes(c.stages[l]));
    const curves = split => lossRuns.map(l => ({label: l, points: seriesOf(c.curves[l], split, "loss"), dots: split === "val"}));
    head.replaceChildren(h("h1", {}, `Compare ${c.labels.length} runs`),
      h("p", {class: "muted", id: "compare-stages"}, c.labels.map(l => `${l}: ${c.stages[l]}`).join(" · ")),
      h("div", {class: "toolbar"},
      h("a", {class: "button primary", id: "download-report", href: "/api/report?ids=" + ids.map(enc).join(","), download: "report.html"}, "Download the report (report.html)"),
      h("span", {class: "muted"}, "tables computed by tunelab report's code")));
    const shown = lossRuns.length ? [lineChart({name: "compare-train", title: "training loss", series: curves("train")}),
      lineChart({name: "compare-val", title: "validation loss", series: curves("val")})] : [];
    for (const a of c.alignment) for (const p of a.panels) shown.push(lineChart({name: `compare-${a.stage}-${p.key.replace("/", "_")}`, title: `${p.title} (${a.stage})`,
      series: a.runs.flatMap(l => [{label: l, points: seriesOf(c.curves[l], "train", p.key)}, {label: `${l} (val)`, points: seriesOf(c.curves[l], "val", p.key), dots: true}])
        .filter(x => x.points.length)}));
    charts.replaceChildren(...shown);
    const parts = [h("h2", {}, "Resources"), table(c.resource.columns, c.resource.rows, {id: "resource-table"})];
    for (const a of c.alignment) if (a.rows.length) parts.push(h("h2", {}, {dpo: "Preference tuning", grpo: "GRPO"}[a.stage] || a.stage),
      table(a.columns, a.rows, {id: `alignment-${a.stage}`}));
    if (c.scores.rows.length) parts.push(h("h2", {}, "Scores"), ...c.scores.warnings.map(w => h("p", {class: "error"}, w)),
      table(c.scores.columns, c.scores.rows, {id: "score-table"}),
      h("p", {class: "muted"}, "Accuracy in percent with its 95% Wilson interval; 'vs base' is the difference to the base model in points."));
    if (c.differences.columns.length > 1) parts.push(h("h2", {}, "What differs between the runs"), table(c.differences.columns, c.differences.rows, {id: "diff-table"}));
    tables.replaceChildren(...parts);
    live = c.resource.rows.some(r => String(r[r.length - 1]).startsWith("failed: no summary"));
  }).catch(e => head.replaceChildren(h("p", {class: "error"}, e.message)));
  load(); every(5000, () => { if (live) load(); });
}

// -- launch -------------------------------------------------------------------------------
let formCache = null;
async function form() { return formCache || (formCache = await api("/api/form")); }

function configForm(f, onChange) {
  // one input per config key, prefilled with its default (or the base config's value)
  const inputs = {}, base = {};
  const sections = {};
  for (const fd of f.fields) (sections[fd.key.split(".")[0]] ||= []).push(fd);
  const wrap = h("div", {class: "fields"});
  for (const [sec, fds] of Object.entries(sections)) {
    const det = h("details", {open: ["model", "data", "method", "training", "output"].includes(sec) || undefined}, h("summary", {}, sec));
    for (const fd of fds) {
      let input;
      if (fd.input === "bool") input = h("select", {}, ["false", "true"].map(v => h("option", {value: v}, v)));
      else if (fd.input === "choice") input = h("select", {}, fd.choices.map(v => h("option", {value: v}, v)));
      else input = h("input", {type: "text", size: 22});
      input.name = fd.key; input.dataset.key = fd.key;
      const row = h("div", {class: "field"}, h("label", {title: fd.type}, fd.key), input, h("span", {class: "doc"}, `${fd.doc} (${fd.type})`));
      input.addEventListener("input", () => { row.classList.toggle("changed", input.value !== base[fd.key]); onChange(); });
      inputs[fd.key] = input; det.append(row);
    }
    wrap.append(det);
  }
  const setBase = (values) => {
    for (const fd of f.fields) { base[fd.key] = values[fd.key] ?? fd.default; inputs[fd.key].value = base[fd.key]; inputs[fd.key].parentNode.classList.remove("changed"); }
  };
  const changed = () => Object.fromEntries(Object.entries(inputs).filter(([k, i]) => i.value !== base[k]).map(([k, i]) => [k, i.value]));
  const set = (k, v) => { inputs[k].value = v; inputs[k].parentNode.classList.toggle("changed", v !== base[k]); };
  return {el: wrap, setBase, changed, set, inputs};
}

function planBox(c) {
  // training.max_memory: the plan train starts from (micro-batch x accumulation, checkpointing) and every candidate
  if (c.plan_error) return h("div", {class: "error", id: "plan"}, "memory plan: " + c.plan_error);
  if (!c.plan) return "";
  const p = c.plan, chosen = p.tried - 1;
  const rows = p.candidates.map((x, i) => h("tr", {class: i === chosen ? "chosen" : ""},
    [x.batch_size, x.grad_accum, x.gradient_checkpointing ? "on" : "off", fmt(Math.round(x.estimate_mb)), fmt(Math.round(x.needs_mb)),
     i === chosen ? "← plan" : (x.needs_mb <= p.budget_mb ? "fits" : "too big")].map(v => h("td", {}, String(v)))));
  return h("div", {class: "card", id: "plan"}, h("h3", {}, "Memory plan"), h("p", {}, p.line), h("p", {class: "muted"},
      `why: ${p.why}. Device ${p.device}, rows of ${p.rows} tokens (data.max_length): train plans again for its data's widest row. ${p.notes.join("; ")}`),
    h("table", {}, h("thead", {}, h("tr", {}, ["batch", "accum", "ckpt", "estimate MB", "needs MB", ""].map(t => h("th", {}, t)))), h("tbody", {}, rows)));
}

async function launchPage(kind, params) {
  const token = routeToken;
  const f = await form();
  if (token !== routeToken) return;
  const tabs = h("div", {class: "tabs"}, ["train", "experiment", "eval"].map(k => h("button", {class: k === kind ? "active" : "", onclick: () => location.hash = "#/launch/" + k},
    {train: "Training", experiment: "Experiment", eval: "Evaluation"}[k])));
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "").replace(/^(\d{8})/, "$1-");
  const root = f.root_paths[0].replace(/\/$/, "");
  const checkBox = h("div", {id: "check"}), startBtn = h("button", {class: "primary", id: "start", disabled: true}, "Start");
  let current = null, pending = null;
  const doCheck = (payload) => {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      const c = await api("/api/check", payload()).catch(e => ({ok: false, error: e.message}));
      if (token !== routeToken) return;
      current = c.ok ? payload() : null;
      startBtn.disabled = !c.ok;
      checkBox.replaceChildren(c.ok ? h("div", {}, h("p", {class: "ok"}, "checked as the command line checks it. The same command:"),
          h("div", {class: "toolbar"}, copyButton(() => c.command)), h("pre", {id: "command"}, c.command), planBox(c))
        : h("div", {class: "error", id: "check-error"}, c.error));
    }, 300);
  };
  startBtn.onclick = async () => {
    startBtn.disabled = true;
    try { const r = await api("/api/launch", current); location.hash = kind === "eval" ? "#/" : (kind === "train" ? "#/run/" + enc(r.target) : "#/"); }
    catch (e) { checkBox.replaceChildren(h("div", {class: "error"}, e.message)); }
  };
  $main.append(h("h1", {}, "Launch"), tabs);
  if (kind === "eval") {
    const model = h("select", {id: "eval-model"}, f.models.map(m => h("option", {value: m.value}, m.label)));
    const task = h("select", {id: "eval-task"}, f.tasks.map(t => h("option", {value: t.name, title: t.description}, t.name)));
    const limit = h("input", {type: "number", id: "eval-limit", value: 20, min: 1}), mnt = h("input", {type: "number", id: "eval-mnt", placeholder: "task default"});
    const out = h("input", {type: "text", size: 40, id: "eval-output", value: `${root}/eval-${stamp}`});
    const payload = () => ({kind: "eval", model: model.value, task: task.value, limit: limit.value, max_new_tokens: mnt.value, output: out.value});
    for (const el of [model, task, limit, mnt, out]) el.addEventListener("input", () => doCheck(payload));
    $main.append(h("table", {class: "kv"}, h("tbody", {}, [["model", model], ["task", task], ["items (limit)", limit], ["max new tokens", mnt], ["output", out]].map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v))))),
      checkBox, h("div", {class: "toolbar"}, startBtn));
    doCheck(payload); return;
  }
  const baseSel = h("select", {id: "base"}, h("option", {value: ""}, "defaults (tunelab config)"), f.configs.map(c => h("option", {value: c.value}, c.label + "/config.yaml")));
  const cf = configForm(f, () => doCheck(payload));
  const exp = kind === "experiment" ? {
    variants: h("textarea", {rows: 4, id: "variants"}, "lora: {}\nfull: {method.name: full, optimizer.lr: 1.0e-5}"),
    tasks: h("input", {type: "text", id: "exp-tasks", value: "arith_en", size: 30}), limit: h("input", {type: "number", value: 20, id: "exp-limit"}),
    mnt: h("input", {type: "number", value: 256, id: "exp-mnt"}), output: h("input", {type: "text", size: 40, id: "exp-output", value: `${root}/study-${stamp}`}),
  } : null;
  function payload() {
    if (!exp) return {kind: "train", base: baseSel.value || null,  // output.dir always: a new run's own directory
                      values: Object.assign(cf.changed(), {"output.dir": cf.inputs["output.dir"].value})};
    const values = cf.changed(); delete values["output.dir"];
    return {kind: "experiment", base: baseSel.value || null, values, variants: exp.variants.value, output: exp.output.value,
            evaluation: {tasks: exp.tasks.value.split(",").map(s => s.trim()).filter(Boolean), limit: +exp.limit.value || null, max_new_tokens: +exp.mnt.value || null}};
  }
  const loadBase = async () => {
    let values = {};
    if (baseSel.value) { const c = await api("/api/check", {kind: "train", base: baseSel.value, values: {"output.dir": `${root}/run-${stamp}`}}).catch(() => null); values = (c && c.flat) || {}; }
    cf.setBase(values);
    if (!exp) cf.set("output.dir", `${root}/run-${stamp}`);
    for (const [k, v] of params) if (cf.inputs[k]) cf.set(k, v);
    doCheck(payload);
  };
  baseSel.onchange = loadBase;
  if (params.get("base")) { baseSel.value = params.get("base"); params.delete("base"); }
  if (exp) for (const el of Object.values(exp)) el.addEventListener("input", () => doCheck(payload));
  $main.append(h("div", {class: "toolbar"}, "start from", baseSel, h("span", {class: "muted"}, "changed keys become key=value overrides; bold = changed")),
    exp ? h("div", {class: "card"}, h("h3", {}, "Variants (name: overrides)"), exp.variants,
      h("div", {class: "toolbar"}, "eval tasks", exp.tasks, "limit", exp.limit, "max new tokens", exp.mnt, "output", exp.output)) : "",
    checkBox, h("div", {class: "toolbar"}, startBtn), h("h2", {}, exp ? "Common config (every variant)" : "Config"), cf.el);
  loadBase();
}

// -- chat ---------------------------------------------------------------------------------
function chatState() { return Object.assign({modelA: "", modelB: "", side: false, system: "", temperature: 0, max_tokens: 256, top_p: 1, convA: [], convB: []}, JSON.parse(localStorage.getItem("tunelab-chat") || "{}")); }
function setChat(patch) { localStorage.setItem("tunelab-chat", JSON.stringify(Object.assign(chatState(), patch))); }

async function chatPage() {
  const token = routeToken;
  const f = await form();
  if (token !== routeToken) return;
  const st = chatState();
  const opt = m => h("option", {value: m.value}, m.label);
  const modelA = h("select", {id: "model-a"}, f.models.map(opt)), modelB = h("select", {id: "model-b"}, f.models.map(opt));
  modelA.value = st.modelA || f.models[0]?.value; modelB.value = st.modelB || f.models[0]?.value;
  const side = h("input", {type: "checkbox", id: "side-by-side", checked: st.side});
  const system = h("textarea", {rows: 3, id: "system", placeholder: "empty: the run's own system prompt, if it was trained with one"}, st.system);
  const temp = h("input", {type: "number", id: "temperature", step: 0.1, min: 0, value: st.temperature});
  const maxTok = h("input", {type: "number", id: "max-tokens", min: 1, value: st.max_tokens});
  const topP = h("input", {type: "number", id: "top-p", step: 0.05, min: 0.05, max: 1, value: st.top_p});
  const input = h("textarea", {rows: 3, id: "prompt", placeholder: "Message (Enter sends, Shift+Enter: new line)"});
  const send = h("button", {class: "primary", id: "send"}, "Send");
  const convs = h("div", {class: "convs"});
  const save = () => setChat({modelA: modelA.value, modelB: modelB.value, side: side.checked, system: system.value, temperature: +temp.value, max_tokens: +maxTok.value, top_p: +topP.value});
  const cols = () => side.checked ? [["A", modelA], ["B", modelB]] : [["A", modelA]];
  const draw = () => {
    const s = chatState();
    convs.className = "convs" + (side.checked ? " two" : "");
    convs.replaceChildren(...cols().map(([k, sel]) => h("div", {class: "conv", id: "conv-" + k}, h("h3", {}, sel.selectedOptions[0]?.textContent || sel.value),
      s["conv" + k].map(m => h("div", {class: `msg ${m.role}${m.content ? "" : " empty"}`, "data-done": "1"}, m.content)))));
  };
  for (const el of [modelA, modelB, side]) el.addEventListener("change", () => { save(); setChat({convA: [], convB: []}); draw(); });
  for (const el of [system, temp, maxTok, topP]) el.addEventListener("change", save);
  const reset = h("button", {id: "reset", onclick: () => { setChat({convA: [], convB: []}); draw(); }}, "New conversation");
  async function ask(k, sel, text) {
    const s = chatState(), conv = s["conv" + k].concat([{role: "user", content: text}]);
    setChat({["conv" + k]: conv});
    const box = document.getElementById("conv-" + k);
    box.append(h("div", {class: "msg user", "data-done": "1"}, text));
    const bubble = h("div", {class: "msg assistant", "data-done": "0"});
    box.append(bubble);
    let reply = "", deltas = 0;
    try {
      const r = await fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({model: sel.value, messages: conv, system: system.value || null, temperature: +temp.value, max_tokens: +maxTok.value, top_p: +topP.value})});
      if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const line = buf.slice(0, i); buf = buf.slice(i + 2);
          if (!line.startsWith("data: ")) continue;
          const ev = JSON.parse(line.slice(6));
          if (ev.error) throw new Error(ev.error);
          if (ev.delta) { reply += ev.delta; deltas++; bubble.textContent = reply; bubble.dataset.deltas = deltas; }
          if (ev.done) { reply = ev.text; bubble.textContent = reply; }
        }
      }
      bubble.dataset.done = "1";
      if (!reply) bubble.classList.add("empty");
      setChat({["conv" + k]: conv.concat([{role: "assistant", content: reply}])});
    } catch (e) {
      bubble.className = "msg error"; bubble.dataset.done = "1"; bubble.textContent = e.message;
      setChat({["conv" + k]: conv.slice(0, -1)});
    }
  }
  send.onclick = async () => {
    const text = input.value.trim();
    if (!text) return;
    input.value = ""; send.disabled = true; save();
    await Promise.all(cols().map(([k, sel]) => ask(k, sel, text)));
    send.disabled = false; input.focus();
  };
  input.addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.click(); } });
  $main.append(h("h1", {}, "Chat"), h("div", {class: "chat-layout"},
    h("div", {class: "chat-settings card"}, h("label", {}, "model"), modelA, h("label", {}, side, " side by side with"), modelB,
      h("label", {}, "system prompt"), system, h("label", {}, "temperature (0 = greedy, as tunelab chat)"), temp,
      h("label", {}, "max tokens per reply"), maxTok, h("label", {}, "top p"), topP, h("div", {class: "toolbar"}, reset),
      h("p", {class: "muted"}, "Prompts are rendered with the template saved with the model and stop at its end-of-turn token, as tunelab chat and serve do.")),
    h("div", {}, convs, h("div", {class: "composer"}, input, send))));
  draw();
}

route();
