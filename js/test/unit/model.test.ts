// The model's token handling and error mapping, against a fetch that plays the gateway.
import assert from "node:assert/strict";
import { test } from "node:test";

import { generateText, streamText } from "ai";
import { Wattfare, WattfareError, findWattfareError, isNotConnected } from "wattfare/server";

const SECRET = "sk_test_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

type Handler = (request: Request) => Response | Promise<Response>;

function gateway(handler: Handler): { wf: Wattfare; requests: Request[] } {
  const requests: Request[] = [];
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const request = new Request(input, init);
    requests.push(request.clone());
    return handler(request);
  };
  return { wf: new Wattfare({ secretKey: SECRET, baseURL: "http://gateway.test/", fetch }), requests };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function apiError(code: string, message = code): unknown {
  return { error: { message, type: "invalid_request_error", code, param: null } };
}

function sse(events: unknown[]): Response {
  const text = events.map((e) => `data: ${typeof e === "string" ? e : JSON.stringify(e)}\n\n`).join("");
  return new Response(text, { status: 200, headers: { "content-type": "text/event-stream" } });
}

const chunk = (content: string, finish: string | null = null) => ({
  id: "gen-1", object: "chat.completion.chunk", created: 1, model: "m",
  choices: [{ index: 0, delta: { content }, finish_reason: finish }],
});
const usageChunk = (cost: number) => ({
  id: "gen-1", object: "chat.completion.chunk", created: 1, model: "m", choices: [],
  usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6, cost },
});

function claimsOf(request: Request): Record<string, unknown> {
  const token = (request.headers.get("authorization") ?? "").replace(/^Bearer /, "");
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as Record<string, unknown>;
}

test("requests carry a session token for the user, with the requested cap, to /v1/chat/completions", async () => {
  const { wf, requests } = gateway(() => sse([chunk("a"), chunk("b", "stop"), usageChunk(0.5), "[DONE]"]));
  const result = streamText({ model: wf.user("u-1", { requestLimit: { monthlyUsd: 7 } }).model("openai/gpt-4o-mini"), prompt: "hi" });
  assert.equal(await result.text, "ab");
  assert.equal((await result.providerMetadata)?.wattfare?.costUsd, 0.5);
  const [request] = requests;
  assert.ok(request);
  assert.equal(request.url, "http://gateway.test/v1/chat/completions");
  const body = (await request.json()) as { model: string; stream: boolean; stream_options?: unknown };
  assert.equal(body.model, "openai/gpt-4o-mini");
  assert.deepEqual(body.stream_options, { include_usage: true });
  const claims = claimsOf(request);
  assert.equal(claims.sub, "u-1");
  assert.deepEqual(claims.lim, { monthly_usd: 7 });
});

test("one token serves many requests until it is due for renewal", async () => {
  const { wf, requests } = gateway(() => json(200, { object: "connection", status: "connected" }));
  const user = wf.user("u-2");
  await user.connection();
  await user.connection();
  const [first, second] = requests.map((r) => r.headers.get("authorization"));
  assert.equal(first, second);
});

test("a token within a minute of its expiry is renewed before the next request", async () => {
  const { wf } = gateway(() => json(200, {}));
  const user = wf.user("u-3");
  let now = Date.now();
  const tokens = new (Object.getPrototypeOf(user.tokens).constructor as new (
    mint: () => Promise<{ token: string; expires_at: number; user_id: string }>, clock: () => number,
  ) => { token(): Promise<string> })(
    async () => ({ token: `t${Math.floor(now / 1000)}`, expires_at: Math.floor(now / 1000) + 600, user_id: "u-3" }),
    () => now,
  );
  const first = await tokens.token();
  now += 530_000; // 70 s left: still good
  assert.equal(await tokens.token(), first);
  now += 20_000; // 50 s left: renewed
  assert.notEqual(await tokens.token(), first);
});

test("a session_expired answer is retried once with a new token", async () => {
  let calls = 0;
  const { wf, requests } = gateway(() => (++calls === 1 ? json(401, apiError("session_expired")) : json(200, { status: "connected" })));
  const connection = await wf.user("u-4").connection();
  assert.equal(connection.status, "connected");
  assert.equal(requests.length, 2);
  assert.notEqual(requests[0]?.headers.get("authorization"), requests[1]?.headers.get("authorization"));
});

for (const [status, code] of [
  [402, "spend_cap_reached"], [403, "not_connected"], [403, "connection_revoked"], [404, "model_not_found"],
] as const) {
  test(`a ${status} ${code} before the stream is a WattfareError with that code`, async () => {
    const { wf } = gateway(() => json(status, apiError(code, `because ${code}`)));
    await assert.rejects(generateText({ model: wf.user("u").model("m"), prompt: "hi", maxRetries: 0 }), (error: unknown) => {
      assert.ok(error instanceof WattfareError);
      assert.equal(error.code, code);
      assert.equal(error.status, status);
      assert.equal(error.message, `because ${code}`);
      assert.equal(error.isRetryable, false);
      assert.equal(isNotConnected(error), code === "not_connected" || code === "connection_revoked");
      return true;
    });
  });
}

test("429 and 5xx answers stay retryable, as the AI SDK expects", async () => {
  let calls = 0;
  const { wf } = gateway(() => (++calls < 2 ? json(502, apiError("upstream_error")) : json(200, {
    id: "g", object: "chat.completion", created: 1, model: "m",
    choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, cost: 0.25 },
  })));
  const result = await generateText({ model: wf.user("u").model("m"), prompt: "hi", maxRetries: 1 });
  assert.equal(result.text, "ok");
  assert.equal(result.providerMetadata?.wattfare?.costUsd, 0.25);
  assert.equal(calls, 2);
});

test("an error event mid-stream is a WattfareError, and the usage after it is kept", async () => {
  const { wf } = gateway(() => sse([
    chunk("a"), { error: { code: "connection_revoked", message: "revoked", type: "permission_error" } },
    usageChunk(0.1), "[DONE]",
  ]));
  const errors: unknown[] = [];
  const result = streamText({ model: wf.user("u").model("m"), prompt: "hi", onError: ({ error }) => { errors.push(error); } });
  let text = "";
  for await (const part of result.textStream) text += part;
  assert.equal(text, "a");
  const error = findWattfareError(errors[0]);
  assert.equal(error?.code, "connection_revoked");
  assert.equal(error?.status, 403);
  assert.ok(isNotConnected(errors[0]));
  assert.equal((await result.usage).outputTokens, 2);
});

test("a gateway that cannot be reached is a network_error", async () => {
  const { wf } = gateway(() => { throw new TypeError("fetch failed"); });
  await assert.rejects(wf.user("u").connection(), (error: unknown) => error instanceof WattfareError && error.code === "network_error");
});

test("user() refuses a user id the gateway would refuse", () => {
  const { wf } = gateway(() => json(200, {}));
  assert.throws(() => wf.user(""), TypeError);
});
