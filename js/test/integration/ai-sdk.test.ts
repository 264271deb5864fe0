// wattfare/server with the real `ai` package against a live gateway and the simulated
// upstream: streaming, usage and its cost, a cap reached mid-stream, a revoked
// connection, and a live-mode user who never connected.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { generateText, streamText } from "ai";
import { Wattfare, WattfareError, findWattfareError, isNotConnected } from "wattfare/server";

import { type Stack, startStack } from "./stack.js";

const MODEL = "openai/gpt-4o-mini";
let stack: Stack;
let wf: Wattfare;
let live: Wattfare;
let n = 0;
const newUser = (): string => `js-user-${process.pid}-${++n}`;

before(async () => {
  stack = await startStack({ chunks: 40 });
  wf = new Wattfare({ secretKey: stack.test.secret_key, baseURL: stack.gateway });
  live = new Wattfare({ secretKey: stack.live.secret_key, baseURL: stack.gateway });
});
after(async () => {
  await stack?.stop();
});

describe("a user's AI SDK model", () => {
  test("streams a reply with streamText, with usage and its cost", async () => {
    const user = wf.user(newUser(), { requestLimit: { monthlyUsd: 5 } });
    const result = streamText({ model: user.model(MODEL), prompt: "hi", maxRetries: 0 });
    const parts: string[] = [];
    for await (const text of result.textStream) parts.push(text);
    assert.ok(parts.length >= 20, `streamed in ${parts.length} parts`);
    assert.equal(parts.join(""), "tok ".repeat(40));
    const usage = await result.usage;
    assert.ok((usage.inputTokens ?? 0) > 0 && usage.outputTokens === 40, JSON.stringify(usage));
    const cost = (await result.providerMetadata)?.wattfare?.costUsd;
    assert.equal(typeof cost, "number");
    assert.ok((cost as number) > 0);
    const connection = await user.connection();
    assert.equal(connection.status, "connected");
    assert.equal(connection.monthly_cap_usd, 5);
    assert.ok(Math.abs(connection.spent_usd - (cost as number)) < 1e-9, JSON.stringify(connection));
  });

  test("answers generateText, and mints its token itself", async () => {
    const user = wf.user(newUser(), { requestLimit: { monthlyUsd: 5 } });
    const { text, usage, providerMetadata } = await generateText({ model: user.model(MODEL), prompt: "hello", maxRetries: 0 });
    assert.equal(text, "tok ".repeat(40));
    assert.equal(usage.outputTokens, 40);
    assert.ok(Number(providerMetadata?.wattfare?.costUsd) > 0);
  });

  test("a cap reached mid-stream ends the stream with a typed error, and usage is still read", async () => {
    // $0.00002: the prompt's bound and six "tok " chunks fit (tests/e2e/test_e2e_caps.py).
    const user = wf.user(newUser(), { requestLimit: { monthlyUsd: 0.00002 } });
    const errors: unknown[] = [];
    const result = streamText({
      model: user.model(MODEL), prompt: "hi", maxRetries: 0,
      onError: ({ error }) => { errors.push(error); },
    });
    let text = "";
    for await (const part of result.textStream) text += part;
    assert.equal(text, "tok ".repeat(6));
    assert.equal(errors.length, 1);
    const error = findWattfareError(errors[0]);
    assert.ok(error instanceof WattfareError, String(errors[0]));
    assert.equal(error.code, "spend_cap_reached");
    assert.equal(error.status, 402);
    assert.equal(isNotConnected(error), false);
    // The usage chunk after the error says what was charged for.
    const usage = await result.usage;
    assert.ok((usage.outputTokens ?? 0) >= 6, JSON.stringify(usage));
    const cost = Number((await result.providerMetadata)?.wattfare?.costUsd);
    assert.ok(cost > 0 && cost <= 0.00002, String(cost));

    // Nothing left for another request: refused before the upstream, with the same code.
    await assert.rejects(
      generateText({ model: user.model(MODEL), prompt: "more", maxRetries: 0 }),
      (thrown: unknown) => findWattfareError(thrown)?.code === "spend_cap_reached",
    );
  });

  test("a revoked connection is a typed not-connected state", async () => {
    const user = wf.user(newUser(), { requestLimit: { monthlyUsd: 5 } });
    await generateText({ model: user.model(MODEL), prompt: "hi", maxRetries: 0 });
    const revoked = await user.disconnect();
    assert.equal(revoked.status, "revoked");
    assert.equal((await user.connection()).status, "revoked");
    await assert.rejects(
      generateText({ model: user.model(MODEL), prompt: "hi", maxRetries: 0 }),
      (thrown: unknown) => {
        const error = findWattfareError(thrown);
        return error?.code === "connection_revoked" && error.status === 403 && isNotConnected(thrown);
      },
    );
    // The stream's own error part carries the same typed error.
    const errors: unknown[] = [];
    const result = streamText({ model: user.model(MODEL), prompt: "hi", maxRetries: 0, onError: ({ error }) => { errors.push(error); } });
    let streamed = "";
    for await (const part of result.textStream) streamed += part;
    assert.equal(streamed, "");
    assert.ok(isNotConnected(errors[0]), String(errors[0]));
  });

  test("a revocation in the middle of a stream ends it with a typed error", async () => {
    const user = wf.user(newUser(), { requestLimit: { monthlyUsd: 5 } });
    const errors: unknown[] = [];
    const result = streamText({
      model: user.model(MODEL), prompt: "hi", maxRetries: 0,
      // The simulated upstream's knobs: a slow, long reply (at most 4 s).
      providerOptions: { wattfare: { fake: { chunks: 200, gap_ms: 20 } } },
      onError: ({ error }) => { errors.push(error); },
    });
    let parts = 0;
    for await (const _ of result.textStream) {
      if (++parts === 3) await user.disconnect();
    }
    assert.ok(parts >= 3 && parts < 200, `${parts} parts`);
    const error = findWattfareError(errors[0]);
    assert.equal(error?.code, "connection_revoked");
    assert.ok(isNotConnected(error));
    assert.ok(Number((await result.providerMetadata)?.wattfare?.costUsd) > 0);
  });

  test("a live-mode user who never connected: not_connected, and a status that says so", async () => {
    const user = live.user(newUser());
    assert.equal((await user.connection()).status, "not_connected");
    await assert.rejects(
      generateText({ model: user.model(MODEL), prompt: "hi", maxRetries: 0 }),
      (thrown: unknown) => findWattfareError(thrown)?.code === "not_connected" && isNotConnected(thrown),
    );
    await assert.rejects(user.disconnect(), (thrown: unknown) => thrown instanceof WattfareError && thrown.code === "not_connected");
  });

  test("createSession gives what POST /v1/sessions gives, and the gateway accepts it", async () => {
    const userId = newUser();
    const local = await wf.createSession(userId, { requestLimit: { monthlyUsd: 3 } });
    const response = await fetch(`${stack.gateway}/v1/sessions`, {
      method: "POST",
      headers: { authorization: `Bearer ${stack.test.secret_key}`, "content-type": "application/json" },
      body: JSON.stringify({ user_id: userId, request_limit: { monthly_usd: 3 } }),
    });
    const remote = (await response.json()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(local).sort(), Object.keys(remote).sort());
    assert.equal(local.user_id, remote.user_id);
    assert.ok(Math.abs(local.expires_at - Number(remote.expires_at)) <= 2);
    assert.equal(await wf.publishableKey(), stack.test.publishable_key);
    const status = await fetch(`${stack.gateway}/v1/connection`, { headers: { authorization: `Bearer ${local.token}` } });
    assert.equal(status.status, 200);
  });

  test("an unknown model is a typed model_not_found", async () => {
    const user = wf.user(newUser(), { requestLimit: { monthlyUsd: 5 } });
    await assert.rejects(
      generateText({ model: user.model("nobody/no-such-model"), prompt: "hi", maxRetries: 0 }),
      (thrown: unknown) => findWattfareError(thrown)?.code === "model_not_found",
    );
  });
});
