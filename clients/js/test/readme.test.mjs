// The examples in the READMEs (the repository's and this package's) run as written
// against a real gateway (one replica behind haproxy): only the import path and the URL
// are swapped for the test's.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { startCluster, waitFor } from "./harness.mjs";

const PKG = dirname(dirname(fileURLToPath(import.meta.url)));
const EXAMPLE_URL = "wss://chat.example.com/ws";

/** The first ```js block of `file` that makes a RoomcastClient. */
function example(file) {
  const text = readFileSync(file, "utf8");
  const block = [...text.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]).find((b) => b.includes("new RoomcastClient"));
  assert.ok(block !== undefined, `${file} has a js example`);
  assert.ok(block.includes(`"${EXAMPLE_URL}"`), `${file}'s example connects to ${EXAMPLE_URL}`);
  assert.ok(block.includes('from "roomcast-client"'), `${file}'s example imports roomcast-client`);
  return block;
}

describe("README examples", () => {
  let dir;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "roomcast-readme-"));
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const [what, file] of [
    ["the repository's README", resolve(PKG, "../../README.md")],
    ["the package's README", resolve(PKG, "README.md")],
  ]) {
    it(`${what}: the example joins, sends and prints its own message`, async () => {
      // A gateway of its own: the example asks for history, which must be empty.
      const cluster = await startCluster({ name: "readme", replicas: 1 });
      let child = null;
      try {
        const code = example(file)
          .replace('from "roomcast-client"', `from ${JSON.stringify(pathToFileURL(join(PKG, "dist/index.js")).href)}`)
          .replace(`"${EXAMPLE_URL}"`, JSON.stringify(cluster.lbUrl));
        const script = join(dir, `example-${what.length}.mjs`);
        writeFileSync(script, code);
        child = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (err += d));
        await waitFor(() => out.includes("alice: hello") || child.exitCode !== null, {
          timeout: 15_000,
          what: "the example's output",
        });
        assert.equal(out.trim(), "alice: hello", `stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(err)}`);
      } finally {
        child?.kill("SIGKILL");
        await cluster.stop();
      }
    });
  }
});
