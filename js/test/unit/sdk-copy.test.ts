// One source of truth: the gateway serves wattfare/client's build at /sdk/wattfare.js,
// from a committed copy (so that the Python package needs no Node.js). It must be
// byte for byte the build of js/src/client/index.ts.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

test("gateway/consent/static/wattfare.js is the fresh build of wattfare/client", () => {
  const built = readFileSync(new URL("../../../dist/client/index.js", import.meta.url));
  const served = readFileSync(new URL("../../../../gateway/consent/static/wattfare.js", import.meta.url));
  assert.ok(
    built.equals(served),
    "gateway/consent/static/wattfare.js differs from the build of js/src/client/index.ts: run 'npm run sdk' in js/",
  );
});

test("the build is one self-contained ES module (no imports)", () => {
  const built = readFileSync(new URL("../../../dist/client/index.js", import.meta.url), "utf8");
  assert.ok(!/^\s*import\s/m.test(built));
  assert.match(built, /^export class Wattfare /m);
});
