// keygate console: a thin client of the admin REST API. It keeps no state
// the server does not confirm: after every change it reloads from the API.
// The admin token lives in this tab's sessionStorage only (never a URL or
// localStorage) and is sent as a Bearer header.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const TOKEN_KEY = "keygate.adminToken";
const state = {
  page: 1, perPage: 25, search: "", status: "", role: null, total: 0, auditPage: 1,
  roles: [], modules: [], plans: {}, editing: null, roleEditing: null, session: { name: "", scopes: [] },
};

// Whether the signed-in token holds `scope` (`admin` holds them all).
const can = (scope) => state.session.scopes.includes(scope) || state.session.scopes.includes("admin");
const TABS = ["keys", "roles", "audit", "events"];
// The role filter's value for "keys without a role" (the API's `role=`).
const NO_ROLE = "\u0000none";

// ---- API -----------------------------------------------------------------

async function api(method, path, body, version) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  // An edit is made for the version the form was filled from: a change
  // made meanwhile by someone else is refused (412), not overwritten.
  if (version !== undefined) headers["If-Match"] = `"${version}"`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    return { ok: false, status: 0, json: { error: "The gateway cannot be reached.", code: "network" } };
  }
  let json = {};
  try { json = await resp.json(); } catch (e) { json = { error: `Unexpected answer (${resp.status})` }; }
  if (resp.status === 401 && path !== "/session") signOut("Your session has ended: sign in again.");
  return { ok: resp.ok, status: resp.status, json };
}

// ---- helpers ---------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

function relative(iso) {
  if (!iso) return "never";
  const secs = Math.round((Date.now() - Date.parse(iso)) / 1000);
  const abs = Math.abs(secs);
  const [n, unit] = abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.round(abs / 60), "min"] : abs < 86400 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), "d"];
  return secs >= 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
}

function notice(text) { $("#notice").textContent = text; }

function clearErrors(form) {
  form.querySelectorAll(".error").forEach((p) => { p.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
}

// Shows an API error next to the field it names, or on the form.
function showError(form, json, prefix = "") {
  const field = json.field;
  const target = field && form.querySelector(`#err-${prefix}${field}`);
  if (target) {
    target.textContent = json.error;
    const input = form.querySelector(`[aria-describedby~="err-${prefix}${field}"]`);
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  } else {
    form.querySelector(`#err-${prefix}form`).textContent = json.error || "Something went wrong.";
  }
}

async function confirmDialog(title, text, okLabel) {
  const d = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  d.returnValue = "";
  d.showModal();
  return new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

function showSecret(secret) {
  $("#secret-value").value = secret;
  $("#copy-status").textContent = "";
  $("#secret-dialog").showModal();
  $("#secret-value").select();
}

// ---- sign-in -----------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#signin").hidden = false;
  $("#token-error").textContent = message || "";
  $("#token").value = "";
  $("#token").focus();
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  const who = await api("GET", "/session");
  if (!who.ok) { signOut(who.json.error || "The token was refused."); return; }
  state.session = who.json.data;
  if (!can("read")) { signOut(`The token ${state.session.name} may not read keys (scopes: ${state.session.scopes.join(", ")}).`); return; }
  const r = await api("GET", "/modules");
  if (!r.ok) { signOut(r.json.error || "The token was refused."); return; }
  $("#who").textContent = `Signed in as ${state.session.name} (${state.session.scopes.join(", ")})`;
  document.body.classList.toggle("no-write", !can("write"));
  state.modules = r.json.data;
  state.plans = (r.json.meta && r.json.meta.plans) || {};
  // The key dialog lists the roles: they are loaded before the console
  // shows, or a quick "Create" would offer none.
  await loadRoles();
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  await loadKeys();
}

// ---- tabs --------------------------------------------------------------------

function selectTab(name) {
  for (const t of TABS) {
    const on = t === name;
    const tab = $(`#tab-${t}`);
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#panel-${t}`).hidden = !on;
  }
  notice("");
  if (name === "roles") loadRoles(); else if (name === "audit") loadAudit(); else if (name === "events") loadEvents(); else loadKeys();
}

// ---- keys --------------------------------------------------------------------

async function loadKeys() {
  const q = new URLSearchParams({ page: state.page, per_page: state.perPage });
  if (state.search) q.set("search", state.search);
  if (state.status) q.set("status", state.status);
  if (state.role !== null) q.set("role", state.role === NO_ROLE ? "" : state.role);
  const r = await api("GET", `/api-keys?${q}`);
  if (!r.ok) { notice(r.json.error); return; }
  state.total = r.json.meta.total;
  const pages = Math.max(1, Math.ceil(state.total / state.perPage));
  if (state.page > pages) { state.page = pages; return loadKeys(); }
  const body = $("#keys-table tbody");
  body.replaceChildren(...r.json.data.map(keyRow));
  const filtered = state.search || state.status || state.role !== null;
  if (!r.json.data.length) body.append(el("tr", {}, el("td", { colspan: 11, text: filtered ? "No key matches." : "No keys yet." })));
  $("#page-info").textContent = `Page ${state.page} of ${pages} (${state.total} key${state.total === 1 ? "" : "s"})`;
  $("#prev").disabled = state.page <= 1;
  $("#next").disabled = state.page >= pages;
  r.json.data.forEach(loadUsage);
}

function keyRow(k) {
  // An expired key is enabled but refused: its pill must not look active.
  const look = k.status === "expired" ? "expired" : k.enabled ? "on" : "";
  const toggle = el("button", {
    type: "button", role: "switch", class: `switch ${look}`, "aria-checked": String(k.enabled),
    "aria-label": `${k.enabled ? "Disable" : "Enable"} ${k.name}`, text: k.status,
    disabled: !can("write"), onclick: () => setEnabled(k, !k.enabled),
  });
  return el("tr", { "data-key": k.keyId },
    el("td", { "data-label": "API Key" }, el("code", { text: k.keyPrefix })),
    el("td", { "data-label": "Name", class: "name-cell", title: k.description ? `${k.name}: ${k.description}` : k.name },
      el("div", {}, el("strong", { text: k.name }), el("div", { class: "muted", text: k.description }))),
    el("td", { "data-label": "Role", text: k.role || "—" }),
    el("td", { "data-label": "Owner", text: k.owner || "—" }),
    el("td", { "data-label": "Allowed IPs", text: k.allowedIps.length ? k.allowedIps.join(", ") : "any" }),
    el("td", { "data-label": "Rate limit", text: `${k.rateLimit}/min` }),
    el("td", { "data-label": "Usage", class: "usage", text: "…" }),
    el("td", { "data-label": "Last used", text: relative(k.lastUsed), title: k.lastUsed || "" }),
    el("td", { "data-label": "Expires", text: k.expiresAt ? relative(k.expiresAt) : "never", title: k.expiresAt || "" }),
    el("td", { "data-label": "Status" }, toggle),
    el("td", { "data-label": "Actions" }, el("div", { class: "row-actions" },
      el("button", { type: "button", text: "Events", "aria-label": `Events of ${k.name}`, onclick: () => showEventsOf(k.keyId) })),
    el("div", { class: "row-actions needs-write" },
      el("button", { type: "button", text: "Edit", "aria-label": `Edit ${k.name}`, onclick: () => openKeyDialog(k) }),
      el("button", { type: "button", text: "Rotate", "aria-label": `Rotate ${k.name}`, onclick: () => rotateKey(k) }),
      el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${k.name}`, onclick: () => deleteKey(k) }))),
  );
}

async function loadUsage(k) {
  const r = await api("GET", `/api-keys/${encodeURIComponent(k.keyId)}/usage`);
  const cell = document.querySelector(`tr[data-key="${CSS.escape(k.keyId)}"] .usage`);
  if (!cell || !r.ok) return;
  const { lastHour, lastDay, windows, credits } = r.json.data;
  const bar = el("span", { class: "bar", "aria-hidden": "true" });
  bar.style.width = `${lastDay ? Math.max(4, Math.round((lastHour / lastDay) * 100)) : 0}%`;
  const label = `${lastHour} in the last hour, ${lastDay} in the last 24 hours`;
  const parts = [el("div", { title: label }, el("span", { text: `${lastHour} / 1 h · ${lastDay} / 24 h` }), el("span", { class: "bar-track", "aria-hidden": "true" }, bar))];
  // One bar per quota (hour, day, month): how much of it is used.
  for (const w of (windows || []).filter((w) => w.window !== "minute" && w.used !== null)) {
    const share = w.limit ? Math.min(100, Math.round((w.used / w.limit) * 100)) : 0;
    const fill = el("span", { class: share >= 90 ? "bar full" : "bar" });
    fill.style.width = `${share}%`;
    const text = `${w.window}: ${w.used} of ${w.limit}`;
    parts.push(el("div", { class: "quota", title: `${text}, resets ${new Date(w.resetsAt).toLocaleString()}` },
      el("span", { text }),
      el("span", { class: "bar-track", role: "meter", "aria-label": `${k.name} ${w.window} quota`, "aria-valuemin": "0", "aria-valuemax": String(w.limit), "aria-valuenow": String(w.used) }, fill)));
  }
  if (credits) {
    parts.push(el("div", { class: "credits" },
      el("span", { text: `credits: ${credits.remaining}`, title: credits.refillAmount ? `refilled to ${credits.refillAmount} each ${credits.refillInterval}` : "no refill" }),
      el("button", { type: "button", class: "link needs-write", text: "Top up", "aria-label": `Top up ${k.name}`, disabled: !can("write"), onclick: () => topUp(k) })));
  }
  cell.replaceChildren(...parts);
}

async function topUp(k) {
  const d = $("#credits-dialog");
  $("#credits-text").textContent = `Credits of ${k.name}.`;
  $("#credits-amount").value = "";
  $("#credits-error").textContent = "";
  d.returnValue = "";
  d.showModal();
  const go = await new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue), { once: true }));
  if (go !== "add" && go !== "set") return;
  const n = Number($("#credits-amount").value);
  const r = await api("POST", `/api-keys/${encodeURIComponent(k.keyId)}/credits`, { [go]: n });
  notice(r.ok ? `${k.name}: ${r.json.data.credits.remaining} credits.` : r.json.error);
  await loadUsage(k);
}

async function setEnabled(k, enabled) {
  const r = await api("POST", `/api-keys/${encodeURIComponent(k.keyId)}/${enabled ? "enable" : "disable"}`, {});
  notice(r.ok ? `${k.name} ${enabled ? "enabled" : "disabled"}.` : r.json.error);
  await loadKeys();
}

async function rotateKey(k) {
  const d = $("#rotate-dialog");
  $("#rotate-text").textContent = `${k.name} gets a new secret, shown once.`;
  d.returnValue = "";
  d.showModal();
  const go = await new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
  if (!go) return;
  const graceSeconds = Number($("#rotate-grace").value);
  const r = await api("POST", `/api-keys/${encodeURIComponent(k.keyId)}/rotate`, { graceSeconds });
  if (!r.ok) { notice(r.json.error); return; }
  await loadKeys();
  showSecret(r.json.data.apiKey);
}

async function deleteKey(k) {
  if (!(await confirmDialog("Delete this key?", `${k.name} (${k.keyPrefix}) is revoked immediately on every gateway node. This cannot be undone.`, "Delete"))) return;
  const r = await api("DELETE", `/api-keys/${encodeURIComponent(k.keyId)}`);
  notice(r.ok ? `${k.name} deleted.` : r.json.error);
  await loadKeys();
}

function permissionChecks(container, selected, name) {
  container.replaceChildren(...state.modules.map((m) => el("div", { class: "module-group" },
    el("strong", { text: m.name }),
    ...m.permissions.map((p) => el("label", { class: "inline" },
      el("input", { type: "checkbox", name, value: p.id, checked: selected.has(p.id) }), ` ${p.label}`)))));
}

function sameSet(a, b) {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

// The grants to send for the ticked boxes of a record that had `original`:
// each grant it had is kept while every box it covers is still ticked (a
// wildcard stays as written), the other ticked boxes are named one by one,
// and no wildcard is ever made up, so a permission added to a module later
// is had only by those granted it.
function grantsFor(original, selected) {
  const out = [];
  const covered = new Set();
  for (const grant of original) {
    const ids = [...expand([grant])];
    if (ids.every((id) => selected.has(id))) {
      out.push(grant);
      ids.forEach((id) => covered.add(id));
    }
  }
  for (const m of state.modules) for (const p of m.permissions) {
    if (selected.has(p.id) && !covered.has(p.id)) out.push(p.id);
  }
  return out;
}

function openKeyDialog(k) {
  state.editing = k || null;
  const form = $("#key-form");
  form.reset();
  clearErrors(form);
  $("#key-dialog-title").textContent = k ? `Edit ${k.name}` : "Create an API Key";
  $("#key-submit").textContent = k ? "Update" : "Create";
  $("#k-role").replaceChildren(el("option", { value: "", text: "— no role —" }), ...state.roles.map((r) => el("option", { value: r.id, text: r.name })));
  $("#k-plan").replaceChildren(el("option", { value: "", text: "— no plan —" }), ...Object.entries(state.plans).map(([p, n]) => el("option", { value: p, text: `${p} (${n}/min)` })));
  // Wildcards (`*`, `lists.*`) show as the boxes they cover.
  state.editingPermissions = expand(k ? k.permissions : []);
  permissionChecks($("#k-permissions"), state.editingPermissions, "permission");
  $("#k-env").disabled = Boolean(k);
  if (k) {
    $("#k-name").value = k.name;
    $("#k-description").value = k.description;
    $("#k-owner").value = k.owner;
    $("#k-role").value = k.role || "";
    $("#k-plan").value = k.plan || "";
    $("#k-env").value = k.env;
    $("#k-meta").value = Object.entries(k.metadata).map(([a, b]) => `${a}=${b}`).join("\n");
    $("#k-ips").value = k.allowedIps.join("\n");
  }
  $("#k-expires-now").textContent = k ? `Now: ${k.expiresAt ? new Date(k.expiresAt).toLocaleString() : "never expires"}; leave both empty to keep it.` : "";
  $("#k-ip-toggle").checked = Boolean(k && k.allowedIps.length);
  syncIpToggle();
  $("#key-dialog").showModal();
  $("#k-name").focus();
}

function syncIpToggle() {
  const on = $("#k-ip-toggle").checked;
  $("#k-ips").hidden = !on;
  $("#k-ips-label").hidden = !on;
}

function keyBody() {
  const k = state.editing;
  const num = (v) => (v.trim() === "" ? null : Number(v));
  const metadata = {};
  for (const line of $("#k-meta").value.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const i = line.indexOf("=");
    metadata[i < 0 ? line : line.slice(0, i)] = i < 0 ? "" : line.slice(i + 1);
  }
  const body = {
    name: $("#k-name").value.trim(),
    description: $("#k-description").value,
    owner: $("#k-owner").value,
    role: $("#k-role").value || null,
    plan: $("#k-plan").value || null,
    allowedIps: $("#k-ip-toggle").checked ? $("#k-ips").value.split("\n").map((l) => l.trim()).filter(Boolean) : [],
    metadata,
  };
  // The number fields are sent only when typed in: empty means "as it is"
  // (the key's rate limit shows the plan's or the default when it has none).
  const rate = num($("#k-rate").value);
  const days = num($("#k-expiry").value);
  if (rate !== null) body.rateLimit = rate;
  if (days !== null) body.expirationDays = days;
  const at = $("#k-expires-at").value;
  if (at) body.expiresAt = new Date(at).toISOString().replace(/\.\d{3}Z$/, "Z");
  const ticked = new Set([...document.querySelectorAll("#k-permissions input:checked")].map((i) => i.value));
  if (!k) {
    body.env = $("#k-env").value;
    body.permissions = grantsFor([], ticked);
    return body;
  }
  // Permissions go only when the boxes changed, as grants that keep what
  // the key had (see grantsFor).
  if (!sameSet(ticked, state.editingPermissions)) body.permissions = grantsFor(k.permissions, ticked);
  // An edit sends only what the operator changed: no field they did not
  // touch may change (an empty plan list once cleared every key's plan).
  const same = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
  for (const field of ["name", "description", "owner", "role", "plan", "allowedIps", "metadata"]) {
    if (same(body[field], k[field] ?? null)) delete body[field];
  }
  return body;
}

// A value in a form that compares equal whatever the order of a list's or
// an object's entries.
function canonical(v) {
  if (Array.isArray(v)) return [...v].sort();
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return v;
}

async function submitKey(event) {
  event.preventDefault();
  const form = $("#key-form");
  clearErrors(form);
  if (!$("#k-name").value.trim()) { showError(form, { field: "name", error: "name: is required" }); return; }
  const k = state.editing;
  const r = k ? await api("PATCH", `/api-keys/${encodeURIComponent(k.keyId)}`, keyBody(), k.version) : await api("POST", "/api-keys", keyBody());
  if (r.status === 412) r.json.error = "This key was changed by someone else since you opened it: close and open it again.";
  if (!r.ok) { showError(form, r.json); return; }
  $("#key-dialog").close();
  notice(k ? `${r.json.data.name} updated.` : `${r.json.data.name} created.`);
  await loadKeys();
  if (!k) showSecret(r.json.data.apiKey);
}

// ---- roles -------------------------------------------------------------------

async function loadRoles() {
  const r = await api("GET", "/api-roles");
  if (!r.ok) { $("#roles-error").textContent = r.json.error; return; }
  state.roles = r.json.data;
  $("#roles-list").replaceChildren(...state.roles.map(roleItem));
  const filter = $("#filter-role");
  const chosen = filter.value;
  filter.replaceChildren(el("option", { value: "", text: "all" }), el("option", { value: NO_ROLE, text: "no role" }),
    ...state.roles.map((role) => el("option", { value: role.id, text: role.name })));
  filter.value = [...filter.options].some((o) => o.value === chosen) ? chosen : "";
}

// The keys that use a role, read when its details are opened.
async function showRoleKeys(role, target) {
  const q = new URLSearchParams({ role: role.id, per_page: 100 });
  const r = await api("GET", `/api-keys?${q}`);
  if (!r.ok) { target.textContent = r.json.error; return; }
  const names = r.json.data.map((k) => k.name);
  const more = r.json.meta.total - names.length;
  target.textContent = names.length
    ? `Used by ${r.json.meta.total} key${r.json.meta.total === 1 ? "" : "s"}: ${names.join(", ")}${more > 0 ? ` and ${more} more` : ""}`
    : "No key uses this role.";
}

function labelOf(id) {
  if (id === "*") return "Every permission of every module";
  for (const m of state.modules) {
    if (id === `${m.id}.*`) return `All of ${m.name}`;
    const p = m.permissions.find((x) => x.id === id);
    if (p) return `${p.label} (${m.name})`;
  }
  return id;
}

function roleItem(role) {
  return el("li", { class: "role", "data-role": role.id },
    el("div", { class: "role-head" },
      el("div", {}, el("strong", { text: role.name }), el("code", { class: "muted", text: ` ${role.id}` }), el("div", { class: "muted", text: role.description })),
      el("div", { class: "row-actions needs-write" },
        el("button", { type: "button", text: "Edit", "aria-label": `Edit role ${role.name}`, onclick: () => openRoleDialog(role) }),
        el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete role ${role.name}`, onclick: () => deleteRole(role) }))),
    el("details", { ontoggle: (e) => { if (e.target.open) showRoleKeys(role, e.target.querySelector(".role-keys")); } },
      el("summary", { text: `Click to expand (${role.permissions.length} permission${role.permissions.length === 1 ? "" : "s"})` }),
      el("ul", {}, ...role.permissions.map((p) => el("li", { text: labelOf(p) }))),
      el("p", { class: "role-keys", "aria-live": "polite", text: "…" })));
}

// ---- audit log -----------------------------------------------------------------

// What an entry changed: the fields whose value differs between before and after.
function changes(entry) {
  const before = entry.before || {};
  const after = entry.after || {};
  if (!entry.before) return "created";
  if (!entry.after) return "deleted";
  const fields = [...new Set([...Object.keys(before), ...Object.keys(after)])]
    .filter((f) => JSON.stringify(before[f]) !== JSON.stringify(after[f]));
  return fields.map((f) => `${f}: ${JSON.stringify(before[f] ?? null)} → ${JSON.stringify(after[f] ?? null)}`).join("; ") || "no field changed";
}

async function loadAudit() {
  const perPage = 25;
  const r = await api("GET", `/audit-log?${new URLSearchParams({ page: state.auditPage, per_page: perPage })}`);
  if (!r.ok) { notice(r.json.error); return; }
  const pages = Math.max(1, Math.ceil(r.json.meta.total / perPage));
  $("#audit-table tbody").replaceChildren(...r.json.data.map((e) => el("tr", {},
    el("td", { "data-label": "When", text: relative(new Date(e.atMs).toISOString()), title: new Date(e.atMs).toISOString() }),
    el("td", { "data-label": "Who", text: e.actor }),
    el("td", { "data-label": "What" }, el("code", { text: e.action })),
    el("td", { "data-label": "Target" }, el("code", { text: e.target })),
    el("td", { "data-label": "Changed", class: "audit-change", text: changes(e) }))));
  if (!r.json.data.length) $("#audit-table tbody").append(el("tr", {}, el("td", { colspan: 5, text: "Nothing changed yet." })));
  $("#audit-info").textContent = `Page ${state.auditPage} of ${pages} (${r.json.meta.total} change${r.json.meta.total === 1 ? "" : "s"})`;
  $("#audit-prev").disabled = state.auditPage <= 1;
  $("#audit-next").disabled = state.auditPage >= pages;
}

// ---- events and deliveries ---------------------------------------------------

// What an event says beyond the key: the part its type adds.
function eventDetails(e) {
  const d = e.data || {};
  if (d.leak) return `leaked (${d.leak.action}) at ${d.leak.url || "?"}`;
  if (d.quota) return `${d.quota.threshold}% of the ${d.quota.window} quota (${d.quota.used}/${d.quota.limit})`;
  if (d.credits) return `${d.credits.remaining} credits left`;
  if (d.expiry) return `expires ${relative(d.expiresAt)}`;
  if (d.previousSecretValidUntil) return `old secret works until ${d.previousSecretValidUntil}`;
  return d.name ? `${d.name}${d.owner ? ` (${d.owner})` : ""}` : "";
}

function showEventsOf(keyId) {
  $("#events-key").value = keyId;
  selectTab("events");
}

async function loadEvents() {
  const key = $("#events-key").value.trim();
  const q = new URLSearchParams({ limit: 100 });
  if (key) q.set("keyId", key);
  const r = await api("GET", `/events?${q}`);
  if (!r.ok) { notice(r.json.error); return; }
  $("#events-table tbody").replaceChildren(...r.json.data.map((e) => el("tr", { "data-event": e.id },
    el("td", { "data-label": "When", text: relative(e.timestamp), title: e.timestamp }),
    el("td", { "data-label": "Type" }, el("code", { text: e.type })),
    el("td", { "data-label": "Key" }, el("code", { text: e.data.keyId })),
    el("td", { "data-label": "Details", text: eventDetails(e) }))));
  if (!r.json.data.length) $("#events-table tbody").append(el("tr", {}, el("td", { colspan: 4, text: "No events yet." })));
  await loadDeliveries(key);
}

// Each delivery with its attempts, latest last, behind a disclosure.
async function loadDeliveries(key) {
  const q = new URLSearchParams({ limit: 100 });
  if (key) q.set("keyId", key);
  const status = $("#deliveries-status").value;
  if (status) q.set("status", status);
  const r = await api("GET", `/webhooks/deliveries?${q}`);
  if (!r.ok) { notice(r.json.error); return; }
  $("#deliveries-table tbody").replaceChildren(...r.json.data.map((d) => el("tr", { "data-delivery": `${d.webhook} ${d.eventId}` },
    el("td", { "data-label": "Event" }, el("code", { text: d.type }), " ", el("span", { class: "muted", text: d.eventId })),
    el("td", { "data-label": "Endpoint", text: d.webhook }),
    el("td", { "data-label": "Status" }, el("span", { class: `pill ${d.status}`, text: d.status })),
    el("td", { "data-label": "Attempts" }, el("details", {},
      el("summary", { text: `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}` }),
      el("ol", { class: "attempts" }, ...d.log.map((a) => el("li", {
        text: `${a.at}: ${a.status ? `answered ${a.status}` : "no answer"}${a.error ? ` (${a.error})` : ""} in ${a.tookMs} ms`,
      }))))),
    // A key's events go in order: an untried one waits for those before it.
    el("td", { "data-label": "Next try", text: !d.nextAttemptAt ? "—" : d.attempts === 0 ? "in turn" : relative(d.nextAttemptAt) }))));
  const none = status ? `No delivery is ${status}.` : "No deliveries: no [[webhooks]] endpoint, or nothing sent yet.";
  if (!r.json.data.length) $("#deliveries-table tbody").append(el("tr", {}, el("td", { colspan: 5, text: none })));
}

async function deleteRole(role) {
  $("#roles-error").textContent = "";
  if (!(await confirmDialog("Delete this role?", `${role.name} will be removed.`, "Delete"))) return;
  const r = await api("DELETE", `/api-roles/${encodeURIComponent(role.id)}`);
  if (!r.ok) $("#roles-error").textContent = r.json.error; else notice(`${role.name} deleted.`);
  await loadRoles();
}

function expand(grants) {
  const out = new Set();
  for (const m of state.modules) for (const p of m.permissions) {
    if (grants.includes("*") || grants.includes(`${m.id}.*`) || grants.includes(p.id)) out.add(p.id);
  }
  return out;
}

function showModule(index) {
  const m = state.modules[index];
  const sel = state.roleEditing.selected;
  document.querySelectorAll("#r-modules button").forEach((b, i) => b.setAttribute("aria-selected", String(i === index)));
  const boxes = m.permissions.map((p) => el("label", { class: "inline" },
    el("input", { type: "checkbox", value: p.id, checked: sel.has(p.id), onchange: (e) => { e.target.checked ? sel.add(p.id) : sel.delete(p.id); syncCheckAll(m); } }), ` ${p.label}`));
  $("#r-perms").replaceChildren(...boxes);
  $("#r-check-all").onchange = (e) => { m.permissions.forEach((p) => (e.target.checked ? sel.add(p.id) : sel.delete(p.id))); showModule(index); };
  syncCheckAll(m);
}

function syncCheckAll(m) {
  $("#r-check-all").checked = m.permissions.length > 0 && m.permissions.every((p) => state.roleEditing.selected.has(p.id));
}

function openRoleDialog(role) {
  const form = $("#role-form");
  form.reset();
  clearErrors(form);
  const selected = expand(role ? role.permissions : []);
  state.roleEditing = { role: role || null, selected, initial: new Set(selected) };
  $("#role-dialog-title").textContent = role ? `Edit ${role.name}` : "Add API Role";
  $("#r-id").disabled = Boolean(role);
  if (role) { $("#r-id").value = role.id; $("#r-name").value = role.name; $("#r-description").value = role.description; }
  $("#r-modules").replaceChildren(...state.modules.map((m, i) => el("button", { type: "button", role: "option", text: m.name, onclick: () => showModule(i) })));
  if (state.modules.length) showModule(0);
  $("#role-dialog").showModal();
  (role ? $("#r-name") : $("#r-id")).focus();
}

async function submitRole(event) {
  event.preventDefault();
  const form = $("#role-form");
  clearErrors(form);
  const { role: editing, selected, initial } = state.roleEditing;
  const body = { name: $("#r-name").value.trim(), description: $("#r-description").value };
  if (!editing) {
    body.id = $("#r-id").value.trim();
    body.permissions = grantsFor([], selected);
  } else {
    // Only what the operator changed goes: the boxes only when ticked or
    // unticked, and then never widened into a wildcard the role lacked.
    if (body.name === editing.name) delete body.name;
    if (body.description === editing.description) delete body.description;
    if (!sameSet(selected, initial)) body.permissions = grantsFor(editing.permissions, selected);
  }
  const r = editing ? await api("PATCH", `/api-roles/${encodeURIComponent(editing.id)}`, body, editing.version) : await api("POST", "/api-roles", body);
  if (r.status === 412) r.json.error = "This role was changed by someone else since you opened it: close and open it again.";
  if (!r.ok) { showError(form, r.json, "r-"); return; }
  $("#role-dialog").close();
  notice(`${r.json.data.name} saved.`);
  await loadRoles();
}

// ---- wiring ------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value.trim()); });
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  $("#tab-keys").addEventListener("click", () => selectTab("keys"));
  $("#tab-roles").addEventListener("click", () => selectTab("roles"));
  $("#tab-audit").addEventListener("click", () => { state.auditPage = 1; selectTab("audit"); });
  $("#tab-events").addEventListener("click", () => selectTab("events"));
  let eventsTimer;
  $("#events-key").addEventListener("input", () => { clearTimeout(eventsTimer); eventsTimer = setTimeout(loadEvents, 250); });
  $("#deliveries-status").addEventListener("change", () => loadDeliveries($("#events-key").value.trim()));
  $(".tabs").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    const now = TABS.findIndex((t) => $(`#tab-${t}`).getAttribute("aria-selected") === "true");
    const next = TABS[(now + (e.key === "ArrowRight" ? 1 : TABS.length - 1)) % TABS.length];
    selectTab(next);
    $(`#tab-${next}`).focus();
  });
  $("#audit-prev").addEventListener("click", () => { state.auditPage -= 1; loadAudit(); });
  $("#audit-next").addEventListener("click", () => { state.auditPage += 1; loadAudit(); });
  $("#filter-status").addEventListener("change", (e) => { state.status = e.target.value; state.page = 1; loadKeys(); });
  $("#filter-role").addEventListener("change", (e) => { state.role = e.target.value === "" ? null : e.target.value; state.page = 1; loadKeys(); });
  $("#create-key").addEventListener("click", () => openKeyDialog(null));
  $("#create-role").addEventListener("click", () => openRoleDialog(null));
  $("#key-form").addEventListener("submit", submitKey);
  $("#role-form").addEventListener("submit", submitRole);
  document.querySelectorAll("dialog .cancel").forEach((b) => b.addEventListener("click", () => b.closest("dialog").close()));
  $("#k-ip-toggle").addEventListener("change", syncIpToggle);
  $("#per-page").addEventListener("change", (e) => { state.perPage = Number(e.target.value); state.page = 1; loadKeys(); });
  let timer;
  $("#search").addEventListener("input", (e) => { clearTimeout(timer); timer = setTimeout(() => { state.search = e.target.value.trim(); state.page = 1; loadKeys(); }, 250); });
  $("#prev").addEventListener("click", () => { state.page -= 1; loadKeys(); });
  $("#next").addEventListener("click", () => { state.page += 1; loadKeys(); });
  $("#copy-secret").addEventListener("click", async () => {
    const v = $("#secret-value");
    v.select();
    try { await navigator.clipboard.writeText(v.value); $("#copy-status").textContent = "Copied."; } catch (e) {
      $("#copy-status").textContent = document.execCommand("copy") ? "Copied." : "Select the key and copy it by hand.";
    }
  });
  $("#secret-dialog").addEventListener("close", () => { $("#secret-value").value = ""; });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token); else signOut("");
});
