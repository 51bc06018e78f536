// End-to-end test of the web client: the real Warbler server (built from
// this repository, temporary data, loopback port) and headless Chromium
// with one browser context per user. Each step saves a screenshot under
// web/test-results/.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Server, buildServer, freePort, launchBrowser, png, repoDir, resultsDir, screenshot, tempRoot, totp, waitFor } from './harness.mjs';

let root, server, browser;
const contexts = [];

before(async () => {
  rmSync(resultsDir, { recursive: true, force: true });
  root = tempRoot();
  const bin = buildServer(root.dir);
  server = new Server(bin, root.dir, await freePort());
  await server.start();
  for (const u of ['alice', 'bob', 'carol']) await server.createUser(u, `${u}-password-1`);
  browser = await launchBrowser();
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
  await server?.stop();
  if (process.exitCode && server) console.error(server.logs.slice(-40).join('\n'));
  root?.remove();
});

async function newPage(viewport = { width: 1100, height: 720 }) {
  const ctx = await browser.newContext({ viewport });
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  return page;
}

async function signIn(page, user, password = `${user}-password-1`) {
  await page.goto(server.url + '/');
  await page.fill('#login-user', user);
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await online(page);
}

async function online(page) {
  await page.locator('#chat-view').waitFor({ state: 'visible' });
  await page.locator('#conn-dot.online').waitFor({ state: 'attached', timeout: 30_000 });
}

const exact = (s) => new RegExp(`^${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
const convItem = (page, name) => page.locator('.conv-item', { has: page.locator('.conv-name', { hasText: exact(name) }) });

async function openConv(page, name) {
  await convItem(page, name).click();
  await page.locator('#conv-title', { hasText: name }).waitFor();
}

async function sendText(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** texts returns the texts of the conversation's messages, in display order. */
function texts(page) {
  return page.$$eval('#messages .msg .text', (els) => els.map((e) => e.textContent));
}

async function statusOf(page, text) {
  const msg = page.locator('#messages .msg', { has: page.locator('.text', { hasText: exact(text) }) });
  return msg.locator('[data-status]').getAttribute('data-status');
}

async function waitStatus(page, text, want) {
  await waitFor(`"${text}" to be ${want}`, async () => (await statusOf(page, text).catch(() => null)) === want);
}

let alice, bob;

test('a wrong password is refused with a clear message', async () => {
  alice = await newPage();
  await page_goto(alice);
  await alice.fill('#login-user', 'alice');
  await alice.fill('#login-password', 'not-her-password');
  await alice.click('#login-submit');
  const err = alice.locator('#login-error');
  await err.waitFor({ state: 'visible' });
  assert.equal(await err.textContent(), 'Wrong username or password.');
  await screenshot(alice, 'login-bad-password');
});

async function page_goto(p) {
  await p.goto(server.url + '/');
}

test('two users sign in and chat with receipts and unread counts', async () => {
  await alice.fill('#login-password', 'alice-password-1');
  await alice.click('#login-submit');
  await online(alice);
  bob = await newPage();
  await signIn(bob, 'bob');

  // alice starts a direct conversation with bob.
  await alice.fill('#new-chat-input', 'bob');
  await alice.press('#new-chat-input', 'Enter');
  await alice.locator('#conv-title', { hasText: 'bob' }).waitFor();
  await sendText(alice, 'Hi Bob! Lunch today?');
  // It is stored (sent), then bob's client reports it delivered.
  await waitStatus(alice, 'Hi Bob! Lunch today?', 'delivered');

  // bob sees the conversation with one unread message.
  const item = convItem(bob, 'alice');
  await item.locator('.badge').waitFor();
  assert.equal(await item.locator('.badge').textContent(), '1');
  assert.match(await item.getAttribute('aria-label'), /alice, 1 unread/);
  await screenshot(bob, 'unread-badge');

  // bob opens it: alice sees "read".
  await openConv(bob, 'alice');
  assert.deepEqual(await texts(bob), ['Hi Bob! Lunch today?']);
  await waitStatus(alice, 'Hi Bob! Lunch today?', 'read');
  await item.locator('.badge').waitFor({ state: 'detached' });
  await bob.locator('#conv-sub', { hasText: 'online' }).waitFor(); // alice's presence

  // bob types: alice sees it in the conversation and in her list; the
  // message ends it.
  await bob.fill('#composer-input', 'Sure, 12:30');
  await alice.locator('#typing', { hasText: 'bob is typing…' }).waitFor();
  await convItem(alice, 'bob').locator('.typing-now').waitFor();
  await alice.locator('#conv-sub', { hasText: 'online' }).waitFor(); // bob's presence
  await screenshot(alice, 'typing');
  await bob.fill('#composer-input', '');
  const firstNode = await bob.$('#messages .msg');
  await sendText(bob, 'Sure, 12:30 at the usual place.');
  await waitFor('the typing notice to end', async () => (await alice.locator('#typing').textContent()) === '');
  await alice.locator('#messages .text', { hasText: '12:30' }).waitFor();
  await waitStatus(bob, 'Sure, 12:30 at the usual place.', 'read');
  // The log is patched, not redrawn: screen readers hear only new messages.
  assert.ok(await firstNode.evaluate((n) => n.isConnected), 'the first message was redrawn');
  await screenshot(alice, 'direct-chat-read');
  await screenshot(bob, 'direct-chat-bob');
});

test('group chat', async () => {
  await alice.fill('#new-chat-input', 'bob, carol');
  await alice.press('#new-chat-input', 'Enter');
  await alice.locator('#conv-sub', { hasText: '3 members' }).waitFor();
  const group = await alice.locator('#conv-title').textContent();
  await sendText(alice, 'Welcome to the team room');
  await waitStatus(alice, 'Welcome to the team room', 'delivered');
  // The "created" event before it is no unread message: the badge says 1.
  await waitFor('the group badge', async () => (await convItem(bob, group).locator('.badge').textContent().catch(() => '')) === '1');
  await convItem(bob, group).click();
  await bob.locator('#messages .text', { hasText: 'Welcome to the team room' }).waitFor();
  assert.ok(await bob.locator('#messages .system', { hasText: 'alice created the group' }).count());
  await waitStatus(alice, 'Welcome to the team room', 'read');
  await screenshot(bob, 'group-chat');
});

test('messages sent while a user is away arrive in order when they come back', async () => {
  await openConv(bob, 'alice');
  // bob leaves: his page is gone, the connection with it.
  await bob.goto('about:blank');
  await openConv(alice, 'bob');
  const sent = ['one', 'two', 'three', 'four', 'five'].map((w) => `Away message ${w}`);
  for (const t of sent) await sendText(alice, t);
  for (const t of sent) await waitStatus(alice, t, 'sent');
  // bob comes back in the same tab: still signed in, the same device, and
  // sync (from his device's delivered cursor) brings what he missed.
  await bob.goto(server.url + '/');
  await online(bob);
  const item = convItem(bob, 'alice');
  await waitFor('the unread badge', async () => (await item.locator('.badge').textContent().catch(() => '')) === '5');
  await screenshot(bob, 'back-online-unread');
  for (const t of sent) await waitStatus(alice, t, 'delivered');
  await openConv(bob, 'alice');
  await waitFor('the missed messages', async () => (await texts(bob)).length === 7);
  assert.deepEqual((await texts(bob)).slice(2), sent);
  const seqs = await bob.$$eval('#messages .msg', (els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  await waitStatus(alice, sent[4], 'read');
  await screenshot(bob, 'back-online-in-order');
});

test('react, edit and delete', async () => {
  // alice's page is on bob, and bob's on alice (from the previous test).
  const msg = (page, text) => page.locator('#messages .msg', { has: page.locator('.text', { hasText: exact(text) }) });
  await msg(bob, 'Away message one').hover();
  await msg(bob, 'Away message one').locator('[data-act="react"]').click();
  await msg(alice, 'Away message one').locator('.reaction', { hasText: '👍 1' }).waitFor();
  await msg(bob, 'Away message one').locator('[data-act="react"][aria-pressed="true"]').waitFor();

  await msg(alice, 'Away message two').hover();
  await msg(alice, 'Away message two').locator('[data-act="edit"]').click();
  await alice.locator('#edit-bar').waitFor();
  await alice.fill('#composer-input', 'Away message two, edited');
  await alice.press('#composer-input', 'Enter');
  await msg(bob, 'Away message two, edited').locator('.edited').waitFor();

  alice.once('dialog', (d) => d.accept());
  await msg(alice, 'Away message three').hover();
  await msg(alice, 'Away message three').locator('[data-act="delete"]').click();
  await bob.locator('#messages .recalled').waitFor();
  assert.equal(await msg(bob, 'Away message three').count(), 0);
  await msg(bob, 'Away message one').hover();
  await screenshot(bob, 'react-edit-delete');
});

test('an image upload shows a thumbnail on both sides', async () => {
  await openConv(alice, 'bob');
  await alice.setInputFiles('#attach', { name: 'sunset.png', mimeType: 'image/png', buffer: png(640, 400) });
  // bob sees the server's 320×200 thumbnail, loaded with his token.
  const thumb = bob.locator('#messages .msg.theirs img.thumb[data-file]').last();
  await thumb.waitFor();
  await waitFor('the thumbnail to load', () => thumb.evaluate((i) => i.complete && i.naturalWidth === 320 && i.naturalHeight === 200));
  assert.equal(await thumb.getAttribute('alt'), 'Image: sunset.png');
  const sent = alice.locator('#messages .msg.mine img.thumb').last();
  await waitFor('alice to see it read', async () => (await alice.locator('#messages .msg.mine').last().locator('[data-status]').getAttribute('data-status')) === 'read');
  assert.ok(await sent.evaluate((i) => i.complete && i.naturalWidth > 0));
  await screenshot(bob, 'image-thumbnail');
  // The full picture opens in a dialog.
  await thumb.click();
  await waitFor('the full image', () => bob.locator('#lightbox-img').evaluate((i) => i.complete && i.naturalWidth === 640));
  await screenshot(bob, 'image-full');
  await bob.keyboard.press('Escape');
  await bob.locator('#lightbox').waitFor({ state: 'hidden' });
});

test('connection lost: banner, queued send, reconnect', async () => {
  await server.kill();
  await alice.locator('#banner[data-state="reconnecting"]').waitFor();
  await bob.locator('#banner[data-state="reconnecting"]').waitFor();
  assert.match(await alice.locator('#banner-text').textContent(), /reconnecting/i);
  await sendText(alice, 'Sent while the server was down');
  await waitStatus(alice, 'Sent while the server was down', 'sending');
  await screenshot(alice, 'reconnecting-banner');
  await server.start();
  await online(alice);
  await online(bob);
  await alice.locator('#banner').waitFor({ state: 'hidden' });
  await bob.locator('#messages .text', { hasText: 'Sent while the server was down' }).waitFor();
  await waitStatus(alice, 'Sent while the server was down', 'read');
  assert.deepEqual((await texts(alice)).slice(-1), ['Sent while the server was down']);
  await screenshot(alice, 'reconnected');
});

test('screenshot for the README', async () => {
  await openConv(alice, 'bob');
  const file = await screenshot(alice, 'readme');
  if (process.env.UPDATE_SCREENSHOT) {
    mkdirSync(join(repoDir, 'docs'), { recursive: true });
    copyFileSync(file, join(repoDir, 'docs', 'web-client.png'));
  }
});

test('a refused message can be retried', async () => {
  // The server allows 20 messages a second with a burst of 100 per user;
  // a burst beyond that is refused (quota_exceeded) message by message.
  await alice.fill('#new-chat-input', 'carol');
  await alice.press('#new-chat-input', 'Enter');
  await alice.locator('#conv-title', { hasText: 'carol' }).waitFor();
  await alice.evaluate(() => {
    const input = document.getElementById('composer-input');
    const form = document.getElementById('composer');
    for (let i = 1; i <= 160; i++) {
      input.value = `burst ${i}`;
      form.requestSubmit();
    }
  });
  const failed = alice.locator('#messages .msg.failed');
  await failed.first().waitFor();
  assert.match(await failed.first().locator('.status').textContent(), /Not sent: sending too fast/);
  await screenshot(alice, 'message-failed');
  const n = await failed.count();
  assert.ok(n > 0 && n <= 60, `failed: ${n}`);
  const cmid = await failed.first().getAttribute('data-cmid');
  await new Promise((r) => setTimeout(r, 1500)); // let the quota refill
  await alice.locator(`#messages .msg[data-cmid="${cmid}"] .retry`).click();
  await waitFor('the retried message to be stored', async () => (await alice.locator(`#messages .msg[data-cmid="${cmid}"]`).count()) === 0);
  assert.equal(await failed.count(), n - 1);
});

test('an expired access token is refreshed; a revoked session asks to sign in again', async () => {
  const before = await bob.evaluate(() => JSON.parse(sessionStorage.getItem('warbler.session')));
  await bob.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem('warbler.session'));
    s.expires_at = new Date(Date.now() - 1000).toISOString();
    sessionStorage.setItem('warbler.session', JSON.stringify(s));
  });
  await bob.reload();
  await online(bob);
  const after = await bob.evaluate(() => JSON.parse(sessionStorage.getItem('warbler.session')));
  assert.notEqual(after.access_token, before.access_token);
  assert.equal(after.device, before.device);

  // Signing out elsewhere revokes the session: the server disconnects bob.
  await server.api('POST', '/v1/logout', undefined, after.access_token);
  await bob.locator('#login-view').waitFor({ state: 'visible' });
  assert.match(await bob.locator('#login-error').textContent(), /sign in again/);
  await screenshot(bob, 'session-ended');
  await signIn(bob, 'bob');
});

test('a second tab is a second device; a duplicated tab does not steal the first', async () => {
  const ctx = alice.context();
  await openConv(alice, 'bob');
  await openConv(bob, 'alice');
  const connects = await alice.locator('#chat-view').getAttribute('data-connects');
  const first = await alice.evaluate(() => JSON.parse(sessionStorage.getItem('warbler.session')).device);

  // A copy of the first tab's session (as "duplicate tab" makes) is refused.
  const dup = await ctx.newPage();
  await dup.addInitScript((s) => sessionStorage.setItem('warbler.session', s), await alice.evaluate(() => sessionStorage.getItem('warbler.session')));
  await dup.goto(server.url + '/');
  await dup.locator('#login-error', { hasText: 'open in another tab' }).waitFor();
  await dup.close();

  // Signing in again in a new tab makes a new device; both tabs stay connected.
  const tab = await ctx.newPage();
  await signIn(tab, 'alice');
  const second = await tab.evaluate(() => JSON.parse(sessionStorage.getItem('warbler.session')).device);
  assert.notEqual(second, first);
  await openConv(tab, 'bob');
  await sendText(tab, 'From my second tab');
  await alice.locator('#messages .msg.mine .text', { hasText: 'From my second tab' }).waitFor();
  await bob.locator('#messages .text', { hasText: 'From my second tab' }).waitFor();
  assert.equal(await alice.locator('#chat-view').getAttribute('data-connects'), connects);
  assert.equal(await tab.locator('#chat-view').getAttribute('data-connects'), '1');
  await tab.close();
});

test('sign-in with a TOTP second factor', async () => {
  const s = await server.login('carol', 'carol-password-1');
  const en = await server.api('POST', '/v1/me/totp/enroll', {}, s.access_token);
  await server.api('POST', '/v1/me/totp/confirm', { code: totp(en.secret) }, s.access_token);
  const carol = await newPage({ width: 420, height: 760 });
  await carol.goto(server.url + '/');
  await carol.fill('#login-user', 'carol');
  await carol.fill('#login-password', 'carol-password-1');
  await carol.click('#login-submit');
  await carol.locator('#login-totp').waitFor({ state: 'visible' });
  assert.match(await carol.locator('#login-error').textContent(), /6-digit code/);
  await screenshot(carol, 'totp-asked');
  await carol.fill('#login-totp', totp(en.secret, Date.now() + 30_000));
  await carol.click('#login-submit');
  await online(carol);
  // A narrow screen shows the list, then the conversation alone.
  await convItem(carol, 'alice').locator('.badge').waitFor();
  await screenshot(carol, 'mobile-list');
  await openConv(carol, 'alice');
  assert.ok(await carol.locator('#back').isVisible());
  assert.ok(!(await carol.locator('.sidebar').isVisible()));
  await screenshot(carol, 'mobile-conversation');
  // A new device's first sync brings the whole conversation, in order.
  await waitFor('the burst', async () => (await texts(carol)).length >= 100);
  const seqs = await carol.$$eval('#messages .msg', (els) => els.map((e) => Number(e.dataset.seq)));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(seqs).size, seqs.length);
});

test('admin view: users, push test, live metrics', async () => {
  const admin = await newPage();
  await admin.goto(server.url + '/#/admin');
  await admin.fill('#admin-key', 'wk_wrong_key');
  await admin.click('#admin-key-form button[type=submit]');
  await admin.locator('#admin-error', { hasText: 'not accepted' }).waitFor();
  await admin.fill('#admin-key', server.key);
  await admin.click('#admin-key-form button[type=submit]');
  await admin.locator('#users td code', { hasText: 'carol' }).waitFor();
  assert.deepEqual(await admin.$$eval('#users td code', (els) => els.map((e) => e.textContent)), ['alice', 'bob', 'carol']);
  await admin.fill('#new-user-id', 'dave');
  await admin.fill('#new-user-password', 'dave-password-1');
  await admin.click('#user-create button');
  await admin.locator('#users td code', { hasText: 'dave' }).waitFor();
  const conns = admin.locator('[data-metric="warbler_connections:gauge"] dd');
  await waitFor('the connection count', async () => Number(await conns.textContent().catch(() => '0')) >= 2);
  await admin.fill('#push-user', 'bob');
  await admin.click('#push-form button');
  await admin.locator('#push-status', { hasText: /bob|Push test failed/ }).waitFor();
  await screenshot(admin, 'admin', { fullPage: true });
});

