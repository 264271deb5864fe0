// Wattfare browser SDK: a dependency-free ES module, served by the gateway at
// /sdk/wattfare.js.
//
//   import { Wattfare } from "https://gateway.example/sdk/wattfare.js";
//   const wattfare = new Wattfare({
//     publishableKey: "pk_live_…",
//     session: () => fetch("/api/wattfare-session").then((r) => r.json()).then((j) => j.token),
//   });
//   button.onclick = () => wattfare.connect().then(show, (e) => console.warn(e.code));
//   wattfare.addEventListener("change", (e) => show(e.detail));
//
// The page holds only short-lived session tokens minted by the app's backend; the
// secret key never reaches the browser. The consent popup lives on the gateway's
// origin, and its answer is accepted only from that origin and that window.

const DEFAULT_BASE = new URL(import.meta.url).origin;
const POLL_MS = 250;

/** An error with a stable `code`: popup_blocked, denied, closed, expired,
 *  network_error, invalid_session, or an API error code (e.g. origin_not_allowed). */
export class WattfareError extends Error {
  constructor(code, message, status) {
    super(message);
    this.name = "WattfareError";
    this.code = code;
    this.status = status ?? null;
  }
}

function kidOf(token) {
  try {
    const head = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(head + "===".slice((head.length + 3) % 4))).kid ?? null;
  } catch {
    return null;
  }
}

export class Wattfare extends EventTarget {
  /**
   * @param {{publishableKey: string, session: () => Promise<string>, baseUrl?: string}} options
   */
  constructor({ publishableKey, session, baseUrl } = {}) {
    super();
    if (typeof publishableKey !== "string" || !/^pk_(test|live)_/.test(publishableKey)) {
      throw new TypeError("Wattfare: publishableKey must be a pk_test_… or pk_live_… key");
    }
    if (typeof session !== "function") {
      throw new TypeError("Wattfare: session must be a function returning a session token");
    }
    this.publishableKey = publishableKey;
    this.baseUrl = String(baseUrl || DEFAULT_BASE).replace(/\/+$/, "");
    this.origin = new URL(this.baseUrl).origin;
    this._session = session;
    this._connection = null;
    this._pending = null;
  }

  /** The last connection seen (null before the first status() or connect()). */
  get connection() {
    return this._connection;
  }

  /** A fresh session token from the app's `session` function. */
  async token() {
    let token;
    try {
      token = await this._session();
    } catch (error) {
      throw new WattfareError("invalid_session", `Could not get a session token: ${error}`);
    }
    if (typeof token !== "string" || token.split(".").length !== 3) {
      throw new WattfareError("invalid_session", "The session function must return a session token");
    }
    if (kidOf(token) !== this.publishableKey) {
      throw new WattfareError("invalid_session", "The session token was not minted for this publishable key");
    }
    return token;
  }

  /** fetch() against the gateway with a session token, e.g.
   *  wattfare.fetch("/v1/chat/completions", {method: "POST", body: JSON.stringify(...)}) */
  async fetch(path, init = {}) {
    const token = await this.token();
    const headers = new Headers(init.headers || {});
    headers.set("Authorization", `Bearer ${token}`);
    if (init.body && !headers.has("Content-Type")) headers.set("Content-Type", "application/json");
    try {
      return await fetch(this.baseUrl + path, { ...init, headers, credentials: "omit" });
    } catch (error) {
      throw new WattfareError("network_error", `Could not reach the gateway: ${error}`);
    }
  }

  async _api(method, path) {
    const response = await this.fetch(path, { method });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new WattfareError(error.code || "api_error", error.message || `HTTP ${response.status}`, response.status);
    }
    return body;
  }

  _update(connection) {
    const before = this._connection;
    this._connection = connection;
    const changed = !before || ["status", "monthly_cap_usd"].some((k) => before[k] !== connection[k]);
    if (changed) this.dispatchEvent(new CustomEvent("change", { detail: connection }));
  }

  /** Calls `listener(connection)` on every change; returns a function that unsubscribes. */
  onChange(listener) {
    const handler = (event) => listener(event.detail);
    this.addEventListener("change", handler);
    return () => this.removeEventListener("change", handler);
  }

  /** This user's connection: {status: "connected"|"not_connected"|"revoked", monthly_cap_usd, …}. */
  async status() {
    const connection = await this._api("GET", "/v1/connection");
    this._update(connection);
    return connection;
  }

  /** The app disconnects this user. */
  async disconnect() {
    const connection = await this._api("DELETE", "/v1/connection");
    this._update(connection);
    return connection;
  }

  /**
   * Opens the consent popup. Call it straight from a click handler: the window is opened
   * before anything is awaited, so popup blockers let it through. Resolves with the
   * connection; rejects with a WattfareError coded popup_blocked, denied, closed or expired.
   */
  connect() {
    if (this._pending) {
      try { this._pending.popup.focus(); } catch { /* ignore */ }
      return this._pending.promise;
    }
    const width = 480;
    const height = 720;
    const left = Math.max(0, (window.screenX || 0) + ((window.outerWidth || width) - width) / 2);
    const top = Math.max(0, (window.screenY || 0) + ((window.outerHeight || height) - height) / 2);
    let popup = null;
    try {
      popup = window.open("", "wattfare-connect", `popup=yes,width=${width},height=${height},left=${left},top=${top}`);
    } catch {
      popup = null;
    }
    if (!popup) {
      return Promise.reject(new WattfareError("popup_blocked", "The browser blocked the consent window; call connect() from a click"));
    }
    try {
      popup.document.title = "Connecting…";
      popup.document.body.textContent = "Connecting to Wattfare…";
    } catch { /* not ours to write: fine */ }
    const promise = this._consent(popup).finally(() => { this._pending = null; });
    this._pending = { popup, promise };
    return promise;
  }

  async _consent(popup) {
    let started;
    try {
      started = await this._api("POST", "/v1/connect");
    } catch (error) {
      try { popup.close(); } catch { /* ignore */ }
      throw error;
    }
    const consentId = new URL(started.url).pathname.split("/").pop();
    popup.location.href = started.url;
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (fn, value) => {
        if (settled) return;
        settled = true;
        window.removeEventListener("message", onMessage);
        clearInterval(watcher);
        clearTimeout(deadline);
        fn(value);
      };
      const onMessage = (event) => {
        // Only the gateway's own page in the window we opened may answer, about this link.
        if (event.origin !== this.origin || event.source !== popup) return;
        const data = event.data;
        if (data && data.wattfare === "connect-hello" && data.consent === consentId) {
          // The consent page asks for proof that this window started the flow.
          popup.postMessage({ wattfare: "connect-proof", consent: consentId, proof: started.proof }, this.origin);
          return;
        }
        if (!data || data.wattfare !== "connect" || data.consent !== consentId) return;
        try { popup.close(); } catch { /* ignore */ }
        if (data.status === "connected" && data.connection) {
          this._update(data.connection);
          finish(resolve, data.connection);
        } else if (data.status === "denied") {
          finish(reject, new WattfareError("denied", "The person did not approve a budget"));
        } else {
          finish(reject, new WattfareError("expired", "The consent link expired; ask again"));
        }
      };
      window.addEventListener("message", onMessage);
      const watcher = setInterval(() => {
        // A message posted just before the window closed is delivered first; wait a
        // moment so it wins over "closed".
        if (popup.closed) setTimeout(() => finish(reject, new WattfareError("closed", "The consent window was closed")), POLL_MS);
      }, POLL_MS);
      const wait = Math.max(0, started.expires_at * 1000 - Date.now()) + 1000;
      const deadline = setTimeout(() => {
        try { popup.close(); } catch { /* ignore */ }
        finish(reject, new WattfareError("expired", "The consent link expired; ask again"));
      }, wait);
    });
  }
}

export default Wattfare;
