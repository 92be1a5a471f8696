// The worker's web console: one live feed (GET /api/live) and the public routes, nothing else.
// No framework and no charting library: the page is a few views over the feed's messages.
"use strict";

const KEY_STORE = "wrk-ai-inference.apiKey";
const SERIES_MAX = 300;
const REQUESTS_MAX = 200;
const COLORS = ["#1f6feb", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#0a7ea4",
  "#57606a"];

const state = { series: [], requests: [], models: [], hello: null, last: null, page: "overview" };
const $ = (id) => document.getElementById(id);

// ---- calls, with the key this tab was given ---------------------------------------------
function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

async function call(method, path, body, signal) {
  const init = { method, headers: authHeaders(body ? { "Content-Type": "application/json" } : {}),
    signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) askKey();
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const e = body.error;
    if (e && typeof e === "object") return (e.code ? e.code + ": " : "") + (e.message || "");
    return (body.error || "") + (body.message ? ": " + body.message : "");
  } catch (_) {
    return "HTTP " + response.status;
  }
}

function curl(method, path, body) {
  const parts = ["curl -N " + (method === "GET" ? "" : "-X " + method + " ") +
    JSON.stringify(location.origin + path)];
  if (sessionStorage.getItem(KEY_STORE)) parts.push("-H 'Authorization: Bearer <your key>'");
  if (body !== undefined) {
    parts.push("-H 'Content-Type: application/json'");
    parts.push("-d '" + JSON.stringify(body).replace(/'/g, "'\\''") + "'");
  }
  return parts.join(" \\\n  ");
}

function toast(text, bad) {
  const el = $("toast");
  el.textContent = text;
  el.className = bad ? "bad" : "";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

function askKey() {
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
}

// ---- the live feed ---------------------------------------------------------------------
function setLink(text, cls) {
  $("feed-state").textContent = text;
  $("feed-dot").className = "dot " + (cls || "");
}

// A hidden tab closes its feed and opens it again when shown: the worker sends nothing
// nobody looks at, and a browser's few connections per host are not held by tabs in the
// background.
const feedState = { controller: null };

function visibilityChanged() {
  if (document.hidden && feedState.controller) feedState.controller.abort();
}

async function listen() {
  for (;;) {
    while (document.hidden) {
      setLink("paused (tab hidden)", "");
      await new Promise((resolve) => document.addEventListener("visibilitychange", resolve,
        { once: true }));
    }
    feedState.controller = new AbortController();
    try {
      const response = await call("GET", "/api/live", undefined, feedState.controller.signal);
      if (!response.ok) {
        setLink(response.status === 401 ? "needs an API key" : await errorText(response), "off");
        await sleep(response.status === 401 ? 1000 : 3000);
        continue;
      }
      setLink("live", "on");
      await readEvents(response, (data) => receive(JSON.parse(data)));
      setLink("reconnecting", "off");
    } catch (err) {
      if (document.hidden) continue;  // closed on purpose: wait to be shown
      setLink("disconnected", "off");
    }
    await sleep(2000);
  }
}

// Server-sent events from a fetch() reply (EventSource cannot send the key): each
// event's data, in order, until the stream ends.
async function readEvents(response, onData) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) onData(line.slice(6));
      }
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function receive(message) {
  if (message.type === "hello") {
    state.hello = message;
    state.series = message.series.slice(-SERIES_MAX);
    state.requests = message.requests.slice(-REQUESTS_MAX);
  } else {
    state.series.push(message.sample);
    if (state.series.length > SERIES_MAX) state.series.splice(0, state.series.length - SERIES_MAX);
    state.requests.push(...message.requests);
    if (state.requests.length > REQUESTS_MAX) {
      state.requests.splice(0, state.requests.length - REQUESTS_MAX);
    }
  }
  const modelsChanged = Boolean(message.models);
  if (modelsChanged) state.models = message.models;
  else message.models = state.models;
  state.last = message;
  render(modelsChanged);
}

// ---- views -----------------------------------------------------------------------------
// ``modelsChanged``: false when a tick left the models as they were (their table stays)
function render(modelsChanged = true) {
  if (!state.last) return;
  if (state.page === "overview") renderOverview();
  if (state.page === "models" && modelsChanged) renderModels();
  if (state.page === "requests") renderRequests();
  if (state.page === "playground") fillPickers();
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(s) {
  if (s < 60) return Math.floor(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function card(label, value, small) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value" + (small ? " small" : "") }, value));
}

function renderOverview() {
  const m = state.last;
  const s = m.status, c = m.capacity, t = m.transports;
  const cards = [card("State", s.state), card("Uptime", duration(s.uptimeS)),
    card("Version", s.version), card("Process memory", bytes(s.memoryBytes)),
    card("Model memory", bytes(s.modelMemoryBytes)),
    card("Running", c.running + " / " + c.maxConcurrent),
    card("Queued", c.queued + " / " + c.maxQueued), card("Refused", c.refused),
    card("Loaded models", m.models.filter((x) => x.state === "loaded").map((x) => x.id)
      .join(", ") || "none", true)];
  if (t.http) cards.push(card("HTTP", "http://" + t.http.host + ":" + t.http.port, true));
  if (t.rpc) {
    cards.push(card("RPC public key", t.rpc.publicKey || "–", true));
    cards.push(card("Announced topics", (t.rpc.topics || []).join(", ") || "none", true));
  }
  $("status-cards").replaceChildren(...cards);

  const series = state.series;
  const models = [...new Set(series.flatMap((p) => Object.keys(p.requests)))];
  chart($("chart-rps"), models.map((id) => ({ label: id,
    points: series.map((p) => [p.t, p.requests[id] || 0]) })));
  chart($("chart-latency"), [
    { label: "p50", points: series.map((p) => [p.t, p.p50Ms]) },
    { label: "p99", points: series.map((p) => [p.t, p.p99Ms]) }]);
  chart($("chart-llm"), [
    { label: "first token (ms)", points: series.map((p) => [p.t, p.ttftMs]) },
    { label: "tokens/s", points: series.map((p) => [p.t, p.tokensPerS]) }]);
  chart($("chart-queue"), [
    { label: "running", points: series.map((p) => [p.t, p.running]) },
    { label: "waiting", points: series.map((p) => [p.t, p.queued]) }]);

  const rows = Object.entries(c.sequences || {}).map(([id, q]) => el("tr", {},
    el("td", {}, id), el("td", {}, q.running + " / " + q.slots), el("td", {}, q.waiting),
    el("td", {}, q.contextLength), el("td", {}, bar(q.kvCacheUse),
      (100 * q.kvCacheUse).toFixed(1) + " %")));
  $("sequences").replaceChildren(rows.length ? el("table", { class: "list" },
    el("thead", {}, el("tr", {}, ...["Model", "Sequences running", "Waiting", "Context",
      "KV cache"].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows))
    : el("p", { class: "note" }, "No language model is loaded."));

  const fleets = m.fleets || [];
  $("fleet-panel").hidden = !fleets.length;
  const workerRow = (w) => el("tr", {},
    el("td", { class: "mono" }, w.key.slice(0, 16) + "…"),
    el("td", {}, w.down ? "down" : "up"),
    el("td", {}, w.capacity ? w.capacity.currentLoad + " running, " + w.capacity.queued +
      " queued, models " + (w.capacity.availableModels || []).join(", ") : "not probed"),
    el("td", {}, "sent " + w.sent + ", answered " + w.answered));
  $("fleets").replaceChildren(...fleets.flatMap((f) => Object.entries(f.topics).map(
    ([topic, workers]) => el("div", {}, el("div", { class: "mono" }, "topic " + topic),
      el("table", { class: "list" }, el("tbody", {}, ...workers.map(workerRow)))))));
}

function bar(share) {
  const inner = el("div");
  inner.style.width = Math.max(0, Math.min(100, 100 * share)).toFixed(1) + "%";
  return el("div", { class: "bar" }, inner);
}

// A line chart of the last few minutes; null points leave gaps.
function chart(canvas, lines) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 44, right = 8, top = 8, bottom = 34;
  const now = state.series.length ? state.series[state.series.length - 1].t : Date.now();
  // the span the series covers, at least half a minute and at most what it keeps
  const kept = SERIES_MAX * (state.hello ? state.hello.periodMs : 1000);
  const span = Math.min(kept, Math.max(30000, state.series.length ? now - state.series[0].t : 0));
  let max = 0;
  for (const line of lines) for (const [, v] of line.points) if (v !== null && v > max) max = v;
  // what the chart shows, for whoever reads the page without eyes (the browser test)
  canvas.dataset.max = max;
  canvas.dataset.last = lines.reduce((sum, line) => {
    const last = line.points[line.points.length - 1];
    return sum + (last && last[1] ? last[1] : 0);
  }, 0);
  max = niceMax(max);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#eaeef2"; g.fillStyle = "#656d76"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (height - top - bottom) * (1 - i / 4);
    g.beginPath(); g.moveTo(left, y); g.lineTo(width - right, y); g.stroke();
    g.fillText(format(max * i / 4), 4, y + 4);
  }
  g.fillText("-" + (span >= 90000 ? Math.round(span / 60000) + " min" : Math.round(span / 1000) +
    " s"), left, height - bottom + 14);
  g.fillText("now", width - right - 22, height - bottom + 14);
  const x = (t) => left + (width - left - right) * (1 - (now - t) / span);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  let legendX = left;
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    g.strokeStyle = color; g.lineWidth = 1.6; g.beginPath();
    let drawing = false;
    for (const [t, v] of line.points) {
      if (v === null || v === undefined || now - t > span) { drawing = false; continue; }
      if (drawing) g.lineTo(x(t), y(v)); else g.moveTo(x(t), y(v));
      drawing = true;
    }
    g.stroke();
    const last = line.points[line.points.length - 1];
    g.fillStyle = color;
    if (last && last[1] !== null && last[1] !== undefined) {
      g.beginPath(); g.arc(x(last[0]), y(last[1]), 2.5, 0, 2 * Math.PI); g.fill();
    }
    g.fillRect(legendX, height - 12, 10, 3);
    g.fillStyle = "#656d76"; g.fillText(line.label, legendX + 14, height - 8);
    legendX += 24 + g.measureText(line.label).width;
  });
  if (!lines.length) g.fillText("no requests in the last few minutes", left + 8, top + 20);
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function format(v) {
  return v >= 10 ? Math.round(v).toString() : v >= 1 ? v.toFixed(1) : v.toFixed(2);
}

function renderModels() {
  const rows = state.models.map((m) => {
    const shown = m.state === "available" && m.cached ? "cached" : m.state;
    const stateCell = el("td", {}, el("span", { class: "badge " + shown }, shown));
    if (m.fetch) {
      const f = m.fetch;
      const share = f.bytesTotal ? f.bytesDone / f.bytesTotal : 0;
      stateCell.append(bar(share), el("div", { class: "note" }, bytes(f.bytesDone) + " of " +
        bytes(f.bytesTotal) + ", " + f.mbPerS + " MB/s" +
        (f.etaS !== null ? ", ETA " + duration(f.etaS) : "")));
      stateCell.querySelector(".bar").dataset.share = share.toFixed(4);
    }
    if (m.state === "failed" && m.error) stateCell.append(el("div", { class: "note" }, m.error));
    const src = m.source || {};
    const source = src.kind === "drive" ? "drive " + src.key.slice(0, 12) + "…" + src.path
      : src.kind === "url" ? src.url : "local folder";
    const loaded = m.state === "loaded";
    const busy = ["loading", "fetching", "unloading"].includes(m.state);
    const action = el("button", { class: loaded ? "danger" : "", type: "button",
      "data-model": m.id, onclick: () => loadOrUnload(m.id, loaded) },
    loaded ? "Unload" : "Load");
    if (busy) action.disabled = true;
    return el("tr", { "data-model": m.id, "data-state": shown }, el("td", {}, m.id,
      m.description ? el("div", { class: "note" }, m.description) : null),
    el("td", {}, m.task || "–"), el("td", {}, m.runtime || "–"), stateCell,
    el("td", {}, bytes(m.memoryBytes)), el("td", { class: "mono" }, source),
    el("td", {}, m.version || "–"), el("td", {}, action));
  });
  $("models-body").replaceChildren(...rows);
  $("models-note").textContent = state.models.length + " models; cached: files on this " +
    "machine, not loaded.";
}

async function loadOrUnload(id, loaded) {
  const verb = loaded ? "unload" : "load";
  toast((loaded ? "Unloading " : "Loading ") + id + "…");
  try {
    const response = await call("POST", "/api/models/" + encodeURIComponent(id) + "/" + verb);
    if (response.ok) toast(id + (loaded ? " unloaded" : " loaded"));
    else toast(verb + " " + id + ": " + await errorText(response), true);
  } catch (err) {
    toast(verb + " " + id + ": " + err, true);
  }
}

function renderRequests() {
  const text = $("req-filter").value.trim().toLowerCase();
  const status = $("req-status").value;
  let list = state.requests.slice().reverse();
  if (status !== "all") list = list.filter((r) => (status === "ok") === r.ok);
  if (text) {
    list = list.filter((r) => [r.requestId, r.model, r.transport, r.code]
      .some((v) => v && String(v).toLowerCase().includes(text)));
  }
  if ($("req-failed-first").checked) list.sort((a, b) => Number(a.ok) - Number(b.ok));
  const failed = state.requests.filter((r) => !r.ok).length;
  $("req-summary").textContent = failed + " failed of the last " + state.requests.length;
  $("req-body").replaceChildren(...list.map((r) => el("tr", { class: r.ok ? "" : "failed" },
    el("td", {}, new Date(r.t).toLocaleTimeString()),
    el("td", { class: "mono" }, r.requestId || "–"), el("td", {}, r.model),
    el("td", {}, r.transport || "–"),
    el("td", {}, el("span", { class: "badge " + (r.ok ? "ok" : "bad") }, r.ok ? "ok" : r.code)),
    el("td", {}, r.latencyMs.toFixed(1) + " ms"),
    el("td", {}, r.ttftMs === null ? "–" : r.ttftMs.toFixed(0) + " ms"),
    el("td", {}, r.tokens ? r.tokens + (r.tokensPerS ? " (" + r.tokensPerS + "/s)" : "") : "–"))));
}

// ---- playground ------------------------------------------------------------------------
const PICKERS = { "chat-model": "text-generation", "embed-model": "text-embedding",
  "image-model": "image-classification", "digits-model": "classification" };

function fillPickers() {
  for (const [id, task] of Object.entries(PICKERS)) {
    const select = $(id);
    const ids = state.models.filter((m) => m.task === task).sort((a, b) =>
      Number(b.state === "loaded") - Number(a.state === "loaded")).map((m) => m.id);
    const current = [...select.options].map((o) => o.value).join("\n");
    if (current === ids.join("\n")) continue;
    const chosen = select.value;
    select.replaceChildren(...ids.map((m) => el("option", { value: m }, m)));
    if (ids.includes(chosen)) select.value = chosen;
  }
}

const chat = { messages: [], controller: null };
const WEATHER_TOOL = { type: "function", function: { name: "get_weather",
  description: "The current weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } },
    required: ["city"] } } };

function chatLine(cls, who, text) {
  const line = el("div", { class: "msg " + cls }, el("span", { class: "who" }, who), text);
  $("chat-log").append(line);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return line;
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || chat.controller) return;
  $("chat-input").value = "";
  chat.messages.push({ role: "user", content: text });
  chatLine("user", "you", text);
  const body = { model: $("chat-model").value, messages: chat.messages, stream: true,
    temperature: Number($("chat-temperature").value),
    max_tokens: Number($("chat-max").value) };
  if ($("chat-tools").checked) body.tools = [WEATHER_TOOL];
  $("chat-curl").textContent = curl("POST", "/v1/chat/completions", body);
  const answer = chatLine("assistant", body.model, "");
  const textNode = document.createTextNode("");
  answer.append(textNode);
  const calls = {};
  chat.controller = new AbortController();
  $("chat-send").disabled = true; $("chat-stop").disabled = false;
  let reply = "";
  try {
    const response = await call("POST", "/v1/chat/completions", body, chat.controller.signal);
    if (!response.ok) throw new Error(await errorText(response));
    await readEvents(response, (data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.code + ": " + chunk.error.message);
      const delta = (chunk.choices[0] || {}).delta || {};
      if (delta.content) {
        reply += delta.content; textNode.data = reply;
        answer.dataset.deltas = Number(answer.dataset.deltas || 0) + 1;  // streamed pieces
      }
      for (const tc of delta.tool_calls || []) {
        const c = calls[tc.index] || (calls[tc.index] = { id: tc.id, name: "", args: "" });
        if (tc.function && tc.function.name) c.name += tc.function.name;
        if (tc.function && tc.function.arguments) c.args += tc.function.arguments;
      }
    });
    const toolCalls = Object.values(calls);
    for (const c of toolCalls) chatLine("tool", "tool call", c.name + "(" + c.args + ")");
    chat.messages.push(toolCalls.length ? { role: "assistant", content: reply || null,
      tool_calls: toolCalls.map((c) => ({ id: c.id, type: "function",
        function: { name: c.name, arguments: c.args } })) }
      : { role: "assistant", content: reply });
  } catch (err) {
    if (err.name === "AbortError") {
      chatLine("error", "stopped", "generation stopped");
      if (reply) chat.messages.push({ role: "assistant", content: reply });
    } else {
      chatLine("error", "error", String(err.message || err));
      chat.messages.pop();
    }
  } finally {
    chat.controller = null;
    $("chat-send").disabled = false; $("chat-stop").disabled = true;
  }
}

async function compareSentences() {
  const body = { model: $("embed-model").value, input: [$("embed-a").value, $("embed-b").value] };
  $("embed-curl").textContent = curl("POST", "/v1/embeddings", body);
  $("embed-result").textContent = "…";
  const response = await call("POST", "/v1/embeddings", body);
  if (!response.ok) { $("embed-result").textContent = await errorText(response); return; }
  const [a, b] = (await response.json()).data.map((d) => d.embedding);
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  const cosine = dot / Math.sqrt(na * nb);
  $("embed-result").textContent = "cosine similarity " + cosine.toFixed(4) + " (" + a.length +
    " dimensions)";
  $("embed-result").dataset.cosine = cosine.toFixed(6);
}

async function classify(model, inputData, resultId, curlId, curlInput) {
  const path = "/api/inference/" + encodeURIComponent(model);
  $(curlId).textContent = curl("POST", path, { inputData: curlInput });
  $(resultId).textContent = "…";
  const response = await call("POST", path, { inputData });
  if (!response.ok) { $(resultId).textContent = await errorText(response); return; }
  const result = (await response.json()).result;
  const top = (result.predictions || [[]])[0];
  $(resultId).replaceChildren(...top.map((p, i) => el("div", i ? {} : { class: "top" },
    (i ? "" : "→ ") + p.label + "  " + (100 * p.score).toFixed(1) + " %")));
  if (top.length) $(resultId).dataset.label = top[0].label;
}

function readImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const base64 = String(reader.result).split(",")[1];
    classify($("image-model").value, base64, "image-result", "image-curl",
      base64.length > 80 ? base64.slice(0, 60) + "…(base64 of " + file.name + ")" : base64);
  };
  reader.readAsDataURL(file);
}

function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    readImage(e.dataTransfer.files[0]);
  });
  $("image-file").addEventListener("change", (e) => readImage(e.target.files[0]));
}

function setupPad() {
  const pad = $("pad");
  const g = pad.getContext("2d");
  const clear = () => { g.fillStyle = "#000"; g.fillRect(0, 0, pad.width, pad.height); };
  clear();
  let drawing = false;
  const point = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
  };
  pad.addEventListener("pointerdown", (e) => { drawing = true; g.beginPath(); g.moveTo(...point(e)); });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    g.strokeStyle = "#fff"; g.lineWidth = 16; g.lineCap = "round"; g.lineJoin = "round";
    g.lineTo(...point(e)); g.stroke();
  });
  window.addEventListener("pointerup", () => { drawing = false; });
  $("pad-clear").addEventListener("click", clear);
  $("pad-run").addEventListener("click", () => {
    // the digits model reads 8x8 images with ink from 0 to 16, row by row
    const small = document.createElement("canvas");
    small.width = 8; small.height = 8;
    const s = small.getContext("2d");
    s.imageSmoothingQuality = "high";
    s.drawImage(pad, 0, 0, 8, 8);
    const pixels = s.getImageData(0, 0, 8, 8).data;
    const values = [];
    for (let i = 0; i < 64; i++) values.push(Math.round(16 * pixels[4 * i] / 255));
    classify($("digits-model").value, values, "pad-result", "pad-curl", values);
  });
}

// ---- pages -----------------------------------------------------------------------------
function show() {
  const page = (location.hash || "#overview").slice(1);
  state.page = ["overview", "models", "playground", "requests"].includes(page) ? page : "overview";
  for (const section of document.querySelectorAll(".page")) {
    section.hidden = section.id !== "page-" + state.page;
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === state.page);
  }
  render();
}

function setup() {
  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", visibilityChanged);
  $("key-button").addEventListener("click", askKey);
  $("key-cancel").addEventListener("click", () => $("key-dialog").close());
  $("key-form").addEventListener("submit", () => {
    sessionStorage.setItem(KEY_STORE, $("key-input").value);
    $("key-input").value = "";
  });
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-stop").addEventListener("click", () => chat.controller && chat.controller.abort());
  $("chat-clear").addEventListener("click", () => {
    chat.messages = []; $("chat-log").replaceChildren();
  });
  $("embed-run").addEventListener("click", compareSentences);
  for (const id of ["req-filter", "req-status", "req-failed-first"]) {
    $(id).addEventListener("input", renderRequests);
  }
  setupDrop();
  setupPad();
  show();
  listen();
}

setup();
