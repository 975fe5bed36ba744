/* Shoal web console: one page over the REST API and its server-sent event streams.
   Same origin, same bearer tokens (kept in sessionStorage); no other host is contacted. */
"use strict";

const TOKEN_KEY = "shoal.token";
const RUN_STATES = ["submitted", "running", "ready_pause", "paused", "ready_stop", "stopped",
                    "failed", "succeeded", "serial_wait"];
const FINISHED = new Set(["succeeded", "failed", "stopped"]);
const state = { role: null, view: null };

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function badge(s) {
  return el("span", { class: "badge" + (s ? "" : " none"),
                      style: `background: var(--${s || "none"})` }, s || "not started");
}

function short(ts) { return ts ? ts.slice(0, 19).replace("T", " ") : "–"; }
function ms(v) { return v === null || v === undefined ? "–" : `${v} ms`; }

function toast(text) {
  const box = document.getElementById("toast");
  const t = el("div", {}, text);
  box.append(t);
  setTimeout(() => t.remove(), 6000);
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
}

function headers(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...extra };
}

async function api(method, path, body) {
  const opts = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) opts.body = JSON.stringify(body);
  const r = await fetch(path, opts);
  if (r.status === 401) {
    if (sessionStorage.getItem(TOKEN_KEY) !== null) setTimeout(signOut);  // revoked or wrong
    throw new ApiError(401, "sign in again");
  }
  const text = await r.text();
  const data = text && (r.headers.get("content-type") || "").includes("json")
    ? JSON.parse(text) : text;
  if (!r.ok) {
    throw new ApiError(r.status, (data && data.detail) || (data && data.title) || r.statusText);
  }
  return data;
}

/* A server-sent event stream read with fetch (EventSource cannot send a bearer token);
   reconnects after Last-Event-ID. Returns a stop function. */
function stream(path, onEvent, { onEnd } = {}) {
  let stopped = false, last = null;
  const ctrl = { abort: null };
  (async () => {
    while (!stopped) {
      const ac = new AbortController();
      ctrl.abort = () => ac.abort();
      try {
        const r = await fetch(path, { headers: headers(last ? { "Last-Event-ID": last } : {}),
                                      signal: ac.signal });
        if (!r.ok) throw new Error(`stream ${r.status}`);
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "", msg = {};
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line === "") {
              if (msg.id) last = msg.id;
              if (msg.event === "end") { stopped = true; if (onEnd) onEnd(); return; }
              if (msg.data !== undefined) onEvent(msg);
              msg = {};
            } else if (!line.startsWith(":")) {
              const j = line.indexOf(": ");
              const field = j < 0 ? line : line.slice(0, j);
              const val = j < 0 ? "" : line.slice(j + 2);
              msg[field] = field === "data" && msg.data !== undefined ? msg.data + "\n" + val : val;
            }
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      if (!stopped) await new Promise((res) => setTimeout(res, 1500));
    }
  })();
  return () => { stopped = true; if (ctrl.abort) ctrl.abort(); };
}

function debounce(fn, wait) {
  let t = null, running = false, again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try { await fn(); } catch (e) { /* shown by fn */ } finally { running = false; }
    if (again) { again = false; t = setTimeout(run, wait); }
  };
  return () => { clearTimeout(t); t = setTimeout(run, wait); };
}

const can = (role) => ({ viewer: 1, operator: 2, admin: 3 })[state.role] >=
                      ({ viewer: 1, operator: 2, admin: 3 })[role];

// ------------------------------------------------------------------ DAG

/* Lay out a definition's tasks with dagre and draw them; `states` maps task -> state.
   `onPick(task)` is called when a task is chosen (click or Enter). */
function drawDag(box, definition, states, { selected, onPick } = {}) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 46, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const t of definition.tasks) g.setNode(t.name, { width: Math.max(90, 8 * t.name.length + 28), height: 34 });
  for (const t of definition.tasks) for (const d of t.depends_on || []) g.setEdge(d, t.name);
  dagre.layout(g);
  const { width, height } = g.graph();
  // A small graph is not blown up to the box: the view is at least 640 x 240.
  const vw = Math.max(width, 640), vh = Math.max(height, 240);
  const root = svg("svg", { class: "dag", viewBox: `${(width - vw) / 2} ${(height - vh) / 2} ${vw} ${vh}`,
                            role: "img", "aria-label": "the workflow's tasks and dependencies" });
  for (const e of g.edges()) {
    const pts = g.edge(e).points;
    root.append(svg("path", { class: "edge", d: "M" + pts.map((p) => `${p.x},${p.y}`).join(" L"),
                              "marker-end": "url(#arrow)" }));
  }
  root.prepend(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                              markerWidth: 7, markerHeight: 7, orient: "auto" },
                                   svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8995a7" }))));
  for (const name of g.nodes()) {
    const n = g.node(name);
    const s = states[name] || null;
    const node = svg("g", { class: "node" + (name === selected ? " selected" : ""), tabindex: 0,
                            role: "button", "data-task": name, "data-state": s || "none",
                            "aria-label": `task ${name}: ${s || "not started"}`,
                            onclick: () => onPick && onPick(name),
                            onkeydown: (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); if (onPick) onPick(name); } } },
      svg("rect", { x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height,
                    fill: `var(--${s || "none"})` }),
      svg("text", { x: n.x, y: n.y + 4, "text-anchor": "middle",
                    fill: s && s !== "skipped" ? "#fff" : "#1d2430" }, name));
    root.append(node);
  }
  box.replaceChildren(root);
}

// ------------------------------------------------------------------ views

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.role = null;
  render();
}

async function login() {
  const main = document.getElementById("main");
  const err = el("p", { class: "error", role: "alert" });
  const input = el("input", { id: "token", type: "password", autocomplete: "current-password",
                              required: true });
  const form = el("form", { class: "card login", onsubmit: async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    const r = await fetch("/api/v1/me", { headers: headers() });
    if (r.ok) {
      state.role = (await r.json()).role;
      render();
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
      err.textContent = r.status === 401 ? "That token is not valid here." : `The API answered ${r.status}.`;
    }
  } },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "Paste an API token (SHOAL_API_TOKENS; make dev prints one). It stays in this browser tab only."),
    el("label", { for: "token" }, "API token", input),
    el("p", {}, el("button", { class: "primary", type: "submit" }, "Sign in")), err);
  main.replaceChildren(form);
  input.focus();
}

function view(cleanup) { if (state.view) state.view(); state.view = cleanup || null; }

// Runs ------------------------------------------------------------------

async function runsPage(params) {
  const main = document.getElementById("main");
  const wf = el("select", { id: "f-workflow", "aria-label": "workflow" }, el("option", { value: "" }, "all workflows"));
  const st = el("select", { id: "f-state", "aria-label": "state" }, el("option", { value: "" }, "any state"),
                RUN_STATES.map((s) => el("option", { value: s }, s)));
  const since = el("input", { id: "f-since", type: "datetime-local", "aria-label": "submitted since" });
  const until = el("input", { id: "f-until", type: "datetime-local", "aria-label": "submitted until" });
  const counts = el("div", { class: "counts", "aria-label": "runs by state" });
  const body = el("tbody");
  const err = el("p", { class: "error", role: "alert" });
  for (const [k, e] of [["workflow", wf], ["state", st]]) if (params.get(k)) e.dataset.want = params.get(k);
  main.replaceChildren(el("h1", {}, "Runs"),
    el("div", { class: "card" }, el("div", { class: "row" },
      el("label", {}, "Workflow", wf), el("label", {}, "State", st),
      el("label", {}, "Since", since), el("label", {}, "Until", until)), counts, err),
    el("div", { class: "card scroll" }, el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["run", "workflow", "state", "submitted", "duration", "started by"].map((h) => el("th", { scope: "col" }, h)))),
      body)));
  try {
    const wfs = await api("GET", "/api/v1/workflows");
    for (const w of wfs) wf.append(el("option", { value: w.name }, w.name));
    if (wf.dataset.want) wf.value = wf.dataset.want;
    if (st.dataset.want) st.value = st.dataset.want;
  } catch (e) { err.textContent = e.detail; }

  const iso = (v) => (v ? new Date(v).toISOString() : null);
  const load = debounce(async () => {
    const q = new URLSearchParams({ limit: "100" });
    if (wf.value) q.set("workflow", wf.value);
    if (st.value) q.append("state", st.value);
    if (since.value) q.set("since", iso(since.value));
    if (until.value) q.set("until", iso(until.value));
    const sq = new URLSearchParams();
    if (wf.value) sq.set("workflow", wf.value);
    if (since.value) sq.set("since", iso(since.value));
    if (until.value) sq.set("until", iso(until.value));
    try {
      const [page, stats] = await Promise.all([api("GET", "/api/v1/runs?" + q),
                                               api("GET", "/api/v1/stats?" + sq)]);
      err.textContent = "";
      counts.replaceChildren(...Object.entries(stats.by_state).map(([s, n]) =>
        el("span", {}, badge(s), " ", el("span", { class: "num", "data-count": s }, n))));
      body.replaceChildren(...page.runs.map((r) => el("tr", { "data-run": r.instance_id },
        el("td", {}, el("a", { href: `#/runs/${r.instance_id}` }, r.instance_id.slice(0, 8))),
        el("td", {}, `${r.workflow} v${r.version}`),
        el("td", {}, badge(r.state), r.imported ? " imported" : ""),
        el("td", {}, short(r.submitted_at)), el("td", { class: "num" }, ms(r.duration_ms)),
        el("td", { class: "actor" }, r.actor || "–"))));
    } catch (e) { err.textContent = e.detail; }
  }, 150);
  for (const e of [wf, st, since, until]) e.addEventListener("change", load);
  load();
  view(stream("/api/v1/stream", () => load()));
}

// Run detail ------------------------------------------------------------

async function runPage(id) {
  const main = document.getElementById("main");
  const head = el("div", { class: "card" });
  const controls = el("div", { class: "controls", "aria-label": "run controls" });
  const cerr = el("p", { class: "error", role: "alert", id: "control-error" });
  const dagBox = el("div", { id: "dag" });
  const slider = el("input", { id: "travel", type: "range", min: 1, max: 1, value: 1,
                               "aria-label": "event sequence: the state after this event" });
  const travelLabel = el("span", { id: "travel-label", class: "muted" }, "live");
  const forkBox = el("div");
  const gantt = el("div", { id: "gantt" });
  const taskBox = el("div", { id: "task" }, el("p", { class: "muted" }, "Choose a task in the graph."));
  const events = el("ol", { class: "events", id: "events", "aria-label": "event history" });
  main.replaceChildren(head, el("div", { class: "card" }, controls, cerr),
    el("div", { class: "grid2" },
      el("div", {}, el("div", { class: "card" }, el("h2", {}, "Graph"), dagBox,
                       el("div", { class: "travel" }, el("label", { for: "travel" }, "Time travel"), slider, travelLabel),
                       forkBox),
                    el("div", { class: "card" }, el("h2", {}, "Attempts over time"), gantt)),
      el("div", {}, el("div", { class: "card" }, taskBox),
                    el("div", { class: "card" }, el("h2", {}, "Events"), events))));

  let run = null, definition = null, replay = null, selected = null, live = true, stopLog = null;
  // The graph and the state shown come from the log (the replay's last step): the read
  // model may lag the event that woke this page by a moment.
  const stepStates = (step) => Object.fromEntries(step.tasks.filter((t) => t.state).map((t) => [t.task, t.state]));
  const latest = () => {
    if (replay && replay.steps.length) return stepStates(replay.steps[replay.steps.length - 1]);
    const out = {};
    for (const t of [...run.tasks].sort((a, b) => a.attempt - b.attempt)) out[t.task] = t.state;
    return out;
  };
  const runState = () => (replay && replay.steps.length ? replay.steps[replay.steps.length - 1].state : run.state);
  const redraw = () => {
    if (!definition) return;
    let states = latest();
    if (!live && replay) {
      const step = replay.steps[Number(slider.value) - 1];
      states = stepStates(step);
      travelLabel.textContent = `after event ${step.seq}: ${step.type} (run ${step.state})`;
    } else {
      travelLabel.textContent = "live";
    }
    drawDag(dagBox, definition, states, { selected, onPick: pick });
    [...events.children].forEach((li) => li.classList.toggle("at", !live && li.dataset.seq === slider.value));
  };

  const act = async (label, fn) => {
    cerr.textContent = "";
    try { await fn(); toast(`${label}: sent`); } catch (e) { cerr.textContent = `${label}: ${e.detail}`; }
  };
  const showControls = () => {
    controls.replaceChildren();
    if (!can("operator") || run.imported) {
      controls.append(el("span", { class: "muted" }, run.imported ? "Imported run: read-only." : "Read-only (viewer token)."));
      return;
    }
    // Only what the run's state accepts (the API derives it from the state table); a race
    // with another user still ends in the 409 reason, shown under the buttons.
    const offered = (run.allowed_actions || []).filter((a) => a !== "force-success");
    for (const a of offered) {
      controls.append(el("button", { type: "button", "data-action": a,
        onclick: () => act(a, () => api("POST", `/api/v1/runs/${id}/${a}`)) }, a));
    }
    if (!offered.length) controls.append(el("span", { class: "muted" }, `No control applies to a ${run.state} run.`));
  };
  const showHead = () => {
    head.replaceChildren(...[el("h1", {}, `Run ${id.slice(0, 8)} `, badge(runState())),
      el("p", { class: "muted" }, `${run.workflow} v${run.version} · attempt ${run.attempt} · submitted ${short(run.submitted_at)}`
        + ` · took ${ms(run.duration_ms)}`),
      el("p", { class: "muted", id: "run-actors" }, `started by ${run.actor || "unknown"}`
        + (run.stopped_by ? ` · stopped by ${run.stopped_by}` : "")
        + (run.last_actor && run.last_actor !== run.stopped_by ? ` · last control by ${run.last_actor}` : "")),
      run.failure ? el("p", { class: "error" }, run.failure) : null,
      run.forked_from ? el("p", {}, "Forked from ", el("a", { href: `#/runs/${run.forked_from.instance_id}` }, run.forked_from.instance_id.slice(0, 8)),
                           ` after event ${run.forked_from.seq}`) : null,
      Object.keys(run.params || {}).length ? el("p", { id: "params" }, "Params: ", Object.entries(run.params).map(([k, v]) => {
        // As written, and the value the run used when it differs (a $[...] expression).
        const used = (run.resolved_params || {})[k];
        return el("span", { class: "param", "data-param": k }, el("code", {}, `${k}=${v}`),
                  used !== undefined && used !== String(v) ? el("span", { class: "muted", title: "the value the run used" }, ` → ${used}`) : null, " ");
      })) : null,
      run.imported ? el("p", { class: "muted" }, "Imported from an incident bundle: read-only.") : null].filter(Boolean));
  };
  const showGantt = () => {
    const rows = run.tasks.filter((t) => t.started_at);
    if (!rows.length) { gantt.replaceChildren(el("p", { class: "muted" }, "No attempt has started yet.")); return; }
    const t0 = Math.min(...rows.map((t) => Date.parse(t.started_at)));
    const t1 = Math.max(...rows.map((t) => Date.parse(t.finished_at || new Date().toISOString())));
    const span = Math.max(t1 - t0, 1), W = 600, H = 20 * rows.length + 24;
    gantt.replaceChildren(svg("svg", { class: "gantt", viewBox: `0 0 ${W} ${H}`, role: "img",
                                        "aria-label": "attempts over time" },
      rows.map((t, i) => {
        const x = 110 + (Date.parse(t.started_at) - t0) / span * (W - 120);
        const w = Math.max(2, (Date.parse(t.finished_at || new Date().toISOString()) - Date.parse(t.started_at)) / span * (W - 120));
        return svg("g", {}, svg("text", { x: 0, y: 14 + 20 * i, "font-size": 11 }, `${t.task}#${t.attempt}`),
                   svg("rect", { x, y: 4 + 20 * i, width: w, height: 14, fill: `var(--${t.state})` },
                       svg("title", {}, `${t.task} attempt ${t.attempt}: ${t.state}, ${ms(t.duration_ms)}`)));
      }),
      svg("text", { x: 110, y: H - 4, "font-size": 11, fill: "#5d6878" }, `0 – ${(span / 1000).toFixed(1)} s`)));
  };
  const pick = (name) => { selected = name; redraw(); showTask(); };
  const showTask = () => {
    if (stopLog) { stopLog(); stopLog = null; }
    if (!selected) return;
    const attempts = run.tasks.filter((t) => t.task === selected).sort((a, b) => a.attempt - b.attempt);
    const last = attempts[attempts.length - 1];
    const terr = el("p", { class: "error", role: "alert" });
    const log = el("pre", { class: "log", id: "log", tabindex: 0, "aria-label": `log of ${selected}` });
    const scope = el("select", { "aria-label": "scope" }, ["downstream", "upstream", "only"].map((s) => el("option", { value: s }, s)));
    const buttons = [];
    if (can("operator") && !run.imported) {
      if (last && (last.state === "failed" || last.state === "killed") && (run.allowed_actions || []).includes("force-success")) {
        buttons.push(el("button", { type: "button", onclick: async () => {
          terr.textContent = "";
          try { await api("POST", `/api/v1/runs/${id}/tasks/${selected}/force-success`); toast("force-success: sent"); }
          catch (e) { terr.textContent = e.detail; }
        } }, "Force success"));
      }
      buttons.push(el("label", {}, "Scope", scope), el("button", { type: "button", onclick: async () => {
        terr.textContent = "";
        try {
          const r = await api("POST", `/api/v1/workflows/${run.workflow}/runs`,
                              { version: run.version, params: run.params, start_from: [selected], scope: scope.value });
          location.hash = `#/runs/${r.instance_id}`;
        } catch (e) { terr.textContent = e.detail; }
      } }, "Start a run from here"));
    }
    taskBox.replaceChildren(el("h2", {}, `Task ${selected}`),
      attempts.length ? el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ["attempt", "state", "exit", "worker", "took", "outputs"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, attempts.map((t) => el("tr", {}, el("td", { class: "num" }, t.attempt), el("td", {}, badge(t.state)),
          el("td", { class: "num" }, t.exit_code ?? "–"), el("td", {}, t.worker_id || "–"), el("td", { class: "num" }, ms(t.duration_ms)),
          el("td", {}, Object.entries(t.outputs || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "–"))))))
        : el("p", { class: "muted" }, "Not started."),
      el("div", { class: "row" }, buttons), terr, el("h2", {}, "Log"), log);
    if (!last) return;
    const path = `/api/v1/runs/${id}/tasks/${encodeURIComponent(selected)}/log?attempt=${last.attempt}`;
    if (FINISHED.has(last.state) || ["succeeded", "failed", "killed", "lost", "forced_success", "skipped"].includes(last.state)) {
      api("GET", path).then((text) => { log.textContent = text || "(no output)"; }, (e) => { log.textContent = e.detail; });
    } else {
      stopLog = stream(path + "&follow=true", (m) => { log.textContent += m.data + "\n"; log.scrollTop = log.scrollHeight; });
    }
  };
  const showEvents = (list) => {
    events.replaceChildren(...list.map((e) => el("li", { "data-seq": String(e.seq), value: e.seq },
      `${short(e.recorded_at)} ${e.type}${e.data && e.data.task ? " " + e.data.task : ""}`)));
  };
  const showFork = () => {
    forkBox.replaceChildren();
    if (!can("operator") || run.imported || live) return;
    const params = el("input", { id: "fork-params", value: Object.entries(run.params || {}).map(([k, v]) => `${k}=${v}`).join(" "),
                                 "aria-label": "params for the fork, k=v separated by spaces", size: 30 });
    const ferr = el("span", { class: "error", role: "alert" });
    forkBox.append(el("div", { class: "row" }, el("label", {}, "Params (k=v …)", params),
      el("button", { type: "button", id: "fork", onclick: async () => {
        const p = {};
        for (const kv of params.value.split(/\s+/).filter(Boolean)) {
          const i = kv.indexOf("=");
          if (i < 1) { ferr.textContent = `not k=v: ${kv}`; return; }
          p[kv.slice(0, i)] = kv.slice(i + 1);
        }
        try {
          const r = await api("POST", `/api/v1/runs/${id}/fork`, { at: Number(slider.value), params: p });
          location.hash = `#/runs/${r.instance_id}`;
        } catch (e) { ferr.textContent = e.detail; }
      } }, `Fork from event ${slider.value}`), ferr));
  };

  const refresh = debounce(async () => {
    try {
      run = await api("GET", `/api/v1/runs/${id}`);
    } catch (e) {
      head.replaceChildren(el("h1", {}, `Run ${id.slice(0, 8)}`), el("p", { class: "error" }, e.detail));
      return;
    }
    if (!definition) {
      definition = (await api("GET", `/api/v1/workflows/${run.workflow}/versions/${run.version}`)).definition;
    }
    showControls();
    const [evs, rep] = await Promise.all([api("GET", `/api/v1/runs/${id}/events`), api("GET", `/api/v1/runs/${id}/replay`)]);
    replay = rep;
    const wasEnd = live || Number(slider.value) === Number(slider.max);
    slider.max = String(Math.max(1, rep.steps.length));
    if (wasEnd) slider.value = slider.max;
    showHead(); showEvents(evs); showGantt(); redraw();
    if (selected) showTask();
    if (run.last_seq < rep.steps.length) catchUp();  // the read model is behind the log
  }, 120);
  const catchUp = debounce(() => refresh(), 700);
  slider.addEventListener("input", () => {
    live = Number(slider.value) === Number(slider.max) && !slider.dataset.pinned;
    redraw(); showFork();
  });
  slider.addEventListener("change", () => { live = Number(slider.value) === Number(slider.max); redraw(); showFork(); });
  refresh();
  view(stream(`/api/v1/runs/${id}/stream?follow=true`, () => refresh()));
  const prev = state.view;
  state.view = () => { if (prev) prev(); if (stopLog) stopLog(); };
}

// Workflows --------------------------------------------------------------

async function workflowsPage() {
  const main = document.getElementById("main");
  const body = el("tbody");
  const err = el("p", { class: "error", role: "alert" });
  main.replaceChildren(el("h1", {}, "Workflows"), err, el("div", { class: "card scroll" }, el("table", { id: "workflows" },
    el("thead", {}, el("tr", {}, ["workflow", "version", "release", "updated", "description"].map((h) => el("th", { scope: "col" }, h)))), body)));
  try {
    const wfs = await api("GET", "/api/v1/workflows");
    body.replaceChildren(...wfs.map((w) => el("tr", {},
      el("td", {}, el("a", { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name)), el("td", { class: "num" }, w.latest_version),
      el("td", {}, w.online ? "online" : "offline"), el("td", {}, short(w.updated_at)), el("td", {}, w.description || ""))));
    if (!wfs.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No workflow yet: shoal apply FILE.")));
  } catch (e) { err.textContent = e.detail; }
  view(null);
}

async function workflowPage(name) {
  const main = document.getElementById("main");
  const err = el("p", { class: "error", role: "alert" });
  main.replaceChildren(el("h1", {}, `Workflow ${name}`), err);
  let w;
  try { w = await api("GET", `/api/v1/workflows/${encodeURIComponent(name)}`); } catch (e) { err.textContent = e.detail; return; }
  const dagBox = el("div");
  main.append(el("p", { class: "muted" }, `version ${w.version} · ${w.online ? "online" : "offline"} · versions ${w.versions.map((v) => v.version).join(", ")}`),
              el("div", { class: "card" }, el("h2", {}, "Graph"), dagBox));
  drawDag(dagBox, w.definition, {});

  if (can("operator")) {
    const inputs = Object.entries(w.definition.params || {}).map(([k, v]) => el("label", {}, k, el("input", { name: k, value: v, "data-param": k })));
    const extra = el("input", { id: "run-extra", placeholder: "k=v k2=v2", "aria-label": "more params, k=v separated by spaces" });
    const rerr = el("p", { class: "error", role: "alert" });
    main.append(el("div", { class: "card" }, el("h2", {}, "Run"), el("form", { id: "run-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const params = {};
      for (const i of inputs) { const x = i.querySelector("input"); params[x.name] = x.value; }
      for (const kv of extra.value.split(/\s+/).filter(Boolean)) {
        const i = kv.indexOf("=");
        if (i < 1) { rerr.textContent = `not k=v: ${kv}`; return; }
        params[kv.slice(0, i)] = kv.slice(i + 1);
      }
      try {
        const r = await api("POST", `/api/v1/workflows/${encodeURIComponent(name)}/runs`, { params });
        location.hash = `#/runs/${r.instance_id}`;
      } catch (e) { rerr.textContent = e.detail; }
    } }, el("div", { class: "row" }, inputs, el("label", {}, "More params", extra), el("button", { class: "primary", type: "submit" }, "Run"))), rerr));
  }
  if (can("admin")) {
    const bf = { start: el("input", { type: "date", required: true }), end: el("input", { type: "date", required: true }),
                 mode: el("select", {}, el("option", {}, "serial"), el("option", {}, "parallel")),
                 parallelism: el("input", { type: "number", min: 1, value: 2, size: 4 }) };
    const berr = el("p", { class: "error", role: "alert" });
    const progress = el("div", { id: "backfills" });
    const showBackfills = async () => {
      try {
        const all = (await api("GET", "/api/v1/backfills")).filter((b) => b.workflow === name);
        progress.replaceChildren(...all.map((b) => el("p", {}, `${short(b.created_at)} ${b.state}: ${b.finished}/${b.planned} finished`
          + ` (${b.succeeded} succeeded, ${b.failed} failed) `, el("progress", { max: b.planned, value: b.finished, "aria-label": "backfill progress" }))));
      } catch (e) { berr.textContent = e.detail; }
    };
    // What a backfill will do is said before it happens: the API's dry run gives the plan
    // (timetable source, count, first and last), and a large one asks for a confirmation.
    const plan = el("p", { id: "backfill-plan", class: "muted", "aria-live": "polite" });
    const bfBody = (dry) => ({ start: bf.start.value, end: bf.end.value, mode: bf.mode.value,
                               parallelism: Number(bf.parallelism.value), dry_run: dry });
    const bfPath = `/api/v1/workflows/${encodeURIComponent(name)}/backfill`;
    const preview = async () => {
      if (!bf.start.value || !bf.end.value) { plan.textContent = ""; return null; }
      try {
        const p = await api("POST", bfPath, bfBody(true));
        plan.textContent = `Plan: ${p.description}.`; berr.textContent = "";
        return p;
      } catch (e) { plan.textContent = ""; berr.textContent = e.detail; return null; }
    };
    for (const input of [bf.start, bf.end]) input.addEventListener("change", preview);
    main.append(el("div", { class: "card" }, el("h2", {}, "Backfill"), el("form", { onsubmit: async (ev) => {
      ev.preventDefault();
      const p = await preview();
      if (!p) return;
      if (p.needs_confirmation && !confirm(`${p.description}.\n\nThat is more than ${p.confirm_above.toLocaleString("en")} runs. Start this backfill?`)) {
        berr.textContent = "Backfill not started.";
        return;
      }
      try {
        await api("POST", bfPath, bfBody(false));
        berr.textContent = ""; showBackfills();
      } catch (e) { berr.textContent = e.detail; }
    } }, el("div", { class: "row" }, el("label", {}, "Start", bf.start), el("label", {}, "End", bf.end), el("label", {}, "Mode", bf.mode),
           el("label", {}, "Parallelism", bf.parallelism), el("button", { type: "submit" }, "Backfill"))), plan, berr, progress));
    showBackfills();
    const timer = setInterval(showBackfills, 3000);
    view(() => clearInterval(timer));

    const schedBox = el("div", { id: "schedules" });
    const cron = el("input", { value: "0 0 2 * * ?", "aria-label": "cron" });
    const tz = el("input", { value: "UTC", "aria-label": "time zone" });
    const serr = el("p", { class: "error", role: "alert" });
    const showSchedules = async () => {
      const list = await api("GET", `/api/v1/schedules?workflow=${encodeURIComponent(name)}`);
      schedBox.replaceChildren(...list.map((s) => el("div", { class: "row", "data-schedule": s.id },
        el("span", {}, el("code", {}, s.cron), ` ${s.timezone} · ${s.enabled ? "enabled" : "disabled"} · next: ${s.enabled ? s.next_fires.map(short).join(", ") : "–"}`),
        el("button", { type: "button", onclick: async () => {
          try { await api("PUT", `/api/v1/schedules/${s.id}`, { enabled: !s.enabled }); showSchedules(); } catch (e) { serr.textContent = e.detail; }
        } }, s.enabled ? "Disable" : "Enable"))));
    };
    main.append(el("div", { class: "card" }, el("h2", {}, "Schedules"), schedBox, el("form", { onsubmit: async (ev) => {
      ev.preventDefault();
      try { await api("POST", "/api/v1/schedules", { workflow: name, cron: cron.value, timezone: tz.value }); serr.textContent = ""; showSchedules(); }
      catch (e) { serr.textContent = e.detail; }
    } }, el("div", { class: "row" }, el("label", {}, "Cron", cron), el("label", {}, "Time zone", tz), el("button", { type: "submit" }, "Create schedule"))), serr));
    showSchedules().catch((e) => { serr.textContent = e.detail; });
  } else {
    view(null);
  }
}

// Tokens (admin) -------------------------------------------------------------

async function tokensPage() {
  const main = document.getElementById("main");
  const err = el("p", { class: "error", role: "alert", id: "token-error" });
  const body = el("tbody");
  const shown = el("div", { id: "new-token" });
  const name = el("input", { id: "t-name", required: true,
                             "aria-label": "token name" });
  const role = el("select", { id: "t-role", "aria-label": "role" },
                  ["viewer", "operator", "admin"].map((r) => el("option", { value: r }, r)));
  const days = el("input", { id: "t-days", type: "number", min: 1, max: 366, value: 90,
                             "aria-label": "expires in days" });
  const load = async () => {
    try {
      const ts = await api("GET", "/api/v1/tokens");
      body.replaceChildren(...ts.map((t) => el("tr", { "data-token": t.name },
        el("td", {}, t.name), el("td", {}, t.role), el("td", { class: "state" }, t.state),
        el("td", {}, short(t.created_at)), el("td", {}, t.created_by || "–"),
        el("td", {}, short(t.expires_at)), el("td", {}, t.revoked_at ? `${short(t.revoked_at)} by ${t.revoked_by || "–"}` : "–"),
        el("td", {}, t.state === "revoked" ? "" : el("button", { type: "button", "aria-label": `revoke ${t.name}`,
          onclick: async () => {
            err.textContent = "";
            try { await api("DELETE", `/api/v1/tokens/${t.id}`); toast(`token ${t.name} revoked`); await load(); }
            catch (e) { err.textContent = e.detail; }
          } }, "Revoke")))));
      if (!ts.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No token minted yet.")));
    } catch (e) { err.textContent = e.detail; }
  };
  const form = el("form", { class: "row", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    shown.replaceChildren();
    try {
      const t = await api("POST", "/api/v1/tokens", { name: name.value.trim(), role: role.value,
                                                      expires_in: Math.round(Number(days.value) * 86400) });
      // The value exists here once: it is not stored, and no later answer contains it.
      shown.replaceChildren(el("p", {}, `Token ${t.name} (${t.role}, expires ${short(t.expires_at)}). Copy it now: it is not shown again.`),
                            el("pre", { class: "log", id: "token-value", tabindex: 0 }, t.token));
      name.value = "";
      await load();
    } catch (e) { err.textContent = e.detail; }
  } },
    el("label", {}, "Name", name), el("label", {}, "Role", role), el("label", {}, "Expires in (days)", days),
    el("button", { class: "primary", type: "submit" }, "Create token"));
  main.replaceChildren(el("h1", {}, "Tokens"),
    el("div", { class: "card" }, el("p", { class: "muted" }, "A token's name is what the audit trail records for what it does. The bootstrap tokens of SHOAL_API_TOKENS are not listed."),
       form, shown, err),
    el("div", { class: "card scroll" }, el("table", { id: "tokens" },
      el("thead", {}, el("tr", {}, ["name", "role", "state", "created", "by", "expires", "revoked", ""].map((h) => el("th", { scope: "col" }, h)))),
      body)));
  await load();
  view(() => shown.replaceChildren());
}

// Workers and stats -----------------------------------------------------------

async function workersPage() {
  const main = document.getElementById("main");
  const body = el("tbody");
  const err = el("p", { class: "error", role: "alert" });
  main.replaceChildren(el("h1", {}, "Workers"), err, el("div", { class: "card scroll" }, el("table", { id: "workers" },
    el("thead", {}, el("tr", {}, ["worker", "group", "host", "slots", "running", "last heartbeat"].map((h) => el("th", { scope: "col" }, h)))), body)));
  const load = async () => {
    try {
      const ws = await api("GET", "/api/v1/workers");
      body.replaceChildren(...ws.map((w) => el("tr", {}, el("td", {}, w.worker_id), el("td", {}, w.group), el("td", {}, w.host || "–"),
        el("td", { class: "num" }, w.slots), el("td", {}, `${w.running.length}: ` + w.running.map((r) => r.task || "").join(", ")),
        el("td", {}, short(w.last_heartbeat)))));
      if (!ws.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No live worker.")));
    } catch (e) { err.textContent = e.detail; }
  };
  load();
  const timer = setInterval(load, 2000);
  view(() => clearInterval(timer));
}

async function statsPage() {
  const main = document.getElementById("main");
  const err = el("p", { class: "error", role: "alert" });
  const chart = el("div", { id: "by-day" });
  const durations = el("div", { id: "durations" });
  main.replaceChildren(el("h1", {}, "Stats"), err, el("div", { class: "card" }, el("h2", {}, "Runs per day by state"), chart),
                       el("div", { class: "card" }, el("h2", {}, "Duration percentiles (finished runs)"), durations));
  let s;
  try { s = await api("GET", "/api/v1/stats"); } catch (e) { err.textContent = e.detail; return; }
  const days = [...new Set(s.by_day.map((d) => d.day))].sort();
  const states = [...new Set(s.by_day.map((d) => d.state))];
  const per = {};
  for (const d of s.by_day) { per[d.day] = per[d.day] || {}; per[d.day][d.state] = (per[d.day][d.state] || 0) + d.runs; }
  const max = Math.max(1, ...days.map((d) => Object.values(per[d]).reduce((a, b) => a + b, 0)));
  const W = 640, H = 220, bw = Math.min(60, (W - 40) / Math.max(days.length, 1) - 8);
  chart.replaceChildren(svg("svg", { class: "bars", viewBox: `0 0 ${W} ${H + 30}`, role: "img", "aria-label": "runs per day by state" },
    days.map((d, i) => {
      let y = H;
      return svg("g", {}, states.map((stt) => {
        const n = (per[d] || {})[stt] || 0;
        const h = n / max * (H - 10);
        y -= h;
        return svg("rect", { x: 30 + i * (bw + 8), y, width: bw, height: h, fill: `var(--${stt})` }, svg("title", {}, `${d} ${stt}: ${n}`));
      }), svg("text", { x: 30 + i * (bw + 8), y: H + 16, "font-size": 11 }, d.slice(5)));
    }), svg("text", { x: 0, y: 12, "font-size": 11 }, String(max))),
    el("div", { class: "legend" }, states.map((stt) => el("span", { style: `--c: var(--${stt})` }, stt))));
  const top = Math.max(1, ...s.durations.map((d) => d.p95_ms || 0));
  durations.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ["workflow", "runs", "p50", "p95", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, s.durations.map((d) => el("tr", {}, el("td", {}, d.workflow), el("td", { class: "num" }, d.runs),
      el("td", { class: "num" }, ms(d.p50_ms && Math.round(d.p50_ms))), el("td", { class: "num" }, ms(d.p95_ms && Math.round(d.p95_ms))),
      el("td", { style: "width: 40%" }, svg("svg", { viewBox: "0 0 100 10", width: "100%", height: 10, role: "img", "aria-label": "p50 and p95" },
        svg("rect", { x: 0, y: 0, width: (d.p95_ms || 0) / top * 100, height: 10, fill: "#b7cdf5" }),
        svg("rect", { x: 0, y: 2, width: (d.p50_ms || 0) / top * 100, height: 6, fill: "#1f6feb" }))))))));
  view(null);
}

// ------------------------------------------------------------------ router

async function render() {
  view(null);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!state.role) {
    // With a token from this tab's session, or none when the API has auth off.
    const me = await api("GET", "/api/v1/me").catch(() => null);
    if (me) state.role = me.role;
  }
  document.getElementById("logout").hidden = !state.role || !token;
  document.getElementById("whoami").textContent = state.role ? `signed in as ${state.role}` : "";
  document.getElementById("nav-tokens").hidden = !can("admin");
  if (!state.role) { login(); return; }
  const [path, query] = (location.hash.slice(1) || "/runs").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll(".top nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0] || "runs"}`);
  if (parts[0] === "runs" && parts[1]) return runPage(decodeURIComponent(parts[1]));
  if (parts[0] === "workflows" && parts[1]) return workflowPage(decodeURIComponent(parts[1]));
  if (parts[0] === "workflows") return workflowsPage();
  if (parts[0] === "workers") return workersPage();
  if (parts[0] === "stats") return statsPage();
  if (parts[0] === "tokens" && can("admin")) return tokensPage();
  return runsPage(params);
}

document.getElementById("logout").addEventListener("click", signOut);
window.addEventListener("hashchange", render);
render();
