// wattfare/client's session-token handling, in Node (it needs no DOM for this part).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Wattfare, WattfareError } from "wattfare/client";
import { Wattfare as ServerWattfare } from "wattfare/server";

const SECRET = "sk_test_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const PUBLISHABLE = "pk_test_A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg";
const server = new ServerWattfare({ secretKey: SECRET, baseURL: "http://127.0.0.1:1" });

function client(ttlSeconds: number): { wattfare: Wattfare; calls: () => number } {
  let calls = 0;
  const wattfare = new Wattfare({
    publishableKey: PUBLISHABLE,
    baseURL: "http://127.0.0.1:1",
    session: async () => { calls++; return (await server.createSession("u", { ttlSeconds })).token; },
  });
  return { wattfare, calls: () => calls };
}

test("a session token is reused until a minute before it expires", async () => {
  const { wattfare, calls } = client(600);
  const [a, b] = await Promise.all([wattfare.token(), wattfare.token()]);
  assert.equal(await wattfare.token(), a);
  assert.equal(a, b);
  assert.equal(calls(), 1);
  wattfare.clearSession();
  await wattfare.token();
  assert.equal(calls(), 2);
});

test("a token with less than a minute left is not reused", async () => {
  const { wattfare, calls } = client(30);
  await wattfare.token();
  await wattfare.token();
  assert.equal(calls(), 2);
});

test("a token minted for another app is an invalid_session, explained", async () => {
  const wattfare = new Wattfare({
    publishableKey: "pk_test_" + "B".repeat(43),
    baseURL: "http://127.0.0.1:1",
    session: async () => (await server.createSession("u")).token,
  });
  await assert.rejects(wattfare.token(), (error: unknown) =>
    error instanceof WattfareError && error.code === "invalid_session" && /publishable key/.test(error.message));
});

test("a bundled client needs the gateway's URL", () => {
  assert.throws(() => new Wattfare({ publishableKey: PUBLISHABLE, session: () => "x" }), /baseURL/);
});
