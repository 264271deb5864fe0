import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Wattfare, validUserId } from "wattfare/server";

// A fixed seed (bytes 0..31) and the publishable key the gateway's Python derives from it.
const SECRET = "sk_test_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const PUBLISHABLE = "pk_test_A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg";
const wf = new Wattfare({ secretKey: SECRET, baseURL: "http://127.0.0.1:1" });

function decode(part: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as Record<string, unknown>;
}

test("the publishable key is the secret key's public half, as the gateway derives it", async () => {
  assert.equal(await wf.publishableKey(), PUBLISHABLE);
});

test("createSession mints an EdDSA JWT the public key verifies, with the API's claims", async () => {
  const before = Math.floor(Date.now() / 1000);
  const session = await wf.createSession("user-42", { requestLimit: { monthlyUsd: 10 } });
  assert.deepEqual(Object.keys(session).sort(), ["expires_at", "token", "user_id"]);
  const [head, body, signature] = session.token.split(".") as [string, string, string];
  assert.deepEqual(decode(head), { alg: "EdDSA", typ: "JWT", kid: PUBLISHABLE });
  const claims = decode(body);
  assert.equal(claims.iss, PUBLISHABLE);
  assert.equal(claims.sub, "user-42");
  assert.equal(claims.aud, "wattfare");
  assert.deepEqual(claims.lim, { monthly_usd: 10 });
  assert.equal(typeof claims.jti, "string");
  assert.ok(Number(claims.iat) >= before && Number(claims.exp) - Number(claims.iat) === 600);
  assert.equal(session.expires_at, claims.exp);
  assert.equal(session.user_id, "user-42");
  const publicKey = await crypto.subtle.importKey(
    "raw", Buffer.from(PUBLISHABLE.slice(8), "base64url"), { name: "Ed25519" }, false, ["verify"],
  );
  const ok = await crypto.subtle.verify(
    { name: "Ed25519" }, publicKey, Buffer.from(signature, "base64url"), new TextEncoder().encode(`${head}.${body}`),
  );
  assert.ok(ok);
});

test("a session without a request limit has no lim claim", async () => {
  const { token } = await wf.createSession("u");
  assert.equal(decode(token.split(".")[1] ?? "").lim, undefined);
});

for (const [name, call] of [
  ["an empty user id", () => wf.createSession("")],
  ["a user id with a control character", () => wf.createSession("a\nb")],
  ["a user id of 257 characters", () => wf.createSession("x".repeat(257))],
  ["a negative cap", () => wf.createSession("u", { requestLimit: { monthlyUsd: -1 } })],
  ["a cap that is not a number", () => wf.createSession("u", { requestLimit: { monthlyUsd: Number.NaN } })],
  ["a lifetime over 600 s", () => wf.createSession("u", { ttlSeconds: 601 })],
] as const) {
  test(`createSession refuses ${name}`, async () => {
    await assert.rejects(call(), (error: unknown) => error instanceof TypeError || error instanceof RangeError);
  });
}

test("user ids follow the gateway's rule (1-256 printable characters)", () => {
  assert.ok(validUserId("alice@example.com"));
  assert.ok(validUserId("名前 with spaces"));
  assert.ok(validUserId("😀".repeat(256)));
  assert.ok(!validUserId("tab\there"));
  assert.ok(!validUserId("nbsp\u00a0here"));
  assert.ok(!validUserId("zero\u200bwidth"));
  assert.ok(!validUserId(42));
});

test("a malformed secret key is refused at once", () => {
  assert.throws(() => new Wattfare({ secretKey: "pk_test_abc", baseURL: "http://x" }), TypeError);
  assert.throws(() => new Wattfare({ secretKey: SECRET, baseURL: "gateway.example" }), TypeError);
});

test("a secret key of the right prefix but a bad seed fails at its first use", async () => {
  const bad = new Wattfare({ secretKey: "sk_test_" + "!".repeat(43), baseURL: "http://x" });
  await assert.rejects(bad.createSession("u"), TypeError);
});

test("it refuses to run in a browser", () => {
  const scope = globalThis as Record<string, unknown>;
  scope.window = {};
  scope.document = {};
  try {
    assert.throws(() => new Wattfare({ secretKey: SECRET, baseURL: "http://x" }), /must not run in a browser/);
  } finally {
    delete scope.window;
    delete scope.document;
  }
});

test("a browser bundle's wattfare/server is a module that throws on import", async () => {
  const manifest = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as {
    exports: Record<string, Record<string, string>>;
  };
  const browser = manifest.exports["./server"]?.browser;
  assert.equal(browser, "./dist/server/browser.js");
  await assert.rejects(import(new URL(`../../../${browser}`, import.meta.url).href), /must not be imported in a browser bundle/);
});
