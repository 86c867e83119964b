// camelid's web UI: chat, knowledge bases, runs and the model, all through the server's own HTTP API with the same
// API key a client would send (kept in sessionStorage, sent as a header; never in a URL). No framework and nothing
// fetched from elsewhere. Every piece of text from the server (model output, documents, run files) reaches the page
// as text nodes or through md(), which escapes before it formats, so markup in it is shown, never run.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  view: "chat", info: null, session: null, sessions: [], busy: null, kb: null, run: null, runTimer: null,
  modelTimer: null,
};

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Markdown, the part chat answers use: fenced and inline code, headings, lists, bold, italics, http(s) links.
// The text is escaped first; the patterns below only ever add tags of their own around escaped text.
function md(text) {
  const blocks = [];
  let s = escapeHtml(text).replace(/```([\w+-]*)\n?([\s\S]*?)(```|$)/g, (_, lang, code) => {
    blocks.push(`<pre><code data-lang="${lang}">${code.replace(/\n$/, "")}</code></pre>`);
    return `\u0000${blocks.length - 1}\u0000`;
  });
  const inline = (t) =>
    t
      .replace(/`([^`\n]+)`/g, "<code>$1</code>")
      .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>")
      .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>')
      .replace(/\[(\d{1,2})\]/g, '<button class="cite" data-n="$1">[$1]</button>');
  const out = [];
  let list = null;
  const closeList = () => { if (list) { out.push(`</${list}>`); list = null; } };
  for (const para of s.split(/\n{2,}/)) {
    const lines = para.split("\n");
    for (const line of lines) {
      const code = line.match(/^\u0000(\d+)\u0000$/);
      const head = line.match(/^(#{1,4})\s+(.*)$/);
      const item = line.match(/^\s*(?:[-*]|(\d+)\.)\s+(.*)$/);
      if (code) { closeList(); out.push(blocks[+code[1]]); }
      else if (head) { closeList(); out.push(`<h${head[1].length + 1}>${inline(head[2])}</h${head[1].length + 1}>`); }
      else if (item) {
        const kind = item[1] ? "ol" : "ul";
        if (list !== kind) { closeList(); out.push(`<${kind}>`); list = kind; }
        out.push(`<li>${inline(item[2])}</li>`);
      } else if (line.trim()) { closeList(); out.push(`<p>${inline(line).replace(/\u0000(\d+)\u0000/g, (_, i) => blocks[+i])}</p>`); }
    }
    closeList();
  }
  return out.join("");
}

function fmtTime(sec) { return sec ? new Date(sec * 1000).toLocaleString() : ""; }
function fmtNum(x, digits = 4) { return typeof x === "number" ? (Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(digits)) : "—"; }
function fmtBytes(n) { return n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : n >= 1e3 ? (n / 1e3).toFixed(1) + " kB" : n + " B"; }

function banner(msg) {
  const b = $("banner");
  b.textContent = msg || "";
  b.classList.toggle("hidden", !msg);
}

// ------------------------------------------------------------------ API

function key() { return sessionStorage.getItem("camelid-key") || ""; }
function headers(extra = {}) {
  const h = { ...extra };
  if (key()) h.Authorization = "Bearer " + key();
  return h;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body, raw, signal, type } = {}) {
  const init = { method, signal, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (r.status === 401) { askKey(); throw new ApiError(401, "an API key is needed"); }
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error.message; } catch (_) { /* not our error shape */ }
    throw new ApiError(r.status, msg);
  }
  if (raw) return r;
  return type === "text" ? r.text() : r.json();
}

function askKey(message) {
  const d = $("key-dialog");
  $("key-error").textContent = message || (key() ? "That key was not accepted." : "");
  if (!d.open) d.showModal();
}

// ------------------------------------------------------------------ views

function show(view) {
  state.view = view;
  for (const b of document.querySelectorAll("button.tab")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll("section.view")) s.classList.toggle("hidden", s.id !== "view-" + view);
  clearInterval(state.modelTimer);
  if (view === "kb") loadKbs();
  if (view === "runs") loadRuns();
  if (view === "model") { loadModel(); state.modelTimer = setInterval(loadModel, 2000); }
  location.hash = view;
}

async function loadInfo() {
  try {
    state.info = await api("/v1/server");
  } catch (e) {
    if (e.status !== 401) banner("cannot reach the server: " + e.message);
    return false;
  }
  banner("");
  $("served").textContent = `${state.info.model} · ${state.info.context_length} tokens`;
  $("max-tokens").value = state.info.limits.default_max_tokens;
  $("max-tokens").max = state.info.limits.max_tokens;
  fillModels();
  return true;
}

function fillModels(pick) {
  const sel = $("chat-model");
  const current = pick || sel.value || localStorage.getItem("camelid-model") || state.info.model;
  sel.replaceChildren(
    el("option", { value: state.info.model }, state.info.model),
    ...state.info.knowledge_bases.map((k) => el("option", { value: "kb:" + k }, `kb:${k} (answers from ${k})`)),
  );
  sel.value = [...sel.options].some((o) => o.value === current) ? current : state.info.model;
  summarize();
}

function summarize() {
  $("settings-summary").textContent =
    `${$("chat-model").value} · temperature ${$("temperature").value} · top-p ${$("top-p").value} · ` +
    `max ${$("max-tokens").value} tokens`;
}

// ------------------------------------------------------------------ chat

async function loadSessions() {
  try { state.sessions = (await api("/v1/sessions")).data; } catch (e) { return; }
  const ul = $("sessions");
  ul.replaceChildren(
    ...state.sessions.map((s) =>
      el("li", { class: s.id === state.session ? "active" : "", "data-id": s.id, onclick: () => openSession(s.id) },
        el("span", { class: "grow", title: fmtTime(s.updated) }, s.title || s.first_message || "(empty chat)"),
        el("button", { class: "small", title: "Rename", onclick: (ev) => { ev.stopPropagation(); renameSession(s); } }, "✎"),
        el("button", { class: "small", title: "Delete", onclick: (ev) => { ev.stopPropagation(); deleteSession(s); } }, "×"),
      )),
  );
}

async function renameSession(s) {
  const title = prompt("Name this chat", s.title || s.first_message || "");
  if (title === null) return;
  await api(`/v1/sessions/${encodeURIComponent(s.id)}`, { method: "PATCH", body: { title } }).catch((e) => banner(e.message));
  loadSessions();
}

async function deleteSession(s) {
  if (!confirm(`Delete “${s.title || s.first_message || s.id}”?`)) return;
  await api(`/v1/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE" }).catch((e) => banner(e.message));
  if (state.session === s.id) newChat();
  loadSessions();
}

function newChat() {
  stopGeneration();
  state.session = null;
  localStorage.removeItem("camelid-session");
  $("messages").replaceChildren();
  loadSessions();
  $("prompt").focus();
}

async function openSession(id) {
  stopGeneration();
  let s;
  try { s = await api(`/v1/sessions/${encodeURIComponent(id)}`); } catch (e) {
    if (e.status === 404) { localStorage.removeItem("camelid-session"); newChat(); }
    return;
  }
  state.session = id;
  localStorage.setItem("camelid-session", id);
  const model = localStorage.getItem("camelid-model:" + id);
  if (model) fillModels(model);
  $("messages").replaceChildren(...s.messages.map((m) => bubble(m.role, m.content).node));
  scrollDown();
  loadSessions();
}

function bubble(role, text) {
  const body = el("div", { class: role === "assistant" ? "md" : "prewrap-plain" });
  const status = el("div", { class: "status" });
  const sources = el("div", { class: "sources" });
  const node = el("div", { class: "msg " + role }, el("div", { class: "who" }, role), body, sources, status);
  const b = { node, body, status, sources, text: text || "", citations: [] };
  render(b);
  return b;
}

function render(b) {
  if (b.node.classList.contains("assistant")) {
    b.body.innerHTML = md(b.text); // md() escapes first: see its comment
    for (const c of b.body.querySelectorAll("button.cite")) {
      const hit = b.citations.find((x) => x.index === +c.dataset.n);
      if (hit) c.addEventListener("click", () => openPassage(hit)); else c.replaceWith(`[${c.dataset.n}]`);
    }
  } else {
    b.body.textContent = b.text;
    b.body.style.whiteSpace = "pre-wrap";
  }
}

function showSources(b, citations) {
  b.citations = citations || [];
  b.sources.replaceChildren(
    ...b.citations.map((c) =>
      el("button", { class: "cite", title: c.label, onclick: () => openPassage(c) }, `[${c.index}] ${c.label}`)),
  );
}

function openPassage(c) {
  $("passage-index").textContent = `[${c.index}]`;
  $("passage-label").textContent = c.label;
  $("passage-text").textContent = c.text;
  $("passage").classList.remove("hidden");
}

function scrollDown() { const m = $("messages"); m.scrollTop = m.scrollHeight; }

async function send(text) {
  if (!text.trim() || state.busy) return;
  const model = $("chat-model").value;
  if (!state.session) {
    const system = $("system-prompt").value.trim();
    try {
      const s = await api("/v1/sessions", { method: "POST", body: { messages: system ? [{ role: "system", content: system }] : [] } });
      state.session = s.id;
      localStorage.setItem("camelid-session", s.id);
      if (system) $("messages").append(bubble("system", system).node);
    } catch (e) { banner(e.message); return; }
  }
  localStorage.setItem("camelid-model:" + state.session, model);
  localStorage.setItem("camelid-model", model);
  $("prompt").value = "";
  $("messages").append(bubble("user", text).node);
  const b = bubble("assistant", "");
  b.status.textContent = "…";
  $("messages").append(b.node);
  scrollDown();
  const ctrl = new AbortController();
  state.busy = ctrl;
  $("send").classList.add("hidden");
  $("stop").classList.remove("hidden");
  const body = {
    model, session_id: state.session, stream: true, messages: [{ role: "user", content: text }],
    temperature: +$("temperature").value, top_p: +$("top-p").value, max_tokens: +$("max-tokens").value,
  };
  let finish = null;
  try {
    const r = await api("/v1/chat/completions", { method: "POST", body, signal: ctrl.signal, raw: true });
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "", pending = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const obj = JSON.parse(data);
        if (obj.error) throw new ApiError(500, obj.error.message);
        if (obj.citations) showSources(b, obj.citations);
        const choice = obj.choices && obj.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) b.text += choice.delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
        if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(b); scrollDown(); }); }
      }
    }
    render(b);
    b.status.textContent = finish === "length" ? "cut at max tokens" : "";
  } catch (e) {
    if (e.name === "AbortError") {
      render(b);
      b.status.textContent = "stopped — this reply is not kept in the chat";
    } else {
      b.node.classList.add("error");
      b.status.textContent = "";
      b.text = b.text || e.message;
      render(b);
      if (b.text !== e.message) b.status.textContent = e.message;
    }
  } finally {
    state.busy = null;
    $("send").classList.remove("hidden");
    $("stop").classList.add("hidden");
    scrollDown();
    loadSessions();
  }
}

function stopGeneration() { if (state.busy) state.busy.abort(); }

// ------------------------------------------------------------------ knowledge bases

async function loadKbs() {
  let list;
  try { list = (await api("/v1/kb")).data; } catch (e) { return; }
  $("kbs").replaceChildren(
    ...list.map((k) =>
      el("li", { class: k.id === state.kb ? "active" : "", onclick: () => openKb(k.id) },
        el("span", { class: "grow" }, k.id), el("span", { class: "muted small" }, `${k.documents} docs`))),
  );
}

async function createKb(ev) {
  ev.preventDefault();
  const name = $("kb-name").value.trim();
  try {
    await api("/v1/kb", { method: "POST", body: { name } });
  } catch (e) { banner(e.message); return; }
  banner("");
  $("kb-name").value = "";
  await loadInfo();
  await loadKbs();
  openKb(name);
}

async function openKb(name) {
  state.kb = name;
  loadKbs();
  const detail = $("kb-detail");
  const uploads = el("ul", { class: "list uploads", id: "uploads" });
  const input = el("input", { type: "file", multiple: true, id: "kb-files", class: "hidden",
    accept: ".txt,.md,.markdown,.html,.htm,.pdf,.jsonl" });
  const drop = el("div", { class: "drop", id: "drop" },
    "Drop files here (txt, md, html, pdf, jsonl) or ", el("button", { class: "link", onclick: () => input.click() }, "choose files"));
  input.addEventListener("change", () => uploadFiles([...input.files]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadFiles([...e.dataTransfer.files]); });
  const query = el("input", { id: "kb-query", placeholder: "search this knowledge base" });
  const hits = el("ul", { class: "list hits", id: "kb-hits" });
  const search = el("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const r = await api(`/v1/kb/${encodeURIComponent(name)}/search`, { method: "POST", body: { query: query.value } });
      hits.replaceChildren(...(r.data.length ? r.data.map((h) => el("li", {},
        el("div", { class: "muted small" }, `[${h.index}] ${h.label} · score ${fmtNum(h.score, 3)}`),
        el("div", { class: "prewrap" }, h.text))) : [el("li", { class: "muted" }, "nothing found")]));
    } catch (err) { banner(err.message); }
  } }, query, el("button", { type: "submit" }, "Search"));
  detail.replaceChildren(
    el("h2", {}, name, " ", el("button", { class: "small", onclick: () => { fillModels("kb:" + name); show("chat"); newChat(); } }, "Chat with it")),
    drop, input, uploads,
    el("h3", {}, "Documents"), el("div", { id: "kb-docs" }),
    el("h3", {}, "Search"), search, hits,
  );
  loadDocs();
}

async function loadDocs() {
  const name = state.kb;
  let docs;
  try { docs = (await api(`/v1/kb/${encodeURIComponent(name)}/documents`)).data; } catch (e) { return; }
  const box = $("kb-docs");
  if (!box) return;
  box.replaceChildren(docs.length
    ? el("table", {}, el("tr", {}, ["document", "size", "chunks", "added", ""].map((h) => el("th", {}, h))),
      ...docs.map((d) => el("tr", {}, el("td", {}, d.name), el("td", { class: "num" }, fmtBytes(d.bytes)),
        el("td", { class: "num" }, d.chunks), el("td", {}, fmtTime(d.added)),
        el("td", {}, el("button", { class: "small", onclick: async () => {
          if (!confirm(`Remove ${d.name}?`)) return;
          await api(`/v1/kb/${encodeURIComponent(name)}/documents/${d.name.split("/").map(encodeURIComponent).join("/")}`, { method: "DELETE" }).catch((e) => banner(e.message));
          loadDocs();
        } }, "remove")))))
    : el("p", { class: "muted" }, "No documents yet."));
}

// One file at a time, each its own request: the list shows every file's progress and its own error, and a file
// that fails leaves the others as they are.
async function uploadFiles(files) {
  const name = state.kb, list = $("uploads");
  const rows = files.map((f) => {
    const status = el("span", { class: "muted" }, "waiting");
    list.append(el("li", {}, el("span", { class: "grow" }, f.name), status));
    return status;
  });
  for (let i = 0; i < files.length; i++) {
    const f = files[i], status = rows[i];
    if (f.size > state.info.limits.max_upload_bytes) {
      status.className = "err";
      status.textContent = `too large: ${fmtBytes(f.size)} > ${fmtBytes(state.info.limits.max_upload_bytes)} (serve.max_upload_bytes)`;
      continue;
    }
    try {
      const r = await putFile(`/v1/kb/${encodeURIComponent(name)}/documents/${encodeURIComponent(f.name)}`, f,
        (p) => { status.textContent = p < 1 ? `uploading ${Math.round(p * 100)}%` : "reading and indexing…"; });
      status.className = "ok";
      status.textContent = `${r.status}: ${r.chunks} chunks`;
    } catch (e) {
      status.className = "err";
      status.textContent = e.message;
    }
    loadDocs();
  }
  loadKbs();
}

// XMLHttpRequest rather than fetch: only it reports upload progress.
function putFile(url, file, progress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", url);
    if (key()) x.setRequestHeader("Authorization", "Bearer " + key());
    x.setRequestHeader("Content-Type", "application/octet-stream");
    x.upload.onprogress = (e) => e.lengthComputable && progress(e.loaded / e.total);
    x.upload.onload = () => progress(1);
    x.onload = () => {
      let body = null;
      try { body = JSON.parse(x.responseText); } catch (_) { /* shown below */ }
      if (x.status === 401) askKey();
      if (x.status >= 200 && x.status < 300) resolve(body);
      else reject(new Error(body && body.error ? body.error.message : `HTTP ${x.status}`));
    };
    x.onerror = () => reject(new Error("the upload was cut off (too large for the server, or it went away)"));
    x.send(file);
  });
}

// ------------------------------------------------------------------ runs

async function loadRuns() {
  let r;
  try { r = await api("/v1/runs"); } catch (e) { return; }
  $("runs-root").textContent = `runs under ${r.root}`;
  $("runs").replaceChildren(
    ...(r.data.length ? r.data.map((x) =>
      el("li", { class: x.path === state.run ? "active" : "", onclick: () => openRun(x.path) },
        el("span", { class: "grow", title: x.path }, x.path,
          el("div", { class: "muted small" }, x.kind === "recipe" ? "recipe" : [x.stage, x.method].filter(Boolean).join(" · "))),
        x.state ? el("span", { class: "badge " + x.state }, x.state) : null))
      : [el("li", { class: "muted" }, "no run folders here")]),
  );
}

async function openRun(path) {
  clearTimeout(state.runTimer);
  state.run = path;
  loadRuns();
  const enc = path.split("/").map(encodeURIComponent).join("/");
  let r;
  try { r = await api(`/v1/runs/${enc}`); } catch (e) { banner(e.message); return; }
  if (state.run !== path) return;
  const box = $("run-detail");
  if (r.object === "recipe") {
    box.replaceChildren(
      el("h2", {}, path, " ", el("span", { class: "badge" }, "recipe " + (r.recipe || ""))),
      el("table", {}, el("tr", {}, ["stage", "verb", "state", "time", "metrics"].map((h) => el("th", {}, h))),
        ...r.stages.map((s) => el("tr", {},
          el("td", {}, s.path ? el("button", { class: "link", onclick: () => openRun(s.path) }, s.name) : s.name),
          el("td", {}, s.verb || ""), el("td", {}, el("span", { class: "badge " + s.state }, s.state)),
          el("td", { class: "num" }, typeof s.seconds === "number" ? `${Math.round(s.seconds)} s` : ""),
          el("td", { class: "small" }, Object.entries(s.metrics).map(([k, v]) => `${k} ${fmtNum(v)}`).join(", "))))),
      reportBlock(enc),
    );
    return;
  }
  const open = box.dataset.path === path ? [...box.querySelectorAll("details[open]")].map((d) => d.id) : [];
  box.dataset.path = path;
  const charts = [];
  if (r.loss.length || r.eval_loss.length) {
    charts.push(el("h3", {}, "Loss"), lineChart([
      { name: "train loss", points: r.loss, color: "#a5c8f5" },
      { name: "smoothed", points: r.loss_smoothed, color: "#0969da" },
      { name: "eval loss", points: r.eval_loss, color: "#cf222e", dots: true },
    ]));
  }
  for (const [k, pts] of Object.entries(r.curves)) charts.push(el("h3", {}, k), lineChart([{ name: k, points: pts, color: "#8250df" }]));
  box.replaceChildren(...[
    el("h2", {}, path, " ", el("span", { class: "badge " + r.state, id: "run-state" }, r.state)),
    el("p", { class: "muted" }, [r.stage && `stage ${r.stage}`, r.method && `method ${r.method}`, r.model && `model ${r.model}`,
      r.loss.length && `step ${r.loss[r.loss.length - 1][0]}`, r.loss.length && `loss ${fmtNum(r.loss[r.loss.length - 1][1])}`].filter(Boolean).join(" · ")),
    r.error ? el("p", { class: "error" }, r.error) : null,
    ...charts,
    resultsTable(r.results),
    ...r.notes.map((n) => el("p", { class: "muted small" }, n)),
    dataBlock(enc),
    reportBlock(enc),
  ].filter((x) => x)); // replaceChildren would print a null as "null"
  for (const id of open) { const d = $(id); if (d) { d.open = true; d.dispatchEvent(new Event("toggle")); } }
  if (r.state === "running") state.runTimer = setTimeout(() => state.view === "runs" && state.run === path && openRun(path), 3000);
}

function resultsTable(results) {
  const labels = Object.keys(results);
  if (!labels.length) return el("p", { class: "muted" }, "No eval results yet (camelid eval, or eval.after_training=true).");
  const metrics = [...new Set(labels.flatMap((l) => Object.keys(results[l])))];
  const delta = labels.length > 1;
  return el("div", {}, el("h3", {}, "Evaluation"), el("table", { id: "results" },
    el("tr", {}, el("th", {}, "metric"), labels.map((l) => el("th", {}, l)), delta ? el("th", {}, "Δ") : null),
    ...metrics.map((m) => {
      const vals = labels.map((l) => results[l][m]);
      const d = delta && typeof vals[0] === "number" && typeof vals[vals.length - 1] === "number" ? vals[vals.length - 1] - vals[0] : null;
      const better = /loss|ppl|perplexity|bits/.test(m) ? d < 0 : d > 0;
      return el("tr", {}, el("td", {}, m), vals.map((v) => el("td", { class: "num" }, fmtNum(v))),
        delta ? el("td", { class: "num " + (d === null || d === 0 ? "" : better ? "up" : "down") }, d === null ? "—" : (d > 0 ? "+" : "") + fmtNum(d, 3)) : null);
    })));
}

// A <details> whose body `load` fills the first time it opens (a spinner line until then, its error after).
function lazyDetails(id, summary, waiting, load) {
  const box = el("div", {}, el("p", { class: "muted" }, waiting));
  const d = el("details", { id }, el("summary", {}, summary), box);
  d.addEventListener("toggle", async () => {
    if (!d.open || d.dataset.loaded) return;
    d.dataset.loaded = "1";
    try { box.replaceChildren(...(await load())); } catch (e) { box.replaceChildren(el("p", { class: "error" }, e.message)); }
  });
  return d;
}

function dataBlock(enc) {
  return lazyDetails("data-details", "Training data as the model sees it (supervised text highlighted)", "loading…", async () => {
    const p = await api(`/v1/runs/${enc}/data`);
    return [
      el("p", {}, `${p.what}; tokens p50 ${p.tokens_p50}, max ${p.tokens_max}; ${(p.supervised * 100).toFixed(0)}% of tokens supervised`),
      ...p.sources.map((s) => el("p", { class: "muted small" }, `${s.source}: read ${s.read}, kept ${s.kept}, skipped ${s.skipped}`)),
      ...p.examples.map((x) => el("div", {}, x.label ? el("h4", {}, x.label) : null,
        el("div", { class: "example" }, x.spans.map(([t, sup]) => (sup ? el("span", { class: "sup" }, t) : t))))),
    ];
  });
}

// The report is a static page with figures: fetched with the key, its images inlined as data: URLs, and shown in a
// sandboxed frame where nothing can run.
function reportBlock(enc) {
  return lazyDetails("report-details", "HTML report", "writing the report (camelid report)…", async () => {
    const base = `/v1/runs/${enc}/report/`;
    const doc = new DOMParser().parseFromString(await api(base + "index.html", { type: "text" }), "text/html");
    for (const s of doc.querySelectorAll("script")) s.remove();
    for (const img of doc.querySelectorAll("img")) {
      const src = img.getAttribute("src") || "";
      if (/^[\w.-]+\.png$/.test(src)) img.src = await dataUrl(base + src);
    }
    const frame = el("iframe", { class: "report", sandbox: "", title: "HTML report" });
    frame.srcdoc = "<!doctype html>" + doc.documentElement.outerHTML;
    return [frame];
  });
}

async function dataUrl(path) {
  const blob = await (await api(path, { raw: true })).blob();
  return new Promise((ok) => { const f = new FileReader(); f.onload = () => ok(f.result); f.readAsDataURL(blob); });
}

// An SVG line chart: series of [x, y] points, axes with a few round ticks, a legend.
function lineChart(series, width = 720, height = 260) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height); svg.setAttribute("class", "chart");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return svg;
  const pad = { l: 56, r: 16, t: 24, b: 30 };
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
  const sy = (y) => height - pad.b - ((y - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4, x = x0 + ((x1 - x0) * i) / 4;
    add("line", { x1: pad.l, x2: width - pad.r, y1: sy(y), y2: sy(y), stroke: "#eaeef2" });
    add("text", { x: pad.l - 6, y: sy(y) + 4, "text-anchor": "end" }, fmtNum(y, 3));
    add("text", { x: sx(x), y: height - 10, "text-anchor": "middle" }, Math.round(x));
  }
  add("line", { x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b, stroke: "#8c959f" });
  add("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, stroke: "#8c959f" });
  add("text", { x: width - pad.r, y: height - 10 + 0, "text-anchor": "end" }, "");
  let lx = pad.l;
  for (const s of series) {
    if (!s.points.length) continue;
    add("polyline", { points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: s.color, "stroke-width": 1.6, class: "series" });
    if (s.dots) for (const p of s.points) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color });
    add("rect", { x: lx, y: 6, width: 12, height: 4, fill: s.color });
    add("text", { x: lx + 16, y: 12 }, `${s.name} (${s.points.length})`);
    lx += 140;
  }
  return svg;
}

// ------------------------------------------------------------------ model

async function loadModel() {
  let info;
  try { info = await api("/v1/server"); } catch (e) { return; }
  const e = info.engine;
  const rows = [
    ["model", info.model], ["context length", `${info.context_length} tokens`],
    ["knowledge bases", info.knowledge_bases.join(", ") || "none"],
    ["API keys", info.api_keys ? "required" : "not required (localhost)"],
    ["max tokens per request", info.limits.max_tokens], ["uptime", `${Math.round(info.uptime)} s`],
  ];
  const stats = [
    ["tokens/s (last 10 s)", fmtNum(e.tokens_per_second, 3)], ["running", e.running], ["waiting", e.waiting],
    ["KV blocks used / cached / total", `${e.kv_blocks_used} / ${e.kv_blocks_cached} / ${e.kv_blocks_total}`],
    ...Object.entries(e).filter(([k]) => !["tokens_per_second", "running", "waiting", "kv_blocks_used", "kv_blocks_cached", "kv_blocks_total"].includes(k)),
  ];
  const table = (rs) => el("table", {}, ...rs.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v)))));
  $("model-detail").replaceChildren(
    el("h2", {}, "Model"), table(rows),
    el("h3", {}, "Engine"), el("div", { id: "engine-stats" }, table(stats)),
    el("h3", {}, "Chat template"), el("pre", { class: "example" }, info.chat_template || "(none)"),
  );
}

// ------------------------------------------------------------------ start

function start() {
  for (const b of document.querySelectorAll("button.tab")) b.addEventListener("click", () => show(b.dataset.view));
  $("key-button").addEventListener("click", () => askKey(""));
  $("key-form").addEventListener("submit", async () => {
    sessionStorage.setItem("camelid-key", $("key-input").value.trim());
    $("key-input").value = "";
    if (await loadInfo()) { loadSessions(); restore(); show(state.view); }
  });
  $("new-chat").addEventListener("click", newChat);
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("prompt").value); });
  $("prompt").addEventListener("keydown", (e) => {
    // Enter while an IME is composing (Chinese pinyin input) picks a candidate: it must not send
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send($("prompt").value);
    }
  });
  $("stop").addEventListener("click", stopGeneration);
  for (const id of ["chat-model", "temperature", "top-p", "max-tokens"]) $(id).addEventListener("change", summarize);
  $("passage-close").addEventListener("click", () => $("passage").classList.add("hidden"));
  $("kb-create").addEventListener("submit", createKb);
  loadInfo().then((ok) => {
    const view = (location.hash || "#chat").slice(1);
    if (!ok) return;
    loadSessions();
    restore();
    show(["chat", "kb", "runs", "model"].includes(view) ? view : "chat");
  });
}

function restore() {
  const sid = localStorage.getItem("camelid-session");
  if (sid) openSession(sid);
}

start();
