// The demo page's script, served as /demo.js so the page's Content-Security-Policy can forbid
// inline scripts.
import { connect, describe } from "/client.js";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const admin = params.get("admin");
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

if (!token) {
  $("license-body").innerHTML = "Open this page as <code>/?token=&lt;tenant JWT&gt;</code> — <code>license-gateway serve --demo</code> prints a ready URL.";
  $("state").dataset.state = "offline";
  $("state").textContent = "no token";
  throw new Error("no token");
}

const client = connect({ token });
window.licenseClient = client; // for tests and the console

// Connection badge: the state and the transport in use.
function showConnection() {
  const badge = $("state");
  badge.dataset.state = client.state;
  badge.dataset.transport = client.transport;
  badge.textContent = `${client.state} · ${client.transport === "sse" ? "SSE" : "WebSocket"}`;
  badge.title = client.transport === "sse"
    ? "Server-Sent Events: this network does not pass WebSockets"
    : "WebSocket";
}
client.on("state", showConnection);
client.on("transport", showConnection);
showConnection();

// License panel.
function renderLicense(view) {
  if (!view) { $("license-body").innerHTML = '<p class="hint">This tenant has no license.</p>'; return; }
  $("tenant").textContent = view.tenantId;
  const modules = Object.entries(view.modules).map(([name, m]) =>
    `<li data-module="${esc(name)}" data-locked="${m.locked}"><span>${esc(name)}</span>` +
    `<span class="lock">${m.locked ? "locked · " + esc(m.reason) : "✓ unlocked"}</span></li>`).join("");
  const limits = Object.entries(view.limits).map(([metric, l]) =>
    `<div class="usage" data-metric="${esc(metric)}"><div class="label"><span>${esc(metric)}</span>` +
    `<span>${l.used} / ${l.limit} (${l.percent}%)</span></div>` +
    `<div class="bar" data-state="${l.state}"><div class="fill" style="width:${Math.min(100, l.percent)}%"></div>` +
    `<div class="mark" style="left:80%" title="80% warning line"></div></div></div>`).join("");
  $("license-body").innerHTML =
    `<div class="summary"><div><span>Plan</span><strong id="plan">${esc(view.license.plan)}</strong></div>` +
    `<div><span>Status</span><strong class="status" id="status" data-status="${view.status}">${view.status}</strong></div>` +
    `<div><span>Expires</span><strong>${new Date(view.license.expiresAt).toLocaleString()}</strong></div>` +
    `<div><span>Days left</span><strong>${view.daysLeft}</strong></div></div>` +
    `<h2>Modules</h2><ul class="modules" id="modules">${modules || '<li class="hint">none</li>'}</ul>` +
    `<h2>Usage</h2>${limits || '<p class="hint">no limits</p>'}`;
  if (admin) renderControls(view);
}
client.on("license", renderLicense);
// Usage and activation events change the panel too; refetch for them as well.
for (const type of ["usage_limit_warning", "usage_limit_exceeded", "module_activated", "license_expiring"]) {
  client.on(type, () => client.refetchLicense());
}

// Toasts: one at a time, top right, the rest queued; 6 s for info/warning, 10 s for errors.
let shown = null, dismissTimer = null;
function renderToasts(list) {
  const first = list[0];
  if (!first) { $("toasts").innerHTML = ""; shown = null; clearTimeout(dismissTimer); return; }
  if (shown !== first.id) {
    shown = first.id;
    clearTimeout(dismissTimer);
    dismissTimer = setTimeout(() => client.remove(first.id), first.severity === "error" ? 10000 : 6000);
  }
  $("toasts").innerHTML =
    `<div class="toast" id="toast" data-severity="${first.severity}" data-type="${esc(first.type)}" data-id="${esc(first.id)}" role="status">` +
    `<div class="message"><span class="kind">${esc(first.type.replace(/_/g, " "))}</span>${esc(first.message)}</div>` +
    `<button class="close" id="toast-close" aria-label="Dismiss">×</button></div>` +
    (list.length > 1 ? `<div id="toast-queue">+${list.length - 1} more</div>` : "");
  $("toast-close").onclick = () => client.remove(first.id);
}
client.on("notifications", renderToasts);

// Event log.
client.on("*", (event) => {
  const log = $("log");
  if (log.querySelector(".hint")) log.innerHTML = "";
  const item = document.createElement("li");
  item.innerHTML = `<b>${esc(event.type)}</b> — ${esc(describe(event))}`;
  log.prepend(item);
});

// Notification center: the bell shows once the token names a user (connected.unreadCount).
const TYPES = ["license_expiring", "license_expired", "usage_limit_warning", "usage_limit_exceeded",
  "module_activated", "module_deactivated", "license_updated"];
let preferencesLoaded = false;
client.on("unread", (count) => {
  $("bell").hidden = false;
  $("unread").textContent = count > 99 ? "99+" : String(count);
  $("unread").dataset.count = String(count);
  if (!preferencesLoaded) {
    preferencesLoaded = true;
    client.getPreferences().catch(() => {}); // for the toasts' own mute check
  }
});
$("bell").onclick = async () => {
  $("panel").hidden = !$("panel").hidden;
  if (!$("panel").hidden) await client.listNotifications({ limit: 20 }).catch((e) => console.warn(e));
};
function renderInbox(inbox) {
  $("inbox").innerHTML = inbox.items.length ? inbox.items.map((n) =>
    `<li data-id="${esc(n.id)}" data-read="${n.read}"><span class="dot" data-severity="${esc(n.severity)}"></span>` +
    `<span class="text">${esc(describe(n))}<time>${esc(new Date(n.timestamp).toLocaleString())}</time></span>` +
    `<button class="toggle" data-toggle-read="${esc(n.id)}">${n.read ? "Mark unread" : "Mark read"}</button></li>`).join("")
    : '<li class="hint">No notifications.</li>';
  $("more").hidden = !inbox.nextBefore;
}
client.on("inbox", renderInbox);
$("inbox").onclick = (e) => {
  const id = e.target.dataset && e.target.dataset.toggleRead;
  if (!id) return;
  const item = client.inbox.items.find((n) => n.id === id);
  (item && item.read ? client.markUnread(id) : client.markRead(id)).catch((err) => alert(err.message));
};
$("read-all").onclick = () => client.readAll().catch((err) => alert(err.message));
$("more").onclick = () => client.listNotifications({ limit: 20, before: client.inbox.nextBefore });
$("pref-types").innerHTML = "Mute:" + TYPES.map((t) =>
  `<label><input type="checkbox" data-mute="${t}"> ${t.replace(/_/g, " ")}</label>`).join("");
$("prefs-open").onclick = async () => {
  const p = await client.getPreferences();
  for (const box of document.querySelectorAll("[data-mute]")) box.checked = p.mutedTypes.includes(box.dataset.mute);
  $("pref-severity").value = p.minSeverity;
  $("pref-modules").value = (p.modules || []).join(", ");
  $("prefs-error").textContent = "";
  $("prefs").showModal();
};
$("prefs-save").onclick = async (e) => {
  e.preventDefault();
  const modules = $("pref-modules").value.split(",").map((m) => m.trim()).filter(Boolean);
  try {
    await client.setPreferences({
      mutedTypes: [...document.querySelectorAll("[data-mute]:checked")].map((b) => b.dataset.mute),
      minSeverity: $("pref-severity").value,
      modules: modules.length ? modules : null,
    });
    $("prefs").close();
  } catch (error) {
    $("prefs-error").textContent = error.message;
  }
};

// Demo controls (admin token in the URL).
async function adminCall(method, path, body) {
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) alert(`${method} ${path}: ${response.status} ${await response.text()}`);
}
function renderControls(view) {
  const tenant = view.tenantId, base = `/api/admin/tenants/${encodeURIComponent(tenant)}`;
  const doc = structuredClone(view.license);
  const inSeconds = (s) => new Date(Date.now() + s * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  $("controls").hidden = false;
  $("controls-body").innerHTML =
    Object.entries(view.limits).map(([metric, l]) =>
      `<label>${esc(metric)} usage (limit ${l.limit})</label><input type="number" min="0" value="${l.used}" data-usage="${esc(metric)}"> ` +
      `<button data-set-usage="${esc(metric)}">Set</button>`).join("") +
    `<label>Modules</label>` + Object.entries(doc.modules || {}).map(([name, m]) =>
      `<button data-toggle="${esc(name)}">${m.enabled ? "Disable" : "Enable"} ${esc(name)}</button>`).join("") +
    `<label>Time</label><button id="expire-soon">License expires in 10 s</button>` +
    `<button id="renew">Renew for a year</button>`;
  for (const button of document.querySelectorAll("[data-set-usage]")) {
    button.onclick = () => {
      const metric = button.dataset.setUsage;
      const value = Number(document.querySelector(`[data-usage="${metric}"]`).value);
      adminCall("PUT", `${base}/usage`, { [metric]: value });
    };
  }
  for (const button of document.querySelectorAll("[data-toggle]")) {
    button.onclick = () => {
      const next = structuredClone(doc);
      next.modules[button.dataset.toggle].enabled = !next.modules[button.dataset.toggle].enabled;
      adminCall("PUT", `${base}/license`, next);
    };
  }
  $("expire-soon").onclick = () => adminCall("PUT", `${base}/license`, { ...doc, expiresAt: inSeconds(10) });
  $("renew").onclick = () => adminCall("PUT", `${base}/license`, { ...doc, expiresAt: inSeconds(365 * 86400) });
}
