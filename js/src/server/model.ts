// The AI SDK language model of one app user: `@ai-sdk/openai-compatible`'s chat model
// pointed at the gateway, with
// - a fetch that sends a session token for that user, renewed before it expires;
// - every gateway error, before or during a stream, turned into a WattfareError that
//   carries the API's code (so an app can branch on "not connected" or "cap reached");
// - the charge (`usage.cost`, USD) in `providerMetadata.wattfare.costUsd`.

import { createOpenAICompatible, type MetadataExtractor } from "@ai-sdk/openai-compatible";
import {
  APICallError,
  type LanguageModelV3,
  type LanguageModelV3CallOptions,
  type LanguageModelV3StreamPart,
  type SharedV3ProviderMetadata,
} from "@ai-sdk/provider";

import { WattfareError, apiErrorOf } from "./errors.js";
import type { Session } from "./session.js";

/** Renew a token this long before its `exp`. */
export const RENEW_BEFORE_S = 60;
export const PROVIDER = "wattfare";

type Fetch = typeof globalThis.fetch;

/** Holds one user's current session token and mints the next one when it is due. */
export class TokenSource {
  private current: Session | undefined;
  private pending: Promise<Session> | undefined;

  constructor(private readonly mint: () => Promise<Session>, private readonly now: () => number = Date.now) {}

  async token(options: { fresh?: boolean } = {}): Promise<string> {
    const held = this.current;
    if (!options.fresh && held !== undefined && held.expires_at - this.now() / 1000 > RENEW_BEFORE_S) {
      return held.token;
    }
    // Concurrent callers share one mint.
    this.pending ??= this.mint().then(
      (session) => { this.current = session; this.pending = undefined; return session; },
      (error: unknown) => { this.pending = undefined; throw error; },
    );
    return (await this.pending).token;
  }
}

/** A fetch that authenticates as the user, retrying once with a new token when the
 *  gateway says the one it had has expired (a clock that runs behind the gateway's). */
export function userFetch(tokens: TokenSource, base: Fetch): Fetch {
  return async (input, init) => {
    const send = async (fresh: boolean): Promise<Response> => {
      const headers = new Headers(init?.headers);
      headers.set("authorization", `Bearer ${await tokens.token({ fresh })}`);
      return base(input, { ...init, headers });
    };
    const response = await send(false);
    if (response.status === 401) {
      const body = apiErrorOf(await response.clone().json().catch(() => undefined));
      if (body?.code === "session_expired") return send(true);
    }
    return response;
  };
}

const costExtractor: MetadataExtractor = {
  async extractMetadata({ parsedBody }) {
    return costMetadata((parsedBody as { usage?: unknown } | null)?.usage);
  },
  createStreamExtractor() {
    let usage: unknown;
    return {
      processChunk(chunk) {
        const found = (chunk as { usage?: unknown } | null)?.usage;
        if (found != null) usage = found;
      },
      buildMetadata: () => costMetadata(usage),
    };
  },
};

function costMetadata(usage: unknown): SharedV3ProviderMetadata | undefined {
  const cost = (usage as { cost?: unknown } | null | undefined)?.cost;
  return typeof cost === "number" ? { [PROVIDER]: { costUsd: cost } } : undefined;
}

/** The gateway's error as a WattfareError; other errors as they are. */
function mapError(error: unknown, url: string): unknown {
  if (error instanceof WattfareError) return error;
  if (APICallError.isInstance(error)) {
    let body: unknown;
    try {
      body = error.responseBody === undefined ? undefined : JSON.parse(error.responseBody);
    } catch {
      body = undefined;
    }
    const found = apiErrorOf(body ?? error.data);
    if (found === undefined && error.statusCode === undefined) {
      return new WattfareError({
        code: "network_error", message: `Could not reach the gateway: ${error.message}`,
        url: error.url, cause: error, isRetryable: error.isRetryable,
      });
    }
    return new WattfareError({
      code: found?.code ?? "api_error",
      message: found?.message ?? error.message,
      type: found?.type, param: found?.param,
      url: error.url, status: error.statusCode,
      responseHeaders: error.responseHeaders, responseBody: error.responseBody,
      requestBodyValues: error.requestBodyValues, cause: error, isRetryable: error.isRetryable,
    });
  }
  // An error event inside the stream: {"code": …, "message": …} as the gateway sent it.
  const found = error instanceof Error ? undefined : apiErrorOf(error);
  if (found !== undefined) {
    return new WattfareError({ ...found, url, cause: error, isRetryable: false });
  }
  return error;
}

export interface ModelOptions {
  baseURL: string;
  modelId: string;
  tokens: TokenSource;
  fetch: Fetch;
}

/** `wf.user(id).model(modelId)`: an AI SDK LanguageModelV3 billed to that user. */
export function userModel(options: ModelOptions): LanguageModelV3 {
  const url = `${options.baseURL}/v1/chat/completions`;
  const inner = createOpenAICompatible({
    name: PROVIDER,
    baseURL: `${options.baseURL}/v1`,
    fetch: userFetch(options.tokens, options.fetch),
    includeUsage: true,
    metadataExtractor: costExtractor,
  }).chatModel(options.modelId);
  return {
    specificationVersion: "v3",
    provider: inner.provider,
    modelId: inner.modelId,
    supportedUrls: inner.supportedUrls,
    async doGenerate(call: LanguageModelV3CallOptions) {
      try {
        return await inner.doGenerate(call);
      } catch (error) {
        throw mapError(error, url);
      }
    },
    async doStream(call: LanguageModelV3CallOptions) {
      let result;
      try {
        result = await inner.doStream(call);
      } catch (error) {
        throw mapError(error, url);
      }
      const stream = result.stream.pipeThrough(
        new TransformStream<LanguageModelV3StreamPart, LanguageModelV3StreamPart>({
          transform(part, controller) {
            controller.enqueue(part.type === "error" ? { type: "error", error: mapError(part.error, url) } : part);
          },
        }),
      );
      return { ...result, stream };
    },
  };
}
