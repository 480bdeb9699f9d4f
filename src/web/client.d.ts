// Types for license-gateway's browser client (client.js): every option, callback, message and
// event. The protocol they describe is docs/PROTOCOL.md.

/** The seven event types. */
export type EventType =
  | "license_expiring"
  | "license_expired"
  | "usage_limit_warning"
  | "usage_limit_exceeded"
  | "module_activated"
  | "module_deactivated"
  | "license_updated";

/** Fixed per event type. */
export type Severity = "info" | "warning" | "error";

/** `client.state`. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "offline";

/** `client.transport`: the transport in use. */
export type Transport = "websocket" | "sse";

/** `data` of each event type. */
export interface EventData {
  license_expiring: { expiresAt: string; daysLeft: number; threshold: number; module?: string };
  license_expired: { expiredAt: string; module?: string };
  usage_limit_warning: { metric: string; used: number; limit: number; percent: number };
  usage_limit_exceeded: { metric: string; used: number; limit: number; percent: number };
  module_activated: { module: string };
  module_deactivated: { module: string; reason?: "disabled" | "expired" };
  license_updated: { changes: string[] };
}

/** An event as the gateway sends it. */
export interface LicenseEvent<T extends EventType = EventType> {
  /** `<ms>-<seq>`, strictly increasing per tenant. */
  id: string;
  type: T;
  tenantId: string;
  severity: Severity;
  /** RFC 3339 with milliseconds. */
  timestamp: string;
  data: EventData[T] & Record<string, unknown>;
  /** W3C trace context, while the publisher exports traces. */
  traceparent?: string;
}

/** One entry of `client.notifications` (the toast queue). */
export interface Notification {
  id: string;
  type: EventType;
  severity: Severity;
  /** Human text (`describe(event)`). */
  message: string;
  timestamp: string;
  data: Record<string, unknown>;
  event: LicenseEvent;
}

/** A stored notification with the user's read flag (`GET /api/notifications`). */
export type InboxItem = LicenseEvent & { read: boolean };

/** `client.inbox`: the stored notifications last listed, newest first. */
export interface Inbox {
  items: InboxItem[];
  /** Pass as `before` for the next (older) page; null at the end. */
  nextBefore: string | null;
}

/** A page of `GET /api/notifications`. */
export interface NotificationPage extends Inbox {
  unreadCount: number;
}

/** `listNotifications` options. */
export interface ListOptions {
  /** 1–100, default 20. */
  limit?: number;
  /** Only notifications older than this id. */
  before?: string;
  /** Only unread ones. */
  unread?: boolean;
  types?: EventType[] | string;
  minSeverity?: Severity;
}

/** A user's notification preferences. */
export interface Preferences {
  mutedTypes: EventType[];
  minSeverity: Severity;
  /** Only events of these modules (plus events without a module); null = all. */
  modules: string[] | null;
}

/** `notification_state`: the user's read state changed, in any tab, on any node. */
export interface NotificationState {
  type: "notification_state";
  unreadCount: number;
  changed?: { id: string; read: boolean }[];
  readUpTo?: string;
}

/** `resync_required`: the resume position could not be honoured; the license is refetched. */
export interface ResyncRequired {
  type: "resync_required";
  reason: string;
}

/** `connected`: the first message of each connection. */
export interface Connected {
  type: "connected";
  tenantId: string;
  connectionId: string;
  node: string;
  lastEventId?: string;
  unreadCount?: number;
}

/** Why the last connection ended (a WebSocket close, or an SSE stream's `close` message). */
export interface CloseInfo {
  code: number;
  reason: string;
}

/** One module in the license view. */
export interface ModuleView {
  enabled: boolean;
  locked: boolean;
  reason: "license_expired" | "disabled" | "expired" | null;
  /** The module's own expiry, when it has one. */
  expiresAt?: string;
}

/** One usage limit in the license view. */
export interface LimitView {
  used: number;
  limit: number;
  percent: number;
  state: "ok" | "warning" | "exceeded";
}

/** `GET /api/license`: the tenant's license with its computed status. */
export interface LicenseView {
  tenantId: string;
  license: Record<string, unknown>;
  usage: Record<string, number>;
  status: "active" | "expiring" | "expired";
  daysLeft: number;
  modules: Record<string, ModuleView>;
  limits: Record<string, LimitView>;
}

/** `connect()` options. */
export interface ClientOptions {
  /** WebSocket endpoint; default: this page's host, `/ws/license`. */
  url?: string;
  /** `"auto"` (default): WebSocket, falling back to SSE; or pin one. */
  transport?: "auto" | Transport;
  /** SSE endpoint; default: derived from `url` (`/sse/license`). */
  sseUrl?: string;
  /** A JWT, when `getToken` is not given. */
  token?: string;
  /** A fresh JWT on demand (connect, reconnect, refresh). */
  getToken?: () => string | Promise<string>;
  /** Base URL of the HTTP API; default: derived from `url`. */
  apiBase?: string;
  /** First reconnect delay cap, ms (default 1000). */
  minDelay?: number;
  /** Largest reconnect delay cap, ms (default 30000). */
  maxDelay?: number;
  /** Refresh the token this long before it expires, ms (default 60000). */
  refreshBefore?: number;
  /** Oldest toasts drop beyond this (default 50). */
  maxNotifications?: number;
  /** Fetch the license view at start and when needed (default true). */
  fetchLicense?: boolean;
  /** A WebSocket implementation (tests, non-browser runtimes). */
  WebSocket?: typeof WebSocket;
  /** An EventSource implementation (tests, non-browser runtimes). */
  EventSource?: typeof EventSource;
}

/** What each `on()` subscription receives. */
export type ClientEvents = {
  [T in EventType]: LicenseEvent<T>;
} & {
  "*": LicenseEvent;
  state: ConnectionState;
  transport: Transport;
  notifications: Notification[];
  license: LicenseView | null;
  resync: ResyncRequired;
  unread: number;
  inbox: Inbox;
  readstate: NotificationState;
  preferences: Preferences;
  error: unknown;
};

/** The gateway client: one connection, reconnected and resumed for the page's life. */
export class LicenseClient {
  constructor(options?: ClientOptions);
  /** `"connecting"`, `"open"`, `"reconnecting"` or `"offline"`. */
  readonly state: ConnectionState;
  /** The transport in use. */
  readonly transport: Transport;
  /** The last event id seen (the resume position). */
  readonly lastEventId: string | null;
  /** The node serving the connection. */
  readonly node: string | null;
  readonly connectionId: string | null;
  /** The license view, once fetched. */
  readonly license: LicenseView | null;
  /** The toast queue. */
  readonly notifications: Notification[];
  /** The user's unread count; null until known or when the token names no user. */
  readonly unreadCount: number | null;
  /** The stored notifications last listed, kept in sync. */
  readonly inbox: Inbox | null;
  /** The user's preferences once fetched or saved. */
  readonly preferences: Preferences | null;
  /** Why the last connection ended. */
  readonly lastClose: CloseInfo | null;

  /** Subscribes; returns a function that unsubscribes. */
  on<K extends keyof ClientEvents>(type: K, callback: (value: ClientEvents[K]) => void): () => void;
  on(type: string, callback: (value: unknown) => void): () => void;
  /** Removes one toast by id. */
  remove(id: string): void;
  /** Removes every toast. */
  clear(): void;
  /** Closes the connection for good. */
  close(): void;
  /** Fetches `GET /api/license`. */
  refetchLicense(): Promise<LicenseView | null>;
  /** Lists stored notifications, newest first (without `before` the result becomes `inbox`). */
  listNotifications(options?: ListOptions): Promise<NotificationPage>;
  /** Marks one notification read; resolves to the unread count. */
  markRead(id: string): Promise<number>;
  /** Marks one notification unread; resolves to the unread count. */
  markUnread(id: string): Promise<number>;
  /** Marks everything read (up to and including `upTo`); resolves to the unread count. */
  readAll(upTo?: string): Promise<number>;
  getPreferences(): Promise<Preferences>;
  /** Replaces the preferences; absent fields take their defaults. */
  setPreferences(preferences: Partial<Preferences>): Promise<Preferences>;
}

/** The client's connection states. */
export const STATES: readonly ConnectionState[];

/** Human text for an event (names the metric or module). */
export function describe(event: Pick<LicenseEvent, "type" | "data">): string;

/** Whether preferences keep an event from the user (errors always pass). */
export function mutedBy(preferences: Preferences | null, event: Pick<LicenseEvent, "severity" | "type" | "data">): boolean;

/** Connects to the gateway. */
export function connect(options?: ClientOptions): LicenseClient;
