// Real processes for the integration tests: the simulated upstream and a gateway (the
// Python package, from the repository's .venv or $WATTFARE_PYTHON), on loopback, with
// a test-mode and a live-mode app. Every wait is bounded; every process is stopped by
// the PID it was started with.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../..", import.meta.url));
export const PYTHON = process.env.WATTFARE_PYTHON ?? join(ROOT, ".venv", "bin", "python");

export interface AppKeys { app_id: string; publishable_key: string; secret_key: string }

export interface Stack {
  gateway: string;
  upstream: string;
  test: AppKeys;
  live: AppKeys;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

async function waitHealthy(url: string, child: ChildProcess, log: string, seconds = 20): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not up yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  stopChild(child);
  throw new Error(`${url} did not come up:\n${readFileSync(log, "utf8")}`);
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.pid === undefined) return Promise.resolve();
  return new Promise((resolve) => {
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", () => { clearTimeout(killer); resolve(); });
    child.kill("SIGTERM");
  });
}

function createApp(config: string, name: string, live: boolean): AppKeys {
  const args = ["-m", "gateway.cli", "apps", "create", name, ...(live ? ["--live"] : []), "--config", config];
  return JSON.parse(execFileSync(PYTHON, args, { encoding: "utf8", timeout: 30_000 })) as AppKeys;
}

export async function startStack(options: { chunks?: number; gapMs?: number } = {}): Promise<Stack> {
  const dir = mkdtempSync(join(tmpdir(), "wattfare-js-"));
  const [upstreamPort, gatewayPort] = [await freePort(), await freePort()];
  const gateway = `http://127.0.0.1:${gatewayPort}`;
  const upstream = `http://127.0.0.1:${upstreamPort}`;
  const config = join(dir, "wattfare.toml");
  writeFileSync(config, [
    "[server]", `port = ${gatewayPort}`, `public_url = "${gateway}"`,
    "[upstream]", `base_url = "${upstream}/api/v1"`, 'api_key_env = "WATTFARE_JS_TEST_UPSTREAM_KEY"',
    "[store]", `path = "${join(dir, "wattfare.db")}"`, "",
  ].join("\n"));
  const children: ChildProcess[] = [];
  const start = async (args: string[], name: string, health: string): Promise<void> => {
    const log = join(dir, `${name}.log`);
    const out = openSync(log, "w");
    const child = spawn(PYTHON, args, {
      stdio: ["ignore", out, out],
      env: { ...process.env, WATTFARE_JS_TEST_UPSTREAM_KEY: "sk-or-test" },
    });
    children.push(child);
    await waitHealthy(health, child, log);
  };
  const stop = async (): Promise<void> => {
    await Promise.all(children.reverse().map(stopChild));
  };
  try {
    const test = createApp(config, "JS test app", false);
    const live = createApp(config, "JS live app", true);
    await start(
      ["-m", "gateway.cli", "fake-upstream", "--port", String(upstreamPort),
        "--chunks", String(options.chunks ?? 40), "--gap-ms", String(options.gapMs ?? 2)],
      "upstream", `${upstream}/healthz`,
    );
    await start(["-m", "gateway.cli", "serve", "--config", config], "gateway", `${gateway}/healthz`);
    return { gateway, upstream, test, live, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
