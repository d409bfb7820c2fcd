// The package as an application gets it: what `npm pack` puts in it, no runtime
// dependencies, and declarations a TypeScript application compiles against
// (test/types/consumer.ts, including lines that must NOT compile).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const pkg = dirname(dirname(fileURLToPath(import.meta.url)));

test("npm pack ships the built module, its declarations, the sources and the README", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: pkg, encoding: "utf8" });
  const files = JSON.parse(out)[0].files.map((f) => f.path);
  for (const want of ["dist/index.js", "dist/index.d.ts", "dist/client.js", "dist/client.d.ts", "README.md", "package.json"]) {
    assert.ok(files.includes(want), `${want} in the package: ${files.join(", ")}`);
  }
  assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("node_modules/")), files.join(", "));
});

test("has no runtime dependencies", () => {
  const manifest = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8"));
  assert.deepEqual(Object.keys(manifest.dependencies ?? {}), []);
  assert.deepEqual(Object.keys(manifest.peerDependencies ?? {}), []);
  assert.equal(manifest.name, "roomcast-client");
  assert.equal(manifest.type, "module");
});

test("its declarations type-check a TypeScript application, and reject misuse", () => {
  const tsc = join(pkg, "node_modules", "typescript", "bin", "tsc");
  const args = [tsc, "--noEmit", "--strict", "--exactOptionalPropertyTypes", "--target", "ES2022", "--module", "NodeNext",
    "--moduleResolution", "NodeNext", "--lib", "ES2022,DOM", "--skipLibCheck", "false", join(pkg, "test", "types", "consumer.ts")];
  try {
    execFileSync(process.execPath, args, { encoding: "utf8", stdio: "pipe" });
  } catch (e) {
    assert.fail(`tsc refused test/types/consumer.ts:\n${e.stdout}${e.stderr}`);
  }
});
