// The agoramesh web console. Plain JavaScript, no build step. Every string that comes from
// the mesh is put in the page with textContent or as an attribute value, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const state = {
  agents: [], auctions: new Map(), tasks: new Map(), topology: null, jobs: null,
  activity: [], cards: new Map(), submitted: [], schemas: new Map(), detail: null,
};
const MAX_ITEMS = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(id) { return id ? id.slice(0, 8) + "…" : ""; }
function nameOf(id, fallback) {
  const agent = state.agents.find((a) => a.id === id);
  return (agent && agent.name) || fallback || short(id);
}
function num(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}
function when(ts) { return new Date(ts * 1000).toLocaleTimeString(); }

// -- views ---------------------------------------------------------------------------------

function showView() {
  const wanted = (location.hash || "#topology").slice(1);
  const known = [...document.querySelectorAll("section.view")].map((s) => s.id);
  const view = known.includes(wanted) ? wanted : "topology";
  for (const section of document.querySelectorAll("section.view")) {
    section.hidden = section.id !== view;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// -- topology ------------------------------------------------------------------------------

function renderTopology() {
  const topology = state.topology;
  const links = document.getElementById("graph-links");
  const nodes = document.getElementById("graph-nodes");
  const list = document.getElementById("servers");
  links.replaceChildren();
  nodes.replaceChildren();
  list.replaceChildren();
  if (!topology) return;
  const seeds = topology.servers.filter((s) => s.role === "seed");
  const others = topology.servers.filter((s) => s.role !== "seed");
  const at = new Map();
  const cx = 400, cy = 300;
  seeds.forEach((server, i) => {
    const angle = (2 * Math.PI * i) / Math.max(seeds.length, 1) - Math.PI / 2;
    const r = seeds.length > 1 ? 120 : 0;
    at.set(server.name, [cx + r * Math.cos(angle), cy + r * Math.sin(angle)]);
  });
  others.forEach((server, i) => {
    const angle = (2 * Math.PI * i) / Math.max(others.length, 1) - Math.PI / 4;
    at.set(server.name, [cx + 235 * Math.cos(angle), cy + 235 * Math.sin(angle)]);
  });
  for (const link of topology.links) {
    const a = at.get(link.a), b = at.get(link.b);
    if (!a || !b) continue;
    links.append(svg("line", {x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: link.kind}));
  }
  const byServer = new Map();
  for (const agent of topology.agents) {
    if (!byServer.has(agent.server)) byServer.set(agent.server, []);
    byServer.get(agent.server).push(agent);
  }
  for (const [server, agents] of byServer) {
    const centre = at.get(server);
    if (!centre) continue;
    const outward = Math.atan2(centre[1] - cy, centre[0] - cx) || -Math.PI / 2;
    agents.forEach((agent, i) => {
      const spread = Math.min(Math.PI * 1.5, 0.7 * agents.length);
      const angle = outward - spread / 2 + (spread * (i + 0.5)) / agents.length;
      const x = centre[0] + 80 * Math.cos(angle), y = centre[1] + 80 * Math.sin(angle);
      links.append(svg("line", {x1: centre[0], y1: centre[1], x2: x, y2: y, class: "agent"}));
      const group = svg("g", {class: "agent-node", "data-id": agent.id});
      group.append(svg("title", {}, `${agent.name} (${agent.presence}) on ${server}`));
      group.append(svg("circle", {cx: x, cy: y, r: 7, class: `agent ${agent.presence}`}));
      group.append(svg("text", {x: x + 9, y: y + 4, class: "agent-label"}, agent.name));
      nodes.append(group);
    });
  }
  for (const server of topology.servers) {
    const [x, y] = at.get(server.name);
    const role = server.role || "server";
    const group = svg("g", {class: `server-node ${role}`, "data-name": server.name});
    group.append(svg("title", {}, `${server.name}: ${role}, ${server.state}`));
    group.append(svg("circle", {cx: x, cy: y, r: 20,
                                class: `${role} ${server.state === "down" ? "down" : ""}`}));
    group.append(svg("text", {x: x - 20, y: y - 26, class: "server-label"}, server.name));
    nodes.append(group);
    const count = (byServer.get(server.name) || []).length;
    list.append(el("li", {"data-role": role},
                   `${server.name} — ${role}, ${server.state}, ${count} agent(s)`));
  }
}

// -- agents --------------------------------------------------------------------------------

function renderAgents() {
  const body = document.querySelector("#agents-table tbody");
  const rows = state.agents.map((agent) => {
    const open = el("button", {type: "button", class: "link",
                               "aria-label": `details of ${agent.name || agent.id}`},
                    agent.name || short(agent.id));
    open.addEventListener("click", () => openAgent(agent.id));
    return el("tr", {"data-id": agent.id, class: agent.presence},
      el("th", {scope: "row"}, open),
      el("td", {class: `presence-${agent.presence}`},
         agent.presence === "live" ? agent.state : agent.presence),
      el("td", {}, agent.type),
      el("td", {}, agent.capabilities.join(", ")),
      el("td", {class: "num"}, `${agent.in_flight}/${agent.capacity}`),
      el("td", {class: "num"}, `${num(agent.latency_ms, 1)} ms`),
      el("td", {class: "num"}, `${Math.round(agent.success_rate * 100)}%`),
      el("td", {class: "num"}, `$${num(agent.cost_usd, 4)}`),
      el("td", {}, agent.server));
  });
  body.replaceChildren(...rows);
  if (state.detail) renderDetail();
}

async function loadCards() {
  try {
    const response = await fetch("/api/agents", {credentials: "same-origin"});
    if (!response.ok) return;
    const data = await response.json();
    state.cards = new Map(data.agents.map((card) => [card.id, card]));
    const schemas = new Map();
    for (const card of data.agents) {
      for (const capability of card.capabilities || []) {
        if (!schemas.has(capability.name)) schemas.set(capability.name, capability);
      }
    }
    state.schemas = schemas;
    renderCapabilities();
    if (state.detail) renderDetail();
  } catch (error) {
    setConnection(`could not read the agents' cards: ${error.message}`, true);
  }
}

function openAgent(id) {
  state.detail = id;
  renderDetail();
  document.getElementById("agent-detail").hidden = false;
  document.getElementById("agent-detail-title").focus();
}

function renderDetail() {
  const id = state.detail;
  const agent = state.agents.find((a) => a.id === id);
  const card = state.cards.get(id);
  const title = document.getElementById("agent-detail-title");
  title.setAttribute("tabindex", "-1");
  title.textContent = `Agent ${(agent && agent.name) || (card && card.name) || short(id)}`;
  const dl = document.getElementById("agent-card");
  const entries = [["id", id], ["type", card ? card.type : agent && agent.type],
                   ["version", card && card.version], ["endpoint", card && card.endpoint],
                   ["server", agent && agent.server], ["host", agent && agent.host],
                   ["tasks", agent ? `${agent.completed} completed, ${agent.failed} failed` : ""]];
  for (const [key, value] of Object.entries((card && card.metadata) || {})) {
    entries.push([`metadata ${key}`, value]);
  }
  dl.replaceChildren(...entries.filter(([, v]) => v).flatMap(([k, v]) => [
    el("dt", {}, k), el("dd", {}, v)]));
  const caps = document.getElementById("agent-capabilities");
  caps.replaceChildren(...((card && card.capabilities) || []).map((capability) => el("li", {},
    el("strong", {}, capability.name), " ", capability.description || "",
    el("pre", {}, JSON.stringify(capability.input_schema || {}, null, 2)))));
  const tasks = [...state.tasks.values()].filter((t) => t.agent === id).slice(-20).reverse();
  document.getElementById("agent-tasks").replaceChildren(...tasks.map((t) => el("li", {},
    `${when(t.ts)} ${t.capability} ${t.outcome} ${num(t.ms, 1)} ms`)));
}

// -- auctions ------------------------------------------------------------------------------

function auctionItem(auction) {
  const details = el("details", {});
  const winner = auction.winner ? nameOf(auction.winner, auction.winner_name) : "no winner";
  details.append(el("summary", {}, `${when(auction.ts)} · ${auction.capability} · ` +
    `${auction.outcome} · ${winner} · ${auction.bids ?? 0} bid(s) · task ${auction.task_id}`));
  details.addEventListener("toggle", () => {
    if (details.open && details.children.length === 1) details.append(auctionBody(auction));
  });
  return el("li", {"data-task-id": auction.task_id, "data-seq": auction.seq}, details);
}

function auctionBody(auction) {
  const body = el("div", {});
  body.append(el("p", {}, `Run by ${nameOf(auction.auctioneer, auction.auctioneer_name)} ` +
    `in ${num(auction.ms, 1)} ms; ${auction.attempts} round(s).`));
  if (auction.weights) {
    body.append(el("p", {class: "weights"}, "Score = " + Object.entries(auction.weights)
      .map(([k, v]) => `${v} × ${k}`).join(" + ") + " (each term in [0, 1], 1 best)"));
  }
  if (!auction.rounds.length) body.append(el("p", {}, "The auctioneer sent no bid details."));
  auction.rounds.forEach((round, index) => {
    const before = index > 0 ? auction.rounds[index - 1].awards.at(-1) : null;
    const why = !before ? (round.attempt > 1 ? " (called again)" : "")
      : ["lost", "failed"].includes(before.outcome) ? " (re-auction)" : " (called again: busy)";
    const section = el("div", {class: "round"});
    section.append(el("h4", {}, `Call ${round.attempt}${why}`));
    if (round.direct) {
      section.firstChild.append(": a direct award");
      section.append(el("p", {class: "direct"}, `No call for proposals: ` +
        `${nameOf(round.direct)} was the one agent known to offer ${auction.capability}, ` +
        `so it was awarded the task directly (it declines what it would not have bid on).`));
    }
    const rows = round.bids.map((bid, index) => {
      const won = bid.agent === auction.winner && round === auction.rounds.at(-1);
      return el("tr", {class: won ? "winner" : null, "data-agent": bid.agent},
        el("td", {class: "num"}, index + 1),
        el("th", {scope: "row"}, nameOf(bid.agent, bid.agent_name),
           won ? " " : null, won ? el("span", {class: "badge"}, "winner") : null),
        el("td", {class: "num"}, num(bid.score, 4)),
        el("td", {class: "num"}, num(bid.load, 2)),
        el("td", {class: "num"}, num(bid.latency_ms, 1)),
        el("td", {class: "num"}, num(bid.cost_usd, 5)),
        el("td", {class: "num"}, num(bid.success_rate, 2)),
        el("td", {}, bid.counter ? JSON.stringify(bid.counter) : bid.holds || ""));
    });
    const table = el("table", {class: "bids"},
      el("caption", {}, `${round.bids.length} bid(s), best first` +
        (round.more ? `, and ${round.more} more not listed` : "")),
      el("thead", {}, el("tr", {}, ...["#", "Agent", "Score", "Load", "Latency ms", "Cost $",
                                       "Success", "Terms"].map((h) => el("th", {scope: "col"}, h)))),
      el("tbody", {}, ...rows));
    if (!round.direct) section.append(el("div", {class: "scroll"}, table));
    const awards = round.awards.map((award) => el("li", {},
      `awarded to ${nameOf(award.agent, award.agent_name)}: ${award.outcome}` +
      (award.reason ? ` (${award.reason})` : "")));
    if (awards.length) section.append(el("ol", {class: "awards"}, ...awards));
    body.append(section);
  });
  return body;
}

function renderAuctions(fresh, rebuild) {
  const list = document.getElementById("auction-list");
  if (rebuild) {
    const items = [...state.auctions.values()].reverse().map(auctionItem);
    list.replaceChildren(...items);
    return;
  }
  for (const auction of fresh) list.prepend(auctionItem(auction));
  while (list.children.length > MAX_ITEMS) list.lastElementChild.remove();
}

// -- tasks ---------------------------------------------------------------------------------

function renderTasks() {
  const body = document.querySelector("#task-table tbody");
  const tasks = [...state.tasks.values()].slice(-200).reverse();
  body.replaceChildren(...tasks.map((task) => el("tr", {"data-task-id": task.task_id},
    el("td", {}, when(task.ts)), el("td", {}, nameOf(task.agent, task.agent_name)),
    el("td", {}, task.capability), el("td", {class: `state-${task.outcome}`}, task.outcome),
    el("td", {class: "num"}, `${num(task.ms, 1)} ms`))));
  const jobs = state.jobs;
  document.getElementById("jobs").textContent = jobs
    ? `${jobs.queued} queued, ${jobs.running} running, ${jobs.redelivered} redelivered, ` +
      `${jobs.results} result(s) stored`
    : "No job store answered (JetStream is off, or not reachable).";
}

function renderCapabilities() {
  const select = document.getElementById("task-capability");
  const current = select.value;
  const names = [...state.schemas.keys()].sort();
  select.replaceChildren(...names.map((name) => el("option", {value: name}, name)));
  if (names.includes(current)) select.value = current;
  renderFields();
}

function renderFields() {
  const capability = state.schemas.get(document.getElementById("task-capability").value);
  const holder = document.getElementById("task-fields");
  holder.replaceChildren();
  if (!capability) return;
  const schema = capability.input_schema || {};
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(properties);
  if (!names.length) {
    holder.append(el("label", {for: "field-json"}, "Parameters (JSON object)"),
                  el("textarea", {id: "field-json", "data-json": "object", rows: 4}, "{}"));
    return;
  }
  names.forEach((name, i) => {
    const spec = properties[name] || {};
    const id = `field-${i}`;
    const help = spec.description || (spec.type ? `${spec.type}` : "any JSON value or text");
    let input;
    if (spec.type === "boolean") {
      input = el("input", {id, type: "checkbox", "data-name": name, "data-type": "boolean"});
    } else if (spec.type === "number" || spec.type === "integer") {
      input = el("input", {id, type: "number", step: spec.type === "integer" ? 1 : "any",
                           "data-name": name, "data-type": spec.type});
    } else if (spec.type === "string") {
      input = el("input", {id, type: "text", "data-name": name, "data-type": "string",
                           maxlength: spec.maxLength});
    } else {
      input = el("textarea", {id, rows: 3, "data-name": name, "data-type": "json"});
    }
    if (required.has(name) && spec.type !== "boolean") input.required = true;
    input.setAttribute("aria-describedby", `${id}-help`);
    holder.append(el("label", {for: id}, name + (required.has(name) ? " (required)" : "")),
                  input, el("p", {class: "field-help", id: `${id}-help`}, help));
  });
}

function readParameters() {
  const raw = document.getElementById("field-json");
  if (raw) return JSON.parse(raw.value || "{}");
  const parameters = {};
  for (const input of document.querySelectorAll("#task-fields [data-name]")) {
    const name = input.dataset.name, type = input.dataset.type;
    if (type === "boolean") parameters[name] = input.checked;
    else if (input.value === "") continue;
    else if (type === "number" || type === "integer") parameters[name] = Number(input.value);
    else if (type === "json") {
      try { parameters[name] = JSON.parse(input.value); } catch { parameters[name] = input.value; }
    } else parameters[name] = input.value;
  }
  return parameters;
}

function settle(entry, answer) {
  if (answer.error && !answer.task_id) {
    entry.state = "failed";
    entry.text = `${answer.error.type}: ${answer.error.message}`;
    return;
  }
  entry.task_id = answer.task_id;
  entry.state = answer.status === "COMPLETED" ? "completed" : "failed";
  entry.text = answer.status === "COMPLETED" ? JSON.stringify(answer.result)
    : `${(answer.error || {}).type || answer.status}: ${(answer.error || {}).message || ""}`;
}

async function awaitResult(entry) {
  // A durable task's result, asked for (each ask waits up to 30 s) until it is stored.
  for (let ask = 0; ask < 20 && entry.state === "queued"; ask++) {
    const response = await fetch(`/api/tasks/${encodeURIComponent(entry.task_id)}?wait=30`,
                                 {credentials: "same-origin"});
    if (response.status === 404) continue;
    settle(entry, await response.json());
  }
}

async function submitTask(event) {
  event.preventDefault();
  const capability = document.getElementById("task-capability").value;
  const durable = document.getElementById("task-durable").checked;
  const entry = {capability, state: "running", text: "", task_id: "…"};
  state.submitted.unshift(entry);
  try {
    const parameters = readParameters();
    renderSubmitted();
    const response = await fetch("/api/tasks", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Agoramesh-Console": "1"},
      body: JSON.stringify(durable ? {capability, parameters, durable: true}
                                   : {capability, parameters})});
    const answer = await response.json();
    if (response.status === 202) {
      entry.task_id = answer.task_id;
      entry.state = "queued";
      entry.text = "in the job store";
      renderSubmitted();
      await awaitResult(entry);
    } else {
      settle(entry, answer);
    }
  } catch (error) {
    entry.state = "failed";
    entry.text = error.message;
  }
  renderSubmitted();
}

function renderSubmitted() {
  const body = document.querySelector("#submitted-table tbody");
  body.replaceChildren(...state.submitted.slice(0, 50).map((entry) => el("tr", {
    "data-task-id": entry.task_id, "data-state": entry.state},
    el("td", {}, entry.task_id), el("td", {}, entry.capability),
    el("td", {class: `state-${entry.state}`}, entry.state), el("td", {}, entry.text))));
}

// -- collaborations and workflows ----------------------------------------------------------

function dag(run) {
  const steps = run.steps;
  const depth = new Map();
  for (const step of steps) {
    depth.set(step.name, 1 + Math.max(-1, ...step.needs.map((n) => depth.get(n) ?? 0)));
  }
  const columns = new Map();
  const at = new Map();
  for (const step of steps) {
    const d = depth.get(step.name);
    const row = columns.get(d) || 0;
    columns.set(d, row + 1);
    at.set(step.name, [20 + d * 190, 20 + row * 70]);
  }
  const width = 40 + 190 * (Math.max(0, ...depth.values()) + 1);
  const height = 40 + 70 * Math.max(1, ...columns.values());
  const figure = svg("svg", {class: "dag", viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `workflow ${run.title}: ` + steps.map(
                               (s) => `${s.name} ${s.state}`).join(", ")});
  for (const step of steps) {
    const [x, y] = at.get(step.name);
    for (const need of step.needs) {
      const from = at.get(need);
      if (from) figure.append(svg("line", {x1: from[0] + 160, y1: from[1] + 25, x2: x, y2: y + 25}));
    }
  }
  for (const step of steps) {
    const [x, y] = at.get(step.name);
    figure.append(svg("rect", {x, y, width: 160, height: 50, rx: 6, class: step.state}));
    figure.append(svg("text", {x: x + 8, y: y + 20}, step.name));
    figure.append(svg("text", {x: x + 8, y: y + 38}, `${step.state}${step.agent ? " · " +
      step.agent : ""}`));
  }
  return figure;
}

function renderActivity() {
  const list = document.getElementById("activity-list");
  list.replaceChildren(...[...state.activity].reverse().map((run) => {
    const details = el("details", {open: ""});
    details.append(el("summary", {}, `${when(run.started)} · ${run.kind}` +
      `${run.mode ? " (" + run.mode + ")" : ""} · ${run.title} · `,
      el("span", {class: `state-${run.status}`}, run.status)));
    const body = el("div", {});
    if (run.kind === "workflow") {
      body.append(dag(run), el("ul", {}, ...run.steps.map((s) => el("li", {},
        `${s.name} (${s.what}): ${s.state}${s.agent ? " by " + s.agent : ""}` +
        (s.detail ? ` — ${s.detail}` : "")))));
    } else {
      body.append(el("ol", {class: "plain"}, ...run.transcript.map((turn) => el("li",
        {class: "turn"}, el("strong", {}, turn.kind === "consensus" ? "Consensus"
          : `Round ${turn.round}, ${turn.agent} (${turn.position})`), turn.text))));
    }
    if (run.error) body.append(el("p", {class: "state-failed"}, run.error));
    details.append(body);
    return el("li", {"data-run": run.id}, details);
  }));
}

// -- the stream ----------------------------------------------------------------------------

function setConnection(text, down) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.classList.toggle("down", Boolean(down));
}

function apply(message) {
  const snapshot = message.kind === "snapshot";
  const before = state.agents.map((a) => a.id).join();
  if (snapshot) { state.auctions.clear(); state.tasks.clear(); }
  if (message.agents) state.agents = message.agents;
  if (message.topology) state.topology = message.topology;
  if ("jobs" in message) state.jobs = message.jobs;
  if (message.activity) { state.activity = message.activity; renderActivity(); }
  const fresh = [];
  for (const auction of message.auctions || []) {
    if (!state.auctions.has(auction.seq)) fresh.push(auction);
    state.auctions.set(auction.seq, auction);
  }
  for (const task of message.tasks || []) state.tasks.set(task.seq, task);
  for (const map of [state.auctions, state.tasks]) {
    while (map.size > MAX_ITEMS) map.delete(map.keys().next().value);
  }
  if (message.rates) {
    const r = message.rates;
    document.getElementById("rates").textContent =
      `${num(r.auctions_per_s, 1)} auctions/s · ${num(r.tasks_per_s, 1)} tasks/s · ` +
      `${num(r.bids_per_s, 1)} bids/s`;
  }
  if (snapshot || message.agents) renderAgents();
  if (snapshot || message.topology || message.agents) renderTopology();
  if (snapshot || fresh.length) renderAuctions(fresh, snapshot);
  if (snapshot || message.tasks || "jobs" in message) renderTasks();
  if (snapshot || state.agents.map((a) => a.id).join() !== before) loadCards();
  setConnection(`live · ${state.agents.filter((a) => a.presence === "live").length} agent(s)`);
  if (!document.body.dataset.ready) {
    document.body.dataset.readyMs = String(Math.round(performance.now()));  // benchmarks read it
    document.body.dataset.ready = "true";
  }
}

function connect() {
  const source = new EventSource("/api/console/events");
  source.onmessage = (event) => apply(JSON.parse(event.data));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      setConnection("disconnected: reload the page (or sign in again)", true);
    } else {
      setConnection("reconnecting…", true);
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  window.addEventListener("hashchange", showView);
  showView();
  document.getElementById("task-capability").addEventListener("change", renderFields);
  document.getElementById("task-form").addEventListener("submit", submitTask);
  document.getElementById("agent-close").addEventListener("click", () => {
    state.detail = null;
    document.getElementById("agent-detail").hidden = true;
  });
  connect();
});
