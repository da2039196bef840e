// deskfleet portal: salt-api's own endpoints (/login, /, /logout) with the token in X-Auth-Token.
// Every value from the master is put in the page as text (textContent), never as markup:
// a thin client's facts are hostile by assumption.
"use strict";

const state = { token: null, user: null, pages: {} };
const $ = (id) => document.getElementById(id);
const STATUS_CLASS = new Set(["online", "stale", "offline", "ok", "backoff", "degraded", "due", "failed", "in doubt"]);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

// salt-api pairs the token with a session cookie on every answer; the page authenticates with the
// X-Auth-Token header only and drops the cookie at once, so a cross-site request has none to ride on.
function dropSessionCookie() {
  document.cookie = "session_id=; Max-Age=0; path=/";
}

async function call(body) {
  const headers = { "Accept": "application/json", "Content-Type": "application/json" };
  if (state.token) headers["X-Auth-Token"] = state.token;
  const resp = await fetch("/", { method: "POST", headers, body: JSON.stringify(body) });
  let data = null;
  dropSessionCookie();
  try { data = await resp.json(); } catch (e) { data = null; }
  return { status: resp.status, data };
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const body = { username: $("username").value, password: $("password").value, eauth: $("eauth").value };
  const resp = await fetch("/login", {
    method: "POST", headers: { "Accept": "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (resp.status !== 200) {
    $("login-error").textContent = "login refused (" + resp.status + ")";
    return;
  }
  const got = (await resp.json()).return[0];
  dropSessionCookie();
  state.token = got.token;
  state.user = got.user;
  $("password").value = "";
  $("login").hidden = true;
  $("who").hidden = false;
  $("user").textContent = got.user + " (" + got.eauth + ")";
  await refresh();
}

async function logout() {
  await fetch("/logout", { method: "POST", headers: { "Accept": "application/json", "X-Auth-Token": state.token || "" } });
  dropSessionCookie();
  state.token = null;
  $("sections").replaceChildren();
  $("tiles").replaceChildren();
  $("master").textContent = "";
  $("who").hidden = true;
  $("login").hidden = false;
  say("logged out");
}

function say(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function refresh() {
  if (!state.token) return;
  const { status, data } = await call([{ client: "runner", fun: "portal.view", kwarg: { pages: state.pages } }]);
  if (status === 401) {
    say("not allowed to read this portal, or the session expired: log in again", true);
    return;
  }
  const view = data && data.return && data.return[0];
  if (!view || !view.sections) {
    say("the master answered " + status + ": " + JSON.stringify(data), true);
    return;
  }
  $("master").textContent = "— " + view.master + " master";
  $("tiles").replaceChildren(...(view.tiles || []).map(tile));
  $("sections").replaceChildren(...view.sections.map(render));
  $("sections").dataset.loaded = new Date().toISOString();
}

function tile(t) {
  const box = el("div", null, "tile" + (STATUS_CLASS.has(t.status) ? " s-" + t.status : ""));
  box.append(el("div", t.value, "value"), el("div", t.label, "label"));
  return box;
}

function render(sec) {
  const box = el("section", null, sec.columns.length > 5 ? "wide" : "");
  box.id = "section-" + sec.id;
  box.append(el("h2", sec.title + (sec.total > sec.rows.length ? " (" + sec.total + ")" : "")));
  if (sec.note) box.append(el("p", sec.note, "note"));
  const asks = {};
  for (const action of sec.actions) {
    if (action.ask) {
      const input = el("input");
      input.placeholder = action.ask + " (for " + action.label + ")";
      input.id = sec.id + "-" + action.ask;
      asks[action.fun] = input;
      box.append(input);
    }
  }
  if (sec.rows.length) {
    const table = el("table");
    const head = el("tr");
    for (const c of sec.columns) head.append(el("th", c));
    if (sec.actions.length) head.append(el("th", ""));
    table.append(head);
    for (const row of sec.rows) {
      const tr = el("tr");
      for (const cell of row) {
        const text = String(cell);
        tr.append(el("td", text, STATUS_CLASS.has(text) ? "s-" + text.replace(" ", "-") : ""));
      }
      if (sec.actions.length) {
        const td = el("td");
        for (const action of sec.actions) {
          const button = el("button", action.label);
          button.type = "button";
          button.dataset.fun = action.fun;
          button.dataset.target = String(row[0]);
          button.addEventListener("click", () => act(action, row[0], asks[action.fun]));
          td.append(button);
        }
        tr.append(td);
      }
      table.append(tr);
    }
    box.append(table);
  }
  if (sec.pages > 1) {
    const pager = el("div", null, "pager");
    const prev = el("button", "‹ previous");
    const next = el("button", "next ›");
    prev.disabled = sec.page <= 1;
    next.disabled = sec.page >= sec.pages;
    prev.addEventListener("click", () => { state.pages[sec.id] = sec.page - 1; refresh(); });
    next.addEventListener("click", () => { state.pages[sec.id] = sec.page + 1; refresh(); });
    pager.append(prev, el("span", " page " + sec.page + " of " + sec.pages + " "), next);
    box.append(pager);
  }
  return box;
}

async function act(action, target, ask) {
  const kwarg = { [action.param]: action.list ? [target] : target };
  if (action.ask) {
    if (!ask || !ask.value.trim()) {
      say(action.label + ": give a " + action.ask + " first", true);
      return;
    }
    kwarg[action.ask] = ask.value.trim();
  }
  const client = action.async ? "runner_async" : "runner";
  const { status, data } = await call([{ client, fun: action.fun, kwarg }]);
  if (status === 401) {
    say("refused: " + state.user + " may not run " + action.fun, true);
    return;
  }
  const got = data && data.return && data.return[0];
  if (got && typeof got === "object" && got.error) {
    say(action.fun + " " + target + ": " + got.error, true);
  } else if (action.async) {
    say(action.fun + " " + target + ": started (job " + ((got && got.jid) || "?") + ")");
  } else {
    say(action.fun + " " + target + ": done");
  }
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  setInterval(refresh, 30000);
});
