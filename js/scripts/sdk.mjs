// The gateway serves wattfare/client's build at /sdk/wattfare.js. Its copy in
// gateway/consent/static/ is committed, so that the Python package (pip install, the
// demo) needs no Node.js; this script writes it from the build (`write`, run by
// `npm run sdk`) or says whether it is the build (`check`).
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const built = fileURLToPath(new URL("../dist/client/index.js", import.meta.url));
const served = fileURLToPath(new URL("../../gateway/consent/static/wattfare.js", import.meta.url));
const mode = process.argv[2];

if (mode === "write") {
  writeFileSync(served, readFileSync(built));
  console.log(`wrote ${served}`);
} else if (mode === "check") {
  if (!readFileSync(served).equals(readFileSync(built))) {
    console.error(`${served} is not the build of js/src/client/index.ts: run 'npm run sdk' in js/`);
    process.exit(1);
  }
} else {
  console.error("usage: node scripts/sdk.mjs write|check");
  process.exit(2);
}
