// The chat page's copy of the library (src/web/roomcast-client, embedded in the gateway
// binary) is exactly what `tsc` builds from src/ with tsconfig.web.json: same files, same
// bytes. When this fails, run `npm run build:web` here and commit the result.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const pkg = dirname(dirname(fileURLToPath(import.meta.url)));
const committed = join(pkg, "..", "..", "src", "web", "roomcast-client");

test("the page's committed client build is what tsc produces from the sources", () => {
  const out = mkdtempSync(join(tmpdir(), "roomcast-web-build-"));
  try {
    const tsc = join(pkg, "node_modules", "typescript", "bin", "tsc");
    execFileSync(process.execPath, [tsc, "-p", join(pkg, "tsconfig.web.json"), "--outDir", out], { stdio: "pipe" });
    const built = readdirSync(out).sort();
    const have = readdirSync(committed).sort();
    assert.deepEqual(have, built, "src/web/roomcast-client holds other files than the build: run `npm run build:web`");
    for (const file of built) {
      const want = readFileSync(join(out, file), "utf8");
      const got = readFileSync(join(committed, file), "utf8");
      assert.ok(got === want, `src/web/roomcast-client/${file} differs from the build of src/: run \`npm run build:web\``);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
