// Test harness of the end-to-end tests: builds and runs the real Warbler
// server on loopback ports with a temporary data directory, talks to its
// HTTP API, and drives Debian's Chromium through playwright-core and
// Debian's Firefox ESR through puppeteer-core (WebDriver BiDi).

import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

export const webDir = join(fileURLToPath(import.meta.url), '..', '..');
export const repoDir = join(webDir, '..');
export const resultsDir = join(webDir, 'test-results');

/** buildServer builds cmd/warbler once (or uses $WARBLER_BIN). */
export function buildServer(dir) {
  if (process.env.WARBLER_BIN) return process.env.WARBLER_BIN;
  const bin = join(dir, 'warbler');
  execFileSync('go', ['build', '-o', bin, './cmd/warbler'], { cwd: repoDir, stdio: 'inherit' });
  return bin;
}

/** freePort asks the kernel for a free loopback port. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** waitFor polls f until it returns a truthy value or the deadline passes. */
export async function waitFor(what, f, timeout = 30_000) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Server is one "warbler serve" process with its data in a temporary
 * directory. start() and kill() may be called again on the same data and
 * port, which is how the tests cut every connection and bring it back.
 */
export class Server {
  constructor(bin, root, port) {
    this.bin = bin;
    this.data = join(root, 'data');
    this.conf = join(root, 'warbler.yaml');
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.logs = [];
    writeFileSync(this.conf, 'log:\n  level: info\n');
  }

  async start() {
    const lines = [];
    this.logs = lines;
    const p = spawn(
      this.bin,
      ['serve', '--config', this.conf, '--data', this.data, '--mqtt', '127.0.0.1:0', '--ws', '', '--http', `127.0.0.1:${this.port}`, '--log-format', 'json'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.proc = p;
    this.exited = new Promise((resolve) => p.once('exit', (code, sig) => resolve({ code, sig })));
    let buf = '';
    const onData = (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    let gone = false;
    this.exited.then(() => (gone = true));
    await waitFor('the server to listen', () => {
      if (gone) throw new Error(`warbler exited before listening:\n${lines.join('\n')}`);
      return lines.some((l) => l.includes('warbler listening'));
    });
    this.key = readFileSync(join(this.data, 'admin.key'), 'utf8').trim();
  }

  /** kill ends the server with SIGKILL (no goodbye to any client). */
  async kill() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(t);
  }

  /** api calls the HTTP API with the admin key (or the given bearer). */
  async api(method, path, body, bearer = this.key) {
    const res = await fetch(this.url + path, {
      method,
      headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : undefined;
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return data;
  }

  createUser(id, password) {
    return this.api('POST', '/v1/apps/demo/users', { id, password });
  }

  async login(username, password, extra = {}) {
    const res = await fetch(`${this.url}/v1/apps/demo/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password, ...extra }),
    });
    if (!res.ok) throw new Error(`login ${username}: ${res.status} ${await res.text()}`);
    return res.json();
  }
}

/** totp computes the RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret at time t. */
export function totp(secret, t = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of secret.replace(/=+$/, '').toUpperCase()) bits += alphabet.indexOf(ch).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(t / 1000 / 30)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = (h.readUInt32BE(o) & 0x7fffffff) % 1_000_000;
  return String(n).padStart(6, '0');
}

/** launchBrowser starts headless Chromium from the Debian package. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * launchFirefox starts headless Firefox ESR from the Debian package
 * (firefox-esr, 128 or later, which speaks WebDriver BiDi) with a fresh
 * temporary profile. The preferences stop its background traffic: updates,
 * telemetry, safe browsing, captive-portal and connectivity checks, remote
 * settings. Nothing is downloaded: set PUPPETEER_SKIP_DOWNLOAD=1 when
 * installing the packages.
 */
export function launchFirefox() {
  return puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr',
    headless: true,
    extraPrefsFirefox: {
      'app.update.enabled': false,
      'app.update.auto': false,
      'app.normandy.enabled': false,
      'browser.safebrowsing.malware.enabled': false,
      'browser.safebrowsing.phishing.enabled': false,
      'browser.safebrowsing.downloads.enabled': false,
      'browser.safebrowsing.blockedURIs.enabled': false,
      'browser.search.update': false,
      'browser.shell.checkDefaultBrowser': false,
      'browser.startup.homepage_override.mstone': 'ignore',
      'datareporting.healthreport.uploadEnabled': false,
      'datareporting.policy.dataSubmissionEnabled': false,
      'toolkit.telemetry.enabled': false,
      'toolkit.telemetry.unified': false,
      'extensions.update.enabled': false,
      'extensions.getAddons.cache.enabled': false,
      'network.captive-portal-service.enabled': false,
      'network.connectivity-service.enabled': false,
      'network.dns.disablePrefetch': true,
      'network.prefetch-next': false,
      'services.settings.server': 'data:,',
      'browser.newtabpage.enabled': false,
    },
  });
}

/** tempRoot makes a temporary directory removed by the returned function. */
export function tempRoot() {
  const dir = mkdtempSync(join(tmpdir(), 'warbler-e2e-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

let shot = 0;
/** screenshot saves a numbered PNG of page under web/test-results/. */
export async function screenshot(page, name, opts = {}) {
  mkdirSync(resultsDir, { recursive: true });
  const file = join(resultsDir, `${String(++shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, ...opts });
  return file;
}

/** png encodes a w×h RGB test picture (a colour gradient) as a PNG file. */
export function png(w, h) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w * 3 + 1);
    for (let x = 0; x < w; x++) {
      raw[row + 1 + x * 3] = Math.round((255 * x) / w);
      raw[row + 2 + x * 3] = Math.round((255 * y) / h);
      raw[row + 3 + x * 3] = 200;
    }
  }
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b) => {
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
