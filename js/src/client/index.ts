// Wattfare browser SDK (wattfare/client): the consent popup, the connection's status, and
// fetch() with a session token. The gateway serves this module's build at /sdk/wattfare.js
// (generated from js/src/client/index.ts by `npm run sdk` in js/; edit it there).
//
//   import { Wattfare } from "https://gateway.example/sdk/wattfare.js";   // or "wattfare/client"
//   const wattfare = new Wattfare({
//     publishableKey: "pk_live_…",
//     session: () => fetch("/api/ai-session").then((r) => r.json()).then((j) => j.token),
//   });
//   button.onclick = () => wattfare.connect().then(show, (e) => console.warn(e.code, e.message));
//   wattfare.addEventListener("change", (e) => show(e.detail));
//
// The page holds only short-lived session tokens minted by the app's backend; the
// secret key never reaches the browser. The consent popup lives on the gateway's
// origin, and its answer is accepted only from that origin and that window.
//
// This file imports nothing, so that its build is one self-contained ES module.

const POLL_MS = 250;
/** A session token is reused until this close to its `exp`. */
const RENEW_BEFORE_S = 60;

/** Why a call failed. The first group is the browser's side of consent:
 * - `popup_blocked`: the browser refused to open the consent window (call connect() from a click);
 * - `closed`: the person closed the consent window before answering;
 * - `denied`: the person declined;
 * - `expired`: the consent link ran out (10 minutes); ask again;
 * - `origin_not_allowed`: this page's origin is not one the app registered with the gateway;
 * - `invalid_session`: the app's `session` function gave no usable token;
 * - `network_error`: the gateway could not be reached;
 * and otherwise the API's own code (`not_connected`, `connection_revoked`, `spend_cap_reached`, …). */
export type WattfareErrorCode =
  | "popup_blocked"
  | "closed"
  | "denied"
  | "expired"
  | "origin_not_allowed"
  | "invalid_session"
  | "session_expired"
  | "network_error"
  | "not_connected"
  | "connection_revoked"
  | "spend_cap_reached"
  | "invalid_api_key"
  | "api_error"
  | (string & {});

/** An error with a stable `code` (see WattfareErrorCode) and a message that explains it. */
export class WattfareError extends Error {
  readonly code: WattfareErrorCode;
  readonly status: number | null;

  constructor(code: WattfareErrorCode, message: string, status?: number | null) {
    super(message);
    this.name = "WattfareError";
    this.code = code;
    this.status = status ?? null;
  }

  /** The user has no usable connection (never connected, or revoked): ask them to connect. */
  get notConnected(): boolean {
    return this.code === "not_connected" || this.code === "connection_revoked";
  }
}

/** `GET /v1/connection`, as the API sends it. */
export interface Connection {
  object: "connection";
  status: "connected" | "not_connected" | "revoked";
  user_id: string;
  monthly_cap_usd: number | null;
  spent_usd: number;
  remaining_usd: number | null;
  period: string;
}

export interface WattfareOptions {
  /** The app's publishable key, `pk_test_…` or `pk_live_…`. */
  publishableKey: string;
  /** Returns a session token minted by the app's backend for the signed-in user
   *  (the `token` of wattfare/server's createSession, or of POST /v1/sessions). */
  session: () => Promise<string> | string;
  /** The gateway, e.g. "https://gateway.example". Default: where this module was loaded from. */
  baseURL?: string;
  /** @deprecated the same as baseURL. */
  baseUrl?: string;
}

interface ConsentAnswer {
  wattfare?: unknown;
  consent?: unknown;
  status?: unknown;
  connection?: Connection;
}

/** One part of a JWS compact token, decoded as JSON (unverified); null if unreadable. */
function jwtPart(token: string, index: number): Record<string, unknown> | null {
  try {
    const part = (token.split(".")[index] ?? "").replace(/-/g, "+").replace(/_/g, "/");
    const value: unknown = JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function defaultBase(): string | undefined {
  // As /sdk/wattfare.js, the module's own URL names the gateway; bundled, it does not.
  try {
    const url = new URL(import.meta.url);
    return url.protocol === "http:" || url.protocol === "https:" ? url.origin : undefined;
  } catch {
    return undefined;
  }
}

export class Wattfare extends EventTarget {
  readonly publishableKey: string;
  readonly baseUrl: string;
  readonly origin: string;
  private readonly session: () => Promise<string> | string;
  private current: Connection | null = null;
  private held: { token: string; exp: number } | null = null;
  private minting: Promise<string> | null = null;
  private pending: { popup: Window; promise: Promise<Connection> } | null = null;

  constructor(options: WattfareOptions) {
    super();
    const { publishableKey, session } = options ?? ({} as WattfareOptions);
    if (typeof publishableKey !== "string" || !/^pk_(test|live)_/.test(publishableKey)) {
      throw new TypeError("Wattfare: publishableKey must be a pk_test_… or pk_live_… key");
    }
    if (typeof session !== "function") {
      throw new TypeError("Wattfare: session must be a function returning a session token");
    }
    const base = options.baseURL ?? options.baseUrl ?? defaultBase();
    if (base === undefined) {
      throw new TypeError("Wattfare: baseURL must name the gateway, e.g. https://gateway.example");
    }
    this.publishableKey = publishableKey;
    this.baseUrl = String(base).replace(/\/+$/, "");
    this.origin = new URL(this.baseUrl).origin;
    this.session = session;
  }

  /** The gateway's URL (the same as baseUrl). */
  get baseURL(): string {
    return this.baseUrl;
  }

  /** The last connection seen (null before the first status() or connect()). */
  get connection(): Connection | null {
    return this.current;
  }

  /** A session token for the gateway: the last one the app's `session` function gave,
   *  until a minute before it expires, then a new one (concurrent calls share it). */
  async token(): Promise<string> {
    const held = this.held;
    if (held !== null && held.exp - Date.now() / 1000 > RENEW_BEFORE_S) return held.token;
    this.minting ??= this.freshToken().finally(() => { this.minting = null; });
    return this.minting;
  }

  /** Forget the held session token (say, when the signed-in user changes): the next
   *  call asks the app's `session` function again. */
  clearSession(): void {
    this.held = null;
  }

  private async freshToken(): Promise<string> {
    let token: unknown;
    try {
      token = await this.session();
    } catch (error) {
      throw new WattfareError("invalid_session", `Could not get a session token from the app's session function: ${String(error)}`);
    }
    if (typeof token !== "string" || token.split(".").length !== 3) {
      throw new WattfareError("invalid_session", "The session function must return a session token (a JWT string)");
    }
    if (jwtPart(token, 0)?.kid !== this.publishableKey) {
      throw new WattfareError("invalid_session", "The session token was not minted for this publishable key");
    }
    const exp = jwtPart(token, 1)?.exp;
    this.held = typeof exp === "number" ? { token, exp } : null;
    return token;
  }

  /** fetch() against the gateway with a session token, e.g.
   *  wattfare.fetch("/v1/chat/completions", {method: "POST", body: JSON.stringify(...)}) */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const send = async (): Promise<Response> => {
      const headers = new Headers(init.headers ?? {});
      headers.set("Authorization", `Bearer ${await this.token()}`);
      if (init.body && !headers.has("Content-Type")) headers.set("Content-Type", "application/json");
      try {
        return await fetch(this.baseUrl + path, { ...init, headers, credentials: "omit" });
      } catch (error) {
        throw await this.unreachable(error);
      }
    };
    const reused = this.held !== null;
    const response = await send();
    // A held token the gateway no longer takes (a clock that runs behind, a rolled key):
    // once more with a new one, when the body can be sent again.
    if (response.status === 401 && reused && (init.body == null || typeof init.body === "string")) {
      this.clearSession();
      return send();
    }
    return response;
  }

  /**
   * Why a request never got an answer the page may read. A browser hides the gateway's
   * refusal of an origin that no app registered (its CORS preflight fails), so ask the
   * gateway's public origin check, which any page may read, before calling it a network
   * error.
   */
  private async unreachable(error: unknown): Promise<WattfareError> {
    try {
      const url = `${this.baseUrl}/sdk/origin?key=${encodeURIComponent(this.publishableKey)}`;
      const answer = (await (await fetch(url, { credentials: "omit" })).json()) as { registered?: unknown; origin?: unknown };
      if (answer.registered === false) {
        return new WattfareError(
          "origin_not_allowed",
          `This page's origin (${String(answer.origin ?? location.origin)}) is not registered for this app `
          + "with the gateway; register it: wattfare apps create NAME --origin <origin>",
          403,
        );
      }
    } catch {
      // The gateway is unreachable indeed.
    }
    return new WattfareError("network_error", `Could not reach the gateway at ${this.baseUrl}: ${String(error)}`);
  }

  private async api(method: string, path: string): Promise<Connection & { url?: string; expires_at?: number; proof?: string }> {
    const response = await this.fetch(path, { method });
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = ((body as { error?: { code?: string; message?: string } } | null)?.error) ?? {};
      throw new WattfareError(error.code || "api_error", error.message || `HTTP ${response.status}`, response.status);
    }
    return body as Connection;
  }

  private update(connection: Connection): void {
    const before = this.current;
    this.current = connection;
    const changed = !before
      || before.status !== connection.status
      || before.monthly_cap_usd !== connection.monthly_cap_usd
      || before.spent_usd !== connection.spent_usd
      || before.remaining_usd !== connection.remaining_usd;
    if (changed) this.dispatchEvent(new CustomEvent<Connection>("change", { detail: connection }));
  }

  /** Calls `listener(connection)` on every change; returns a function that unsubscribes. */
  onChange(listener: (connection: Connection) => void): () => void {
    const handler = (event: Event) => listener((event as CustomEvent<Connection>).detail);
    this.addEventListener("change", handler);
    return () => this.removeEventListener("change", handler);
  }

  /** This user's connection: {status: "connected"|"not_connected"|"revoked", monthly_cap_usd, …}. */
  async status(): Promise<Connection> {
    const connection = await this.api("GET", "/v1/connection");
    this.update(connection);
    return connection;
  }

  /** The app disconnects this user. */
  async disconnect(): Promise<Connection> {
    const connection = await this.api("DELETE", "/v1/connection");
    this.update(connection);
    return connection;
  }

  /**
   * Opens the consent popup. Call it straight from a click handler: the window is opened
   * before anything is awaited, so popup blockers let it through. Resolves with the
   * connection; rejects with a WattfareError coded popup_blocked, closed, denied,
   * expired or origin_not_allowed (or an API code).
   */
  connect(): Promise<Connection> {
    if (this.pending) {
      try { this.pending.popup.focus(); } catch { /* ignore */ }
      return this.pending.promise;
    }
    const width = 480;
    const height = 720;
    const left = Math.max(0, (window.screenX || 0) + ((window.outerWidth || width) - width) / 2);
    const top = Math.max(0, (window.screenY || 0) + ((window.outerHeight || height) - height) / 2);
    let popup: Window | null = null;
    try {
      popup = window.open("", "wattfare-connect", `popup=yes,width=${width},height=${height},left=${left},top=${top}`);
    } catch {
      popup = null;
    }
    if (!popup) {
      return Promise.reject(new WattfareError(
        "popup_blocked",
        "The browser blocked the consent window. Call connect() straight from a click handler, "
        + "or ask the person to allow pop-ups for this site.",
      ));
    }
    try {
      popup.document.title = "Connecting…";
      popup.document.body.textContent = "Connecting to Wattfare…";
    } catch { /* not ours to write: fine */ }
    const promise = this.consent(popup).finally(() => { this.pending = null; });
    this.pending = { popup, promise };
    return promise;
  }

  private async consent(popup: Window): Promise<Connection> {
    let started: { url?: string; expires_at?: number; proof?: string };
    try {
      started = await this.api("POST", "/v1/connect");
    } catch (error) {
      try { popup.close(); } catch { /* ignore */ }
      throw error;
    }
    const url = String(started.url);
    const consentId = new URL(url).pathname.split("/").pop();
    popup.location.href = url;
    return new Promise<Connection>((resolve, reject) => {
      let settled = false;
      const finish = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        window.removeEventListener("message", onMessage);
        clearInterval(watcher);
        clearTimeout(deadline);
        fn();
      };
      const expired = () => new WattfareError("expired", "The consent link expired before an answer; ask again");
      const onMessage = (event: MessageEvent) => {
        // Only the gateway's own page in the window we opened may answer, about this link.
        if (event.origin !== this.origin || event.source !== popup) return;
        const data = event.data as ConsentAnswer | null;
        if (data && data.wattfare === "connect-hello" && data.consent === consentId) {
          // The consent page asks for proof that this window started the flow.
          popup.postMessage({ wattfare: "connect-proof", consent: consentId, proof: started.proof }, this.origin);
          return;
        }
        if (!data || data.wattfare !== "connect" || data.consent !== consentId) return;
        try { popup.close(); } catch { /* ignore */ }
        const connection = data.connection;
        if (data.status === "connected" && connection) {
          this.update(connection);
          finish(() => resolve(connection));
        } else if (data.status === "denied") {
          finish(() => reject(new WattfareError("denied", "The person did not approve an AI budget for this app")));
        } else {
          finish(() => reject(expired()));
        }
      };
      window.addEventListener("message", onMessage);
      const watcher = setInterval(() => {
        // A message posted just before the window closed is delivered first; wait a
        // moment so it wins over "closed".
        if (popup.closed) {
          setTimeout(() => finish(() => reject(new WattfareError(
            "closed", "The consent window was closed before the person answered",
          ))), POLL_MS);
        }
      }, POLL_MS);
      const wait = Math.max(0, Number(started.expires_at) * 1000 - Date.now()) + 1000;
      const deadline = setTimeout(() => {
        try { popup.close(); } catch { /* ignore */ }
        finish(() => reject(expired()));
      }, wait);
    });
  }
}

export default Wattfare;
