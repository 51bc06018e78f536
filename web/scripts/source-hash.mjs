// Records (--write) or checks (--check) the hash of the client's sources in
// dist/SOURCES.sha256, so that a stale build is caught: web_test.go computes
// the same hash in Go. The hash covers every file under src/ and the build
// inputs listed below: SHA-256 over the lines "path\0sha256(content)\n",
// sorted by path.
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(import.meta.url), '..', '..');
const inputs = ['index.html', 'package.json', 'package-lock.json', 'tsconfig.json', 'vite.config.ts', 'src'];

function walk(p, out) {
  if (statSync(p).isDirectory()) for (const n of readdirSync(p)) walk(join(p, n), out);
  else out.push(relative(root, p).split('\\').join('/'));
}

export function sourceHash() {
  const files = [];
  for (const i of inputs) walk(join(root, i), files);
  files.sort();
  const h = createHash('sha256');
  for (const f of files) {
    const c = createHash('sha256').update(readFileSync(join(root, f))).digest('hex');
    h.update(`${f}\0${c}\n`);
  }
  return h.digest('hex');
}

const out = join(root, 'dist', 'SOURCES.sha256');
const sum = sourceHash();
if (process.argv.includes('--write')) {
  writeFileSync(out, sum + '\n');
  console.log(`dist/SOURCES.sha256 ${sum}`);
} else {
  const have = readFileSync(out, 'utf8').trim();
  if (have !== sum) {
    console.error(`web/dist is stale: built from ${have}, sources are ${sum}; run "make web"`);
    process.exit(1);
  }
  console.log('web/dist matches the sources');
}
