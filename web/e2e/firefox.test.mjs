// End-to-end smoke test of the web client in Firefox: the real Warbler
// server (built from this repository, temporary data, loopback port) and
// headless Firefox ESR, one private browser context per user, driven over
// WebDriver BiDi. Two users sign in, exchange a message each way and see
// the delivered and read ticks. Screenshots go to web/test-results/.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, buildServer, freePort, launchFirefox, screenshot, tempRoot, waitFor } from './harness.mjs';

let root, server, browser;

before(async () => {
  root = tempRoot();
  const bin = buildServer(root.dir);
  server = new Server(bin, root.dir, await freePort());
  await server.start();
  for (const u of ['alice', 'bob']) await server.createUser(u, `${u}-password-1`);
  browser = await launchFirefox();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (process.exitCode && server) console.error(server.logs.slice(-40).join('\n'));
  root?.remove();
});

async function newPage() {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width: 1100, height: 720 });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  return page;
}

/** visible reports whether the element matching sel is rendered. */
function visible(page, sel) {
  return page.$eval(sel, (e) => e.checkVisibility()).catch(() => false);
}

async function signIn(page, user) {
  await page.goto(server.url + '/');
  await page.type('#login-user', user);
  await page.type('#login-password', `${user}-password-1`);
  await page.click('#login-submit');
  await waitFor(`${user}'s chat view`, () => visible(page, '#chat-view'));
  await page.waitForSelector('#conn-dot.online', { timeout: 30_000 });
}

async function sendText(page, text) {
  await page.type('#composer-input', text);
  await page.keyboard.press('Enter');
}

/** texts returns the texts of the open conversation's messages, in order. */
function texts(page) {
  return page.$$eval('#messages .msg .text', (els) => els.map((e) => e.textContent));
}

/** statusOf returns the data-status of the message whose text is text. */
function statusOf(page, text) {
  return page.$$eval(
    '#messages .msg',
    (els, text) => els.find((e) => e.querySelector('.text')?.textContent === text)?.querySelector('[data-status]')?.dataset.status ?? null,
    text,
  );
}

async function waitStatus(page, text, want, timeout) {
  await waitFor(`"${text}" to be ${want}`, async () => (await statusOf(page, text).catch(() => null)) === want, timeout);
}

test('Firefox: two users sign in and exchange messages with delivered and read ticks', async () => {
  const ua = await browser.userAgent();
  assert.match(ua, /Firefox\//, ua);
  const alice = await newPage();
  const bob = await newPage();
  await signIn(alice, 'alice');
  await signIn(bob, 'bob');

  // alice starts a direct conversation with bob and writes.
  await alice.type('#new-chat-input', 'bob');
  await alice.keyboard.press('Enter');
  await waitFor('the conversation with bob', async () => (await alice.$eval('#conv-title', (e) => e.textContent).catch(() => '')) === 'bob');
  await sendText(alice, 'Hello from Firefox');
  await waitStatus(alice, 'Hello from Firefox', 'delivered');

  // bob opens it in his tab, now in front: he sees the message, alice
  // sees it read.
  await bob.bringToFront();
  await waitFor('the conversation in bob\'s list', async () =>
    bob.$$eval('.conv-item .conv-name', (els) => els.some((e) => e.textContent === 'alice')),
  );
  await bob.$$eval('.conv-item', (els) => els.find((e) => e.querySelector('.conv-name')?.textContent === 'alice').click());
  await waitFor('the message at bob', async () => (await texts(bob)).includes('Hello from Firefox'));
  await waitStatus(alice, 'Hello from Firefox', 'read');

  // bob answers. alice's tab is in the background (the page is hidden):
  // her client receives the message and acknowledges it at once (Firefox
  // throttles a background tab's timers, so the client sends delivered
  // receipts without one), but does not mark it read until she looks at it.
  await sendText(bob, 'Hi alice, Firefox here too');
  await waitFor('the answer at alice', async () => (await texts(alice)).includes('Hi alice, Firefox here too'));
  await waitStatus(bob, 'Hi alice, Firefox here too', 'delivered');
  assert.equal(await alice.evaluate(() => document.visibilityState), 'hidden');
  await alice.bringToFront();
  await waitStatus(bob, 'Hi alice, Firefox here too', 'read');
  assert.deepEqual(await texts(alice), ['Hello from Firefox', 'Hi alice, Firefox here too']);
  assert.deepEqual(await texts(bob), ['Hello from Firefox', 'Hi alice, Firefox here too']);
  await screenshot(alice, 'firefox-direct-chat-alice');
  await screenshot(bob, 'firefox-direct-chat-bob');
});
