// The comparison page of `character serve` (character/compare.py): one prompt, every selected model's
// answer in its own column. A plain client of the OpenAI-compatible API: GET catalog for the models, the
// suffixes and the initial settings, then one streamed POST v1/chat/completions per column.
"use strict";

const SETTINGS = ["temperature", "top_p", "max_tokens", "repetition_penalty", "seed"];
const BUSY_RETRIES = 5;  // 503 (queue full): wait Retry-After and try again, this many times, then give up

const state = {
  key: null,                 // the API key: in this variable only, never in storage or a cookie
  catalog: null,             // GET catalog: {models, suffixes, defaults, limits}
  columns: [],               // every column of every run, for the export (ratings and stars edited in place)
  runs: 0,
  current: null,             // the latest run; Stop marks it stopped, so its unsent columns stay unsent
  controllers: new Set(),    // one AbortController per request in flight: Stop aborts them all
};

const $ = (id) => document.getElementById(id);
const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); reject(new DOMException("stopped", "AbortError")); });
});

function say(text) { $("server-status").textContent = text; }

function headers() {
  const h = {"Content-Type": "application/json"};
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function errorText(res) {
  try { return (await res.json()).error.message; } catch { return res.statusText || `HTTP ${res.status}`; }
}

// ---- catalog and key ------------------------------------------------------------------------------------
async function loadCatalog() {
  let res;
  try {
    res = await fetch("catalog", {headers: headers()});
  } catch (err) {
    say(`Cannot reach the server (${err.message}); is character serve still running?`);
    return;
  }
  if (res.status === 401) return askKey(state.key ? "The server refused that key; try again." : "This server needs its API key.");
  if (res.status === 503) { say("The server is busy; retrying in a moment…"); setTimeout(loadCatalog, 2000); return; }
  if (!res.ok) { say(`The server answered ${res.status}: ${await errorText(res)}`); return; }
  state.catalog = await res.json();
  $("key-form").hidden = true;
  showCatalog(state.catalog);
}

function askKey(message) {
  say(message);
  $("ask").hidden = true;
  $("key-form").hidden = false;
  $("api-key").value = "";
  $("api-key").focus();
}

function kindOf(model) {
  if (model.method === "base") return "base model";
  if (model.method === "system_prompt") return `${model.persona}'s constitution as system prompt`;
  return `trained: ${model.method}` + (model.persona ? ` (${model.persona})` : "");
}

function showCatalog(catalog) {
  const list = $("model-list");
  list.replaceChildren();
  for (const model of catalog.models) {
    const label = document.createElement("label");
    const box = Object.assign(document.createElement("input"), {type: "checkbox", value: model.id, checked: true});
    const kind = Object.assign(document.createElement("span"), {className: "kind", textContent: kindOf(model)});
    label.append(box, document.createTextNode(model.id), kind);
    list.append(label);
  }
  const select = $("suffix");
  select.replaceChildren(new Option("none", "none"));
  for (const name of Object.keys(catalog.suffixes)) select.append(new Option(name, name));
  showSuffix();
  if (!state.columns.length) {  // a key asked again mid-session keeps the user's settings
    for (const name of SETTINGS) $(name).value = catalog.defaults[name];
  }
  $("max_tokens").max = catalog.limits.max_tokens;
  const n = catalog.models.length;
  say(`${n} model${n === 1 ? "" : "s"}; the server runs one request at a time and queues up to ${catalog.limits.max_pending}.`);
  $("ask").hidden = false;
  $("prompt").focus();
}

function showSuffix() {
  const name = $("suffix").value;
  $("suffix-text").textContent = name === "none" ? "" : `appended to the prompt: ${state.catalog.suffixes[name]}`;
}

// ---- a run: one column per selected model ---------------------------------------------------------------
function readSettings() {
  const settings = {};
  for (const name of SETTINGS) {
    const input = $(name);
    if (!input.checkValidity() || input.value === "") {
      $("form-status").textContent = `${name}: ${input.validationMessage || "a number is needed"}`;
      input.focus();
      return null;
    }
    settings[name] = Number(input.value);
  }
  return settings;
}

async function askAll(event) {
  event.preventDefault();
  const settings = readSettings();
  if (!settings) return;
  const prompt = $("prompt").value;
  const chosen = state.catalog.models.filter((m) => $("model-list").querySelector(`input[value="${CSS.escape(m.id)}"]`).checked);
  if (!prompt.trim()) { $("form-status").textContent = "Type a prompt first."; $("prompt").focus(); return; }
  if (!chosen.length) { $("form-status").textContent = "Select at least one model."; return; }
  $("form-status").textContent = "";
  const suffix = $("suffix").value, system = $("system").value.trim() ? $("system").value : null;
  const user = suffix === "none" ? prompt : `${prompt} ${state.catalog.suffixes[suffix]}`;
  const messages = [...(system ? [{role: "system", content: system}] : []), {role: "user", content: user}];
  state.runs += 1;
  const stamp = new Date().toISOString();
  const run = {id: `human-${stamp.replace(/\D/g, "").slice(0, 14)}-${state.runs}`, prompt, condition: suffix,
               system, settings, messages, created: stamp, stopped: false};
  state.current = run;
  showRunHeader(run);
  const columns = chosen.map((model, i) => makeColumn(run, model, i));
  $("columns").replaceChildren(...columns.map((c) => c.el));
  state.columns.push(...columns);
  $("export-bar").hidden = false;
  updateCount();
  $("run").disabled = true;
  $("stop").disabled = false;
  // No more requests at once than the server queues: the rest wait here, shown as waiting, never as busy.
  const task = (c) => () => run.stopped ? stopped(c) : answer(c);
  await pool(columns.map(task), state.catalog.limits.max_pending);
  $("run").disabled = false;
  $("stop").disabled = state.controllers.size === 0;
}

function stopped(col) {
  setState(col, "error", "stopped");
  col.retry.hidden = false;
}

function showRunHeader(run) {
  const s = run.settings, head = $("run-header");
  const strong = Object.assign(document.createElement("strong"), {textContent: `Run ${state.runs}`});
  head.replaceChildren(strong, document.createTextNode(
    ` · seed ${s.seed} · temperature ${s.temperature} · top_p ${s.top_p} · max_tokens ${s.max_tokens}` +
    ` · repetition_penalty ${s.repetition_penalty} · suffix ${run.condition}` + (run.system ? " · with a system prompt" : "")));
  head.hidden = false;
}

async function pool(tasks, limit) {
  let next = 0;
  const worker = async () => { while (next < tasks.length) await tasks[next++](); };
  await Promise.all(Array.from({length: Math.max(1, Math.min(limit, tasks.length))}, worker));
}

function makeColumn(run, model, index) {
  const id = `col-${state.runs}-${index}`;
  const el = Object.assign(document.createElement("article"), {className: "column"});
  el.dataset.model = model.id;
  el.setAttribute("aria-labelledby", id);
  const head = document.createElement("header");
  head.append(Object.assign(document.createElement("h2"), {id, textContent: model.id}),
              Object.assign(document.createElement("span"), {className: "kind", textContent: kindOf(model)}));
  if (model.system) {  // what the server puts in front of this column's requests
    const details = document.createElement("details");
    details.append(Object.assign(document.createElement("summary"), {textContent: "the system prompt it gets"}),
                   Object.assign(document.createElement("p"), {className: "hint", textContent: model.system}));
    head.append(details);
  }
  const status = Object.assign(document.createElement("p"), {className: "status"});
  status.setAttribute("role", "status");
  const message = document.createElement("span"), elapsed = document.createElement("span");
  elapsed.setAttribute("aria-hidden", "true");  // ticks every second: not for the live region
  status.append(message, elapsed);
  const answerEl = Object.assign(document.createElement("div"), {className: "answer", tabIndex: 0});
  answerEl.setAttribute("role", "region");
  answerEl.setAttribute("aria-label", `answer of ${model.id}`);
  const col = {el, model, run, text: "", finish: null, tokens: null, rating: null, starred: false, state: "waiting",
               since: null, message, elapsed, answerEl};
  el.append(head, status, answerEl, judgeControls(col, id));
  setState(col, "waiting", "waiting: not sent yet");
  return col;
}

function judgeControls(col, id) {
  const box = Object.assign(document.createElement("div"), {className: "judge"});
  const rating = document.createElement("fieldset");
  rating.append(Object.assign(document.createElement("legend"), {textContent: "Rating"}));
  for (const value of ["none", "1", "2", "3", "4", "5"]) {
    const label = document.createElement("label");
    const radio = Object.assign(document.createElement("input"), {type: "radio", name: `rate-${id}`, value,
                                                                   checked: value === "none"});
    radio.addEventListener("change", () => { col.rating = value === "none" ? null : Number(value); updateCount(); });
    label.append(radio, document.createTextNode(value === "none" ? "–" : value));
    if (value === "none") label.title = "not rated";
    rating.append(label);
  }
  const star = Object.assign(document.createElement("button"), {type: "button", className: "star", textContent: "☆ Star"});
  star.setAttribute("aria-pressed", "false");
  star.addEventListener("click", () => {
    col.starred = !col.starred;
    star.setAttribute("aria-pressed", String(col.starred));
    star.textContent = col.starred ? "★ Starred" : "☆ Star";
    updateCount();
  });
  const retry = Object.assign(document.createElement("button"), {type: "button", className: "retry", textContent: "Retry", hidden: true});
  retry.addEventListener("click", () => { retry.hidden = true; answer(col); });
  col.retry = retry;
  box.append(rating, star, retry);
  return box;
}

function setState(col, name, text) {
  col.state = name;
  col.el.dataset.state = name;
  col.message.textContent = text;
  col.answerEl.setAttribute("aria-busy", String(name === "waiting" || name === "streaming"));
  if (name !== "waiting") col.elapsed.textContent = "";
}

// One column's answer: stream it; on 503 wait Retry-After and try again (shown as busy, not as a failure).
async function answer(col) {
  const controller = new AbortController();
  state.controllers.add(controller);
  $("stop").disabled = false;
  const body = {model: col.model.id, messages: col.run.messages, ...col.run.settings, n: 1, stream: true,
                stream_options: {include_usage: true}};
  try {
    for (let attempt = 0; ; attempt++) {
      Object.assign(col, {text: "", finish: null, tokens: null});
      col.answerEl.textContent = "";
      col.since = Date.now();
      setState(col, "waiting", "waiting: queued or generating");
      const result = await stream(col, body, controller.signal);
      if (result.busy === undefined) break;
      if (attempt === BUSY_RETRIES) {
        setState(col, "busy", "busy: the server's queue is full; retry in a while");
        col.retry.hidden = false;
        return;
      }
      setState(col, "busy", `busy: the server's queue is full; trying again in ${result.busy} s`);
      await sleep(result.busy * 1000, controller.signal);
    }
    const seconds = ((Date.now() - col.since) / 1000).toFixed(1);
    setState(col, "done", `done · ${col.finish} · ${col.tokens ?? "?"} tokens · after ${seconds} s`);
    updateCount();
  } catch (err) {
    if (err.name === "AbortError") return stopped(col);
    setState(col, "error", `error: ${err.message}`);
    col.retry.hidden = false;
    if (err.unauthorized) askKey("The server refused the key; enter it again, then ask again.");
  } finally {
    state.controllers.delete(controller);
    if (!state.controllers.size && !$("run").disabled) $("stop").disabled = true;
  }
}

// POST one streamed request; fills col.text, col.finish, col.tokens. Returns {busy: seconds} on 503.
async function stream(col, body, signal) {
  const res = await fetch("v1/chat/completions", {method: "POST", headers: headers(), body: JSON.stringify(body), signal});
  if (res.status === 503) return {busy: Math.max(1, Number(res.headers.get("Retry-After")) || 1)};
  if (!res.ok) {
    const err = new Error(`${res.status}: ${await errorText(res)}`);
    err.unauthorized = res.status === 401;
    throw err;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) throw new Error("the stream ended before [DONE]");
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;  // ": generating" keep-alive comments
        const data = line.slice(6);
        if (data === "[DONE]") return {};
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) col.tokens = chunk.usage.completion_tokens;
        for (const choice of chunk.choices) {
          if (choice.delta.content) {
            if (col.state !== "streaming") setState(col, "streaming", "streaming");
            col.text += choice.delta.content;
            col.answerEl.textContent = col.text;
          }
          if (choice.finish_reason) col.finish = choice.finish_reason;
        }
      }
    }
  }
}

// ---- export ---------------------------------------------------------------------------------------------
// Rows of the evaluation's answer format (character.eval.requests answer_requests), task side_by_side_human.
function exportRows() {
  return state.columns.filter((c) => c.state === "done").map((c) => {
    const {seed, ...sampling} = c.run.settings;
    return {id: c.run.id, task: "side_by_side_human", condition: c.run.condition, prompt: c.run.prompt,
            method: c.model.method, answer: c.text, finish_reason: c.finish, tokens: c.tokens, persona: c.model.persona,
            model: c.model.id, system: c.run.system, seed, sampling, rating: c.rating, starred: c.starred,
            created: c.run.created};
  });
}

function exportJsonl() {
  return exportRows().map((row) => JSON.stringify(row) + "\n").join("");
}

function updateCount() {
  const rows = exportRows();
  $("export-count").textContent = `${rows.length} answers to export: ${rows.filter((r) => r.rating !== null).length} rated, ` +
    `${rows.filter((r) => r.starred).length} starred`;
}

function download() {
  const url = URL.createObjectURL(new Blob([exportJsonl()], {type: "application/x-ndjson"}));
  const link = Object.assign(document.createElement("a"), {href: url, download: "side_by_side_human.jsonl"});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---- wiring ---------------------------------------------------------------------------------------------
function newSeed() {
  $("seed").value = crypto.getRandomValues(new Uint32Array(1))[0] % 2147483648;
}

setInterval(() => {  // seconds waited, beside each waiting column's status
  for (const c of state.columns) {
    if (c.state === "waiting" && c.since) c.elapsed.textContent = ` · ${Math.round((Date.now() - c.since) / 1000)} s`;
  }
}, 1000);

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value;
    $("api-key").value = "";
    say("Checking the key…");
    loadCatalog();
  });
  $("ask").addEventListener("submit", askAll);
  $("ask").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!$("run").disabled) $("ask").requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controllers.size) $("stop").click();
  });
  $("stop").addEventListener("click", () => {
    if (state.current) state.current.stopped = true;
    for (const c of state.controllers) c.abort();
  });
  $("suffix").addEventListener("change", showSuffix);
  $("new-seed").addEventListener("click", newSeed);
  $("export").addEventListener("click", download);
  loadCatalog();
});

window.comparePage = {state, exportRows, exportJsonl};  // for the console, and for tests
