// Step 2 of 3, server side: one Wattfare for the app's backend. The secret key comes from
// the environment and never leaves the server (wattfare/server refuses to run in a browser).
import { Wattfare } from "wattfare/server";

let instance: Wattfare | undefined;

/** The app's Wattfare, made on first use (so `next build` needs no secrets). */
export function wattfare(): Wattfare {
  instance ??= new Wattfare({
    secretKey: required("WATTFARE_SECRET_KEY"),
    baseURL: gatewayURL(),
  });
  return instance;
}

/** The gateway, e.g. http://127.0.0.1:8787 (what `wattfare demo` and `wattfare serve` print). */
export function gatewayURL(): string {
  return required("WATTFARE_URL");
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`Set ${name} in the environment (see examples/nextjs/README.md)`);
  return value;
}
