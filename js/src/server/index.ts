// wattfare/server: an app's backend side of Wattfare.
//
//   import { Wattfare } from "wattfare/server";
//   const wf = new Wattfare({ secretKey: process.env.WATTFARE_SECRET_KEY!, baseURL: "https://gateway.example" });
//   const session = await wf.createSession(userId, { requestLimit: { monthlyUsd: 10 } });   // for the browser
//   const result = streamText({ model: wf.user(userId).model("anthropic/claude-sonnet-4"), prompt });
//
// The secret key stays in this process: it signs session tokens locally and is never
// sent anywhere. Importing this module in a browser bundle gets ./browser.js instead,
// which throws; constructing Wattfare where a DOM is present throws too.

import type { LanguageModelV3 } from "@ai-sdk/provider";

import { WattfareError, errorFromResponse } from "./errors.js";
import { TokenSource, userFetch, userModel } from "./model.js";
import { type RequestLimit, type Session, type SigningKey, mintSession, signingKey, validUserId } from "./session.js";

export { WattfareError, findWattfareError, isNotConnected, type WattfareErrorCode } from "./errors.js";
export { validUserId, type RequestLimit, type Session } from "./session.js";

/** `GET /v1/connection`, as the API sends it. */
export interface Connection {
  object: "connection";
  status: "connected" | "not_connected" | "revoked";
  user_id: string;
  monthly_cap_usd: number | null;
  spent_usd: number;
  remaining_usd: number | null;
  /** The calendar month (UTC) the figures are for, "YYYY-MM". */
  period: string;
}

export interface WattfareOptions {
  /** The app's secret key, `sk_test_…` or `sk_live_…`. Keep it in the server's environment. */
  secretKey: string;
  /** The gateway, e.g. "https://gateway.example" (no /v1). */
  baseURL: string;
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
}

export interface UserOptions {
  /** The monthly cap the app asks this user to approve (test-mode apps approve it themselves). */
  requestLimit?: RequestLimit;
}

function inBrowser(): boolean {
  const scope = globalThis as { window?: unknown; document?: unknown };
  return typeof scope.window === "object" && scope.window !== null && typeof scope.document === "object";
}

export class Wattfare {
  readonly baseURL: string;
  private readonly key: Promise<SigningKey>;
  private readonly fetchImpl: typeof globalThis.fetch;

  constructor(options: WattfareOptions) {
    if (inBrowser()) {
      throw new Error(
        "wattfare/server must not run in a browser: its secret key would be exposed. Mint "
        + "session tokens on your server and use wattfare/client (or wattfare/react) in the page.",
      );
    }
    if (typeof options?.baseURL !== "string" || !/^https?:\/\//.test(options.baseURL)) {
      throw new TypeError("Wattfare: baseURL must be the gateway's http(s) URL");
    }
    this.baseURL = options.baseURL.replace(/\/+$/, "").replace(/\/v1$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    if (typeof options.secretKey !== "string" || !/^sk_(test|live)_/.test(options.secretKey)) {
      throw new TypeError("Wattfare: secretKey must be an sk_test_… or sk_live_… key");
    }
    this.key = signingKey(options.secretKey);
    // An unused, malformed key still fails loudly at the first call; keep Node quiet
    // about the rejection until then.
    this.key.catch(() => undefined);
  }

  /** The publishable key that belongs to the secret key (`pk_test_…` / `pk_live_…`). */
  async publishableKey(): Promise<string> {
    return (await this.key).publishableKey;
  }

  /**
   * A session token for `userId`, minted locally (no network call): the same JSON as
   * `POST /v1/sessions`. Hand it to the browser (wattfare/client's `session` option).
   */
  async createSession(userId: string, options: UserOptions & { ttlSeconds?: number } = {}): Promise<Session> {
    return mintSession(await this.key, userId, options);
  }

  /** One of the app's users: their AI SDK model, connection and disconnect. */
  user(userId: string, options: UserOptions = {}): WattfareUser {
    if (!validUserId(userId)) {
      throw new TypeError("Wattfare: userId must be 1-256 printable characters");
    }
    return new WattfareUser(this, userId, options, this.fetchImpl);
  }

  /** @internal */
  mint(userId: string, options: UserOptions): Promise<Session> {
    return this.createSession(userId, options);
  }
}

export class WattfareUser {
  readonly tokens: TokenSource;
  private readonly authed: typeof globalThis.fetch;

  constructor(
    private readonly wattfare: Wattfare,
    readonly userId: string,
    options: UserOptions,
    private readonly fetchImpl: typeof globalThis.fetch,
  ) {
    this.tokens = new TokenSource(() => wattfare.mint(userId, options));
    this.authed = userFetch(this.tokens, fetchImpl);
  }

  /**
   * An AI SDK language model (for `generateText` / `streamText` from `ai`) billed to this
   * user's AI budget: `model("openai/gpt-4o-mini")`. It renews its session token before
   * it expires. Gateway errors are WattfareErrors with the API's code.
   */
  model(modelId: string): LanguageModelV3 {
    return userModel({ baseURL: this.wattfare.baseURL, modelId, tokens: this.tokens, fetch: this.fetchImpl });
  }

  /** This user's connection to the app this month. "not_connected" is an answer, not an error. */
  async connection(): Promise<Connection> {
    return this.call("GET");
  }

  /** The app disconnects this user (their open streams are cut). Throws a WattfareError
   *  coded `not_connected` when there was no connection. */
  async disconnect(): Promise<Connection> {
    return this.call("DELETE");
  }

  private async call(method: "GET" | "DELETE"): Promise<Connection> {
    const url = `${this.wattfare.baseURL}/v1/connection`;
    let response: Response;
    try {
      response = await this.authed(url, { method });
    } catch (error) {
      throw new WattfareError({
        code: "network_error", message: `Could not reach the gateway: ${String(error)}`,
        url, cause: error, isRetryable: true,
      });
    }
    if (!response.ok) throw await errorFromResponse(response, url);
    return (await response.json()) as Connection;
  }
}
