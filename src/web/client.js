// license-gateway browser client: a plain ES module, no dependencies, no build step.
//
//   import { connect } from "/client.js";
//   const client = connect({ url: "wss://gw.example.com/ws/license", getToken: () => fetchJwt() });
//   client.on("module_deactivated", (event) => lockModule(event.data.module));
//   client.on("notifications", (list) => renderToasts(list));
//   client.on("license", (view) => renderLicense(view));
//
// Transports: `transport: "auto"` (the default) opens a WebSocket and falls back to Server-Sent
// Events (/sse/license) for the page's life when two WebSocket attempts fail or one brings no
// `connected` within 5 s — as behind proxies that break the upgrade. "websocket" and "sse" pin
// one. `client.transport` says which is in use (reported on "transport").
//
// The token travels in the WebSocket subprotocol list (never in the URL); an SSE stream opens
// with a single-use ticket (`POST /api/connect-ticket`) instead, since EventSource cannot send
// headers. The client reconnects
// with exponential backoff and full jitter (1 s doubling to 30 s) and never gives up silently:
// `client.state` is "connecting", "open", "reconnecting" or "offline", reported on "state". It
// resumes with the last event id it saw, so a reconnect loses nothing, and refreshes its token
// in-band (via `getToken`) before it expires. After `license_expired`, `module_deactivated`,
// `license_updated` and `resync_required` it refetches `GET /api/license`.
//
// Notification center (tokens that name a user): `client.unreadCount` (on "unread"), the stored
// list (`listNotifications`, kept in `client.inbox`, on "inbox"), `markRead`, `markUnread`,
// `readAll`, and preferences (`getPreferences`, `setPreferences`, on "preferences"). Changes made
// in any tab, on any node, arrive as `notification_state` and update the count and the list here.

export const STATES = Object.freeze(["connecting", "open", "reconnecting", "offline"]);

/** Event types after which the license view is refetched. */
const REFETCH_AFTER = new Set(["license_expired", "module_deactivated", "license_updated"]);

/** Close codes after which reconnecting with the same token is pointless. */
const AUTH_FAILED = 1008;

/** With `transport: "auto"`: failed WebSocket attempts before falling back to SSE. */
const WS_ATTEMPTS = 2;
/** With `transport: "auto"`: how long a WebSocket may take to bring `connected`, ms. */
const WS_CONNECTED_WITHIN = 5000;

/** Human text for an event: names the metric of a usage event and the module of a module event. */
export function describe(event) {
  const d = event.data || {};
  const mod = d.module ? `Module "${d.module}"` : "License";
  switch (event.type) {
    case "license_expiring":
      return `${mod} expires in ${d.daysLeft} day${d.daysLeft === 1 ? "" : "s"}`;
    case "license_expired":
      return `${mod} expired`;
    case "usage_limit_warning":
      return `${d.metric}: ${d.percent}% of the limit used (${d.used} of ${d.limit})`;
    case "usage_limit_exceeded":
      return `${d.metric}: limit exceeded (${d.used} of ${d.limit})`;
    case "module_activated":
      return `Module "${d.module}" activated`;
    case "module_deactivated":
      return `Module "${d.module}" deactivated${d.reason === "expired" ? " (expired)" : ""}`;
    case "license_updated":
      return `License updated: ${(d.changes || []).join(", ")}`;
    default:
      return event.type;
  }
}

const SEVERITY_RANK = { info: 0, warning: 1, error: 2 };

/** Whether preferences keep an event from the user (the server's rule: errors always pass). */
export function mutedBy(preferences, event) {
  if (!preferences || event.severity === "error") return false;
  if ((SEVERITY_RANK[event.severity] ?? 0) < (SEVERITY_RANK[preferences.minSeverity] ?? 0)) return true;
  if ((preferences.mutedTypes || []).includes(event.type)) return true;
  const module = event.data && event.data.module;
  return Array.isArray(preferences.modules) && typeof module === "string" && !preferences.modules.includes(module);
}

/** Milliseconds-and-sequence ordering of event ids ("<ms>-<seq>"). */
function newer(a, b) {
  if (!b) return true;
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am > bm || (am === bm && as > bs);
}

/** The `exp` claim of a JWT in milliseconds, or null. */
function expiryOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(payload)).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}

export class LicenseClient {
  /**
   * @param {object} options
   * @param {string} [options.url] WebSocket endpoint; default: this page's host, /ws/license.
   * @param {"auto"|"websocket"|"sse"} [options.transport="auto"] which transport to use.
   * @param {string} [options.sseUrl] SSE endpoint; default: derived from `url` (/sse/license).
   * @param {string} [options.token] a JWT (when `getToken` is not given).
   * @param {() => Promise<string>|string} [options.getToken] fresh JWT on demand (connect and refresh).
   * @param {string} [options.apiBase] base URL of the HTTP API; default: derived from `url`.
   * @param {number} [options.minDelay=1000] first reconnect delay cap, ms.
   * @param {number} [options.maxDelay=30000] largest reconnect delay cap, ms.
   * @param {number} [options.refreshBefore=60000] refresh the token this long before it expires, ms.
   * @param {number} [options.maxNotifications=50] oldest notifications drop beyond this.
   * @param {boolean} [options.fetchLicense=true] fetch the license view at start and when needed.
   */
  constructor(options = {}) {
    const here = typeof location !== "undefined" ? location : null;
    this.url = options.url || (here ? `${here.protocol === "https:" ? "wss" : "ws"}://${here.host}/ws/license` : "");
    this.apiBase = options.apiBase || this.url.replace(/^ws/, "http").replace(/\/ws\/license.*$/, "");
    this.token = options.token || null;
    this.getToken = options.getToken || null;
    this.minDelay = options.minDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 30000;
    this.refreshBefore = options.refreshBefore ?? 60000;
    this.maxNotifications = options.maxNotifications ?? 50;
    this.fetchLicenseEnabled = options.fetchLicense ?? true;
    this.sseUrl = options.sseUrl || this.url.replace(/^ws/, "http").replace(/\/ws\/license.*$/, "/sse/license");
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.EventSource = options.EventSource || globalThis.EventSource;
    this.transportOption = options.transport || "auto";
    /** The transport in use: "websocket" or "sse". */
    this.transport = this.transportOption === "sse" ? "sse" : "websocket";

    this.state = "connecting";
    this.lastEventId = null;
    this.node = null;
    this.connectionId = null;
    this.license = null;
    this.notifications = [];
    /** Unread notifications of the token's user; null until known (or without a user). */
    this.unreadCount = null;
    /** The stored notifications last listed, newest first, kept in sync: `{items, nextBefore}`. */
    this.inbox = null;
    /** The user's preferences once fetched or saved. */
    this.preferences = null;
    this.attempt = 0;
    this.lastClose = null;
    this._listeners = new Map();
    this._ws = null;
    this._sse = null;
    this._wsFailures = 0;
    this._gotConnected = false;
    this._connectTimer = null;
    this._closed = false;
    this._retryTimer = null;
    this._refreshTimer = null;

    if (typeof window !== "undefined") {
      window.addEventListener("online", () => this._retryNow());
      window.addEventListener("offline", () => this._setState("offline"));
    }
    this._open();
    if (this.fetchLicenseEnabled) this.refetchLicense();
  }

  /** Subscribes to an event type, "*" (every event), "state", "transport", "notifications" (toasts),
   *  "license", "resync", "unread" (count), "inbox" (stored list), "readstate"
   *  (`notification_state`), "preferences" or "error"; returns a function that unsubscribes. */
  on(type, callback) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(callback);
    return () => this._listeners.get(type)?.delete(callback);
  }

  /** Removes one notification by id. */
  remove(id) {
    const before = this.notifications.length;
    this.notifications = this.notifications.filter((n) => n.id !== id);
    if (this.notifications.length !== before) this._emit("notifications", this.notifications);
  }

  /** Removes every notification. */
  clear() {
    this.notifications = [];
    this._emit("notifications", this.notifications);
  }

  /** Closes the connection for good. */
  close() {
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._connectTimer);
    if (this._ws) this._ws.close(1000, "client closed");
    if (this._sse) this._sse.close();
    this._setState("offline");
  }

  /** Fetches GET /api/license; resolves to the view (null when the tenant has none). */
  async refetchLicense() {
    try {
      const token = await this._token();
      const response = await fetch(`${this.apiBase}/api/license`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      this.license = response.ok ? await response.json() : null;
      this._emit("license", this.license);
      return this.license;
    } catch (error) {
      this._emit("error", error);
      return this.license;
    }
  }

  // --- notification center ---------------------------------------------------------------------

  /** Lists stored notifications, newest first: `{limit, before, unread, types, minSeverity}`.
   *  Without `before` the result becomes `client.inbox`; with it, the page is appended. */
  async listNotifications(options = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(options)) {
      if (value !== undefined && value !== null) query.set(key, Array.isArray(value) ? value.join(",") : String(value));
    }
    const page = await this._api("GET", `/api/notifications?${query}`);
    this._setUnread(page.unreadCount);
    if (!options.before || !this.inbox) {
      this.inbox = { items: page.items, nextBefore: page.nextBefore };
    } else {
      this.inbox = { items: [...this.inbox.items, ...page.items], nextBefore: page.nextBefore };
    }
    this._emit("inbox", this.inbox);
    return page;
  }

  /** Marks one notification read; resolves to the unread count. */
  markRead(id) {
    return this._readState(`/api/notifications/${encodeURIComponent(id)}/read`, { changed: [{ id, read: true }] });
  }

  /** Marks one notification unread; resolves to the unread count. */
  markUnread(id) {
    return this._readState(`/api/notifications/${encodeURIComponent(id)}/unread`, { changed: [{ id, read: false }] });
  }

  /** Marks everything read, up to and including `upTo` when given; resolves to the unread count. */
  readAll(upTo) {
    const newest = this.inbox && this.inbox.items[0] && this.inbox.items[0].id;
    return this._readState("/api/notifications/read-all", { readUpTo: upTo || newest }, upTo ? { upTo } : {});
  }

  /** The user's preferences: `{mutedTypes, minSeverity, modules}`. */
  async getPreferences() {
    this.preferences = await this._api("GET", "/api/notifications/preferences");
    this._emit("preferences", this.preferences);
    return this.preferences;
  }

  /** Replaces the user's preferences; they apply at once to every tab on every node. */
  async setPreferences(preferences) {
    this.preferences = await this._api("PUT", "/api/notifications/preferences", preferences);
    this._emit("preferences", this.preferences);
    return this.preferences;
  }

  async _readState(path, change, body) {
    const { unreadCount } = await this._api("POST", path, body);
    // The same change arrives as notification_state too; applying it twice is harmless.
    this._applyReadState({ ...change, unreadCount });
    return unreadCount;
  }

  _applyReadState(state) {
    this._setUnread(state.unreadCount);
    if (this.inbox) {
      const flags = new Map((state.changed || []).map((c) => [c.id, c.read]));
      const upTo = state.readUpTo;
      this.inbox = {
        ...this.inbox,
        items: this.inbox.items.map((item) => {
          if (flags.has(item.id)) return { ...item, read: flags.get(item.id) };
          if (upTo && !newer(item.id, upTo)) return { ...item, read: true };
          return item;
        }),
      };
      this._emit("inbox", this.inbox);
    }
  }

  _setUnread(count) {
    if (typeof count !== "number" || this.unreadCount === count) return;
    this.unreadCount = count;
    this._emit("unread", count);
  }

  async _api(method, path, body) {
    const token = await this._token();
    const response = await fetch(`${this.apiBase}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((json && json.error && json.error.message) || `${method} ${path}: ${response.status}`);
      error.status = response.status;
      error.detail = json && json.error;
      throw error;
    }
    return json;
  }

  // --- internals -----------------------------------------------------------------------------

  _emit(type, value) {
    for (const callback of this._listeners.get(type) || []) {
      try {
        callback(value);
      } catch (error) {
        console.error("license client listener failed", error);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  async _token() {
    if (this.getToken) this.token = await this.getToken();
    return this.token;
  }

  async _open() {
    if (this._closed) return;
    this._setState(this.attempt === 0 && !this.lastClose ? "connecting" : "reconnecting");
    let token;
    try {
      token = await this._token();
    } catch (error) {
      this._emit("error", error);
      return this._scheduleRetry();
    }
    if (!token) {
      this._setState("offline");
      return;
    }
    this._gotConnected = false;
    if (this.transport === "sse") return this._openSse(token);
    const protocols = ["license.v1", `bearer.${token}`];
    if (this.lastEventId) protocols.push(`last.${this.lastEventId}`);
    let ws;
    try {
      ws = new this.WebSocket(this.url, protocols);
    } catch (error) {
      this._emit("error", error);
      return this._closedBy({ code: 1006, reason: "" });
    }
    this._ws = ws;
    if (this.transportOption === "auto") {
      // A proxy that holds the upgrade open without answering counts as a failed attempt.
      clearTimeout(this._connectTimer);
      this._connectTimer = setTimeout(() => {
        if (this._ws === ws && !this._gotConnected) ws.close();
      }, WS_CONNECTED_WITHIN);
    }
    ws.onmessage = (message) => this._onMessage(message.data);
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._closedBy({ code: event.code, reason: event.reason });
    };
  }

  /** Opens an SSE stream with a fresh ticket, resuming after the last event seen. */
  async _openSse(token) {
    let ticket;
    try {
      const response = await fetch(`${this.apiBase}/api/connect-ticket`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
      });
      if (response.status === 401) return this._closedBy({ code: AUTH_FAILED, reason: "invalid token" });
      if (!response.ok) throw new Error(`connect-ticket: ${response.status}`);
      ticket = (await response.json()).ticket;
    } catch (error) {
      this._emit("error", error);
      return this._closedBy({ code: 1006, reason: "" });
    }
    if (this._closed) return;
    const query = new URLSearchParams({ ticket });
    if (this.lastEventId) query.set("lastEventId", this.lastEventId);
    let es;
    try {
      es = new this.EventSource(`${this.sseUrl}?${query}`);
    } catch (error) {
      this._emit("error", error);
      return this._closedBy({ code: 1006, reason: "" });
    }
    this._sse = es;
    const end = (close) => {
      if (this._sse !== es) return;
      // EventSource would reconnect by itself with the spent ticket: this client does it.
      es.close();
      this._sse = null;
      this._closedBy(close);
    };
    es.onmessage = (message) => {
      let parsed = null;
      try {
        parsed = JSON.parse(message.data);
      } catch {
        return;
      }
      // SSE has no close frame: the server's last message says why the stream ends.
      if (parsed && parsed.type === "close") return end({ code: parsed.code, reason: parsed.reason });
      this._onMessage(message.data);
    };
    es.onerror = () => end({ code: 1006, reason: "" });
  }

  /** After a connection ended: falls back, gives up or schedules the next attempt. */
  _closedBy(close) {
    clearTimeout(this._refreshTimer);
    clearTimeout(this._connectTimer);
    this.lastClose = close;
    if (this._closed) return;
    if (this.transport === "websocket" && !this._gotConnected) this._wsFailures += 1;
    if (this.transportOption === "auto" && this.transport === "websocket" && this._wsFailures >= WS_ATTEMPTS) {
      this.transport = "sse";
      this._emit("transport", this.transport);
      return this._open();
    }
    // A refused token only helps again if a new one can be fetched.
    if (close.code === AUTH_FAILED && !this.getToken) {
      this._setState("offline");
      return;
    }
    this._scheduleRetry();
  }

  _scheduleRetry() {
    if (this._closed) return;
    if (typeof navigator !== "undefined" && navigator.onLine === false) {
      this._setState("offline"); // the "online" event retries
      return;
    }
    this._setState("reconnecting");
    // Full jitter: a uniform delay up to the exponential cap, so a fleet does not reconnect in step.
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    this.attempt += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), Math.random() * cap);
  }

  _retryNow() {
    if (this._closed || this._ws || this._sse) return;
    clearTimeout(this._retryTimer);
    this._open();
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (!this.getToken) return;
    const exp = expiryOf(this.token || "");
    if (!exp) return;
    const wait = Math.max(5000, exp - Date.now() - this.refreshBefore);
    this._refreshTimer = setTimeout(async () => {
      try {
        if (this._sse) {
          // A stream cannot be refreshed in-band: reopen it with a fresh token and ticket,
          // resuming after the last event, before the old token expires.
          const es = this._sse;
          this._sse = null;
          es.close();
          return this._open();
        }
        const token = await this._token();
        if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify({ type: "auth", token }));
      } catch (error) {
        this._emit("error", error);
      }
    }, wait);
  }

  _onMessage(raw) {
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      return;
    }
    switch (message.type) {
      case "connected":
        // A client that has seen no event yet resumes from the stream's starting point.
        if (!this.lastEventId && message.lastEventId) this.lastEventId = message.lastEventId;
        this.attempt = 0;
        this._gotConnected = true;
        if (this.transport === "websocket") this._wsFailures = 0;
        clearTimeout(this._connectTimer);
        this.node = message.node;
        this.connectionId = message.connectionId;
        this._setUnread(message.unreadCount);
        this._setState("open");
        this._scheduleRefresh();
        return;
      case "auth_ok":
        this._scheduleRefresh();
        return;
      case "pong":
        return;
      case "error":
        console.warn("license gateway:", message.message);
        return;
      case "notification_state":
        this._applyReadState(message);
        this._emit("readstate", message);
        return;
      case "resync_required":
        this._emit("resync", message);
        if (this.fetchLicenseEnabled) this.refetchLicense();
        return;
      default:
        this._onEvent(message);
    }
  }

  _onEvent(event) {
    if (event.id) {
      // The gateway delivers each event once; this guard only protects against replays.
      if (!newer(event.id, this.lastEventId)) return;
      this.lastEventId = event.id;
    }
    const notification = {
      id: event.id || `${Date.now()}-${Math.random()}`,
      type: event.type,
      severity: event.severity || "info",
      message: describe(event),
      timestamp: event.timestamp,
      data: event.data || {},
      event,
    };
    // The server already keeps muted events away; this covers the moment a change is in flight.
    const muted = mutedBy(this.preferences, notification);
    if (!muted) this.notifications = [...this.notifications, notification].slice(-this.maxNotifications);
    if (event.id && this.unreadCount !== null) this._setUnread(this.unreadCount + 1);
    if (event.id && this.inbox && !this.inbox.items.some((item) => item.id === event.id)) {
      this.inbox = { ...this.inbox, items: [{ ...event, read: false }, ...this.inbox.items] };
      this._emit("inbox", this.inbox);
    }
    this._emit(event.type, event);
    this._emit("*", event);
    if (!muted) this._emit("notifications", this.notifications);
    if (this.fetchLicenseEnabled && REFETCH_AFTER.has(event.type)) this.refetchLicense();
  }
}

/** Connects to the gateway; see {@link LicenseClient}. */
export function connect(options) {
  return new LicenseClient(options);
}
