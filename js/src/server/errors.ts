// The errors of wattfare/server. Every failure the gateway reports reaches the app as a
// WattfareError carrying the API's stable `code`. It is an AI SDK APICallError, so
// generateText / streamText treat it as their own (retrying 429 and 5xx answers), and an
// app can branch on `error.code` or on `isNotConnected(error)`.
//
//   Error
//   └── AISDKError (ai)
//       └── APICallError (ai)
//           └── WattfareError          code: WattfareErrorCode, status, type, param

import { APICallError } from "@ai-sdk/provider";

/** The gateway's error codes (docs/API.md), plus `network_error` for a gateway that
 *  could not be reached and `api_error` for an answer that carried no code. */
export type WattfareErrorCode =
  | "invalid_api_key"
  | "invalid_session"
  | "session_expired"
  | "not_connected"
  | "connection_revoked"
  | "spend_cap_reached"
  | "invalid_request"
  | "request_too_large"
  | "model_not_found"
  | "rate_limited"
  | "upstream_error"
  | "upstream_timeout"
  | "origin_not_allowed"
  | "not_found"
  | "method_not_allowed"
  | "internal_error"
  | "network_error"
  | "api_error"
  // A code this version does not know yet (the API may add codes): kept as sent.
  | (string & {});

const STATUS_OF: Partial<Record<WattfareErrorCode, number>> = {
  invalid_api_key: 401,
  invalid_session: 401,
  session_expired: 401,
  not_connected: 403,
  connection_revoked: 403,
  spend_cap_reached: 402,
  invalid_request: 400,
  request_too_large: 413,
  model_not_found: 404,
  rate_limited: 429,
  upstream_error: 502,
  upstream_timeout: 504,
  origin_not_allowed: 403,
};

export interface WattfareErrorInit {
  code: WattfareErrorCode;
  message: string;
  url: string;
  status?: number | undefined;
  type?: string | null | undefined;
  param?: string | null | undefined;
  responseHeaders?: Record<string, string> | undefined;
  responseBody?: string | undefined;
  requestBodyValues?: unknown;
  cause?: unknown;
  isRetryable?: boolean | undefined;
}

export class WattfareError extends APICallError {
  /** The API's machine code, e.g. "spend_cap_reached". */
  readonly code: WattfareErrorCode;
  /** The HTTP status the code goes with (a mid-stream error has no response status of
   *  its own: it is the code's status from the API's table). */
  readonly status: number | undefined;
  readonly type: string | null;
  readonly param: string | null;

  constructor(init: WattfareErrorInit) {
    const status = init.status ?? STATUS_OF[init.code];
    super({
      message: init.message,
      url: init.url,
      requestBodyValues: init.requestBodyValues,
      statusCode: status,
      responseHeaders: init.responseHeaders,
      responseBody: init.responseBody,
      cause: init.cause,
      isRetryable: init.isRetryable ?? (status === 429 || (status !== undefined && status >= 500)),
    });
    this.name = "WattfareError";
    this.code = init.code;
    this.status = status;
    this.type = init.type ?? null;
    this.param = init.param ?? null;
  }

  /** True when the user has no usable connection to the app (never connected, or
   *  revoked): a normal state that asks the user to connect, not a failure. */
  get notConnected(): boolean {
    return this.code === "not_connected" || this.code === "connection_revoked";
  }

  static isWattfareError(error: unknown): error is WattfareError {
    return error instanceof WattfareError;
  }
}

/** True for a WattfareError that means "ask the user to connect an AI budget". It looks
 *  through the AI SDK's RetryError (`lastError`) and a `cause` too. */
export function isNotConnected(error: unknown): boolean {
  const found = findWattfareError(error);
  return found !== undefined && found.notConnected;
}

/** The WattfareError inside `error` (itself, a RetryError's last error, or a cause). */
export function findWattfareError(error: unknown): WattfareError | undefined {
  for (let depth = 0; depth < 4 && error != null; depth++) {
    if (error instanceof WattfareError) return error;
    if (typeof error !== "object") return undefined;
    const record = error as { lastError?: unknown; cause?: unknown };
    error = record.lastError ?? record.cause;
  }
  return undefined;
}

/** The `{"error": {...}}` object of an API body, if it is one. */
export function apiErrorOf(body: unknown): {
  code: WattfareErrorCode; message: string; type: string | null; param: string | null;
} | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const inner = (body as { error?: unknown }).error ?? body;
  if (typeof inner !== "object" || inner === null) return undefined;
  const fields = inner as { code?: unknown; message?: unknown; type?: unknown; param?: unknown };
  if (typeof fields.message !== "string" && typeof fields.code !== "string") return undefined;
  const code: WattfareErrorCode =
    typeof fields.code === "string" && fields.code !== "" ? fields.code : "api_error";
  return {
    code,
    message: typeof fields.message === "string" ? fields.message : `Wattfare error ${code}`,
    type: typeof fields.type === "string" ? fields.type : null,
    param: typeof fields.param === "string" ? fields.param : null,
  };
}

/** A WattfareError from a gateway response that was not ok. */
export async function errorFromResponse(
  response: Response, url: string, requestBodyValues?: unknown,
): Promise<WattfareError> {
  const text = await response.text().catch(() => "");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const found = apiErrorOf(parsed);
  return new WattfareError({
    code: found?.code ?? "api_error",
    message: found?.message ?? `The gateway answered HTTP ${response.status}`,
    type: found?.type,
    param: found?.param,
    url,
    status: response.status,
    responseHeaders: Object.fromEntries(response.headers.entries()),
    responseBody: text,
    requestBodyValues,
  });
}
