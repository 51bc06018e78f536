// The web client's pages: sign-in, the chat (conversation list and one
// conversation) and the admin view. State lives in memory; the session is
// kept in sessionStorage (so a reload stays signed in and syncs what it
// missed) and the device ID per user in localStorage (so this browser stays
// one device, with its own delivered cursor).

import './style.css';
import { APIError, login, loginErrorText, logout, type Session } from './api';
import { RequestError, WarblerClient, newID, type Attachment, type ConvInfo, type Msg, type Receipt } from './warbler';
import { startAdmin, stopAdmin } from './admin';
import { $, el, fmtTime } from './dom';

const SESSION_KEY = 'warbler.session';

interface OutMsg {
  cmid: string;
  conv?: string;
  to?: string;
  type: string;
  body: any;
  state: 'sending' | 'failed';
  error?: string;
  ts: number;
  inflight?: boolean;
  /** An image waiting to be uploaded, its local preview, and its upload once stored. */
  file?: File;
  preview?: string;
  attachment?: Attachment;
}

interface Conv {
  id: string; // conversation ID, or "to:{user}" for a direct chat not yet started
  info: ConvInfo;
  // The server's last count: unread messages in (read, last] (see recount).
  counted: { read: number; last: number; unread: number; more: boolean };
  peer?: string;
  msgs: Map<number, Msg>;
  outbox: OutMsg[];
  peerDelivered: number;
  peerRead: number;
  historyLoaded: boolean;
  more: boolean;
  typing: Map<string, number>;
}

let session: Session | undefined;
let client: WarblerClient | undefined;
const convs = new Map<string, Conv>();
let current: string | undefined;
const readSent = new Map<string, number>();
const deliveredSent = new Map<string, number>();

// ---- sign-in -------------------------------------------------------------

function loadSession(): Session | undefined {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? 'null');
    return s && s.refresh_token ? s : undefined;
  } catch {
    return undefined;
  }
}

function saveSession(s: Session | undefined): void {
  if (s) sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
  else sessionStorage.removeItem(SESSION_KEY);
}

function deviceKey(app: string, user: string): string {
  return `warbler.device.${app}.${user}`;
}

function showLogin(message?: string): void {
  $('login-view').hidden = false;
  $('chat-view').hidden = true;
  $('admin-view').hidden = true;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message ?? '';
  const app = new URLSearchParams(location.search).get('app');
  if (app) ($('login-app') as HTMLInputElement).value = app;
  ($('login-user') as HTMLInputElement).focus();
}

function setupLogin(): void {
  const form = $('login-form') as HTMLFormElement;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const app = ($('login-app') as HTMLInputElement).value.trim();
    const username = ($('login-user') as HTMLInputElement).value.trim();
    const password = ($('login-password') as HTMLInputElement).value;
    const totp = ($('login-totp') as HTMLInputElement).value.trim();
    const err = $('login-error');
    if (!app || !username || !password) {
      err.hidden = false;
      err.textContent = 'Enter the app, your username and your password.';
      return;
    }
    const btn = $('login-submit') as HTMLButtonElement;
    btn.disabled = true;
    btn.textContent = 'Signing in…';
    try {
      // Reuse this browser's device (and its sync cursors) unless another
      // tab is using it: then this tab signs in as a new device.
      let device = localStorage.getItem(deviceKey(app, username)) ?? undefined;
      if (device && !(await deviceFree(app, username, device))) device = undefined;
      const s = await login({ app, username, password, device, totp: totp || undefined });
      if (!device || device === s.device) localStorage.setItem(deviceKey(app, s.user), s.device);
      if (!(await claimDevice(s, 0))) throw new Error('This device is in use in another tab.');
      ($('login-password') as HTMLInputElement).value = '';
      ($('login-totp') as HTMLInputElement).value = '';
      $('login-totp-row').hidden = true;
      err.hidden = true;
      startChat(s);
    } catch (e) {
      err.hidden = false;
      err.textContent = loginErrorText(e);
      if (e instanceof APIError && (e.code === 'mfa_required' || e.code === 'invalid_mfa')) {
        $('login-totp-row').hidden = false;
        ($('login-totp') as HTMLInputElement).focus();
      } else if (e instanceof APIError && e.code === 'invalid_credentials') {
        ($('login-password') as HTMLInputElement).select();
      }
    } finally {
      btn.disabled = false;
      btn.textContent = 'Sign in';
    }
  });
}

// ---- one tab per device ----------------------------------------------------
//
// Two tabs connecting as the same device would take each other's MQTT
// session over, again and again. A tab therefore holds a Web Lock named
// after its device for as long as it uses it.

let releaseDevice: (() => void) | undefined;

const lockName = (app: string, user: string, device: string) => `warbler:${app}:${user}:${device}`;

async function deviceFree(app: string, user: string, device: string): Promise<boolean> {
  if (!navigator.locks) return true;
  const q = await navigator.locks.query();
  return !(q.held ?? []).some((l) => l.name === lockName(app, user, device));
}

// claimDevice takes the device's lock, waiting at most wait ms (a reloading
// tab's previous page may still hold it for a moment). false: another tab
// uses the device.
function claimDevice(s: Session, wait: number): Promise<boolean> {
  releaseDevice?.();
  releaseDevice = undefined;
  if (!navigator.locks) return Promise.resolve(true);
  return new Promise((resolve) => {
    const opts: LockOptions = wait > 0 ? { signal: AbortSignal.timeout(wait) } : { ifAvailable: true };
    navigator.locks
      .request(lockName(s.app, s.user, s.device), opts, (lock) => {
        if (!lock) {
          resolve(false);
          return undefined;
        }
        resolve(true);
        return new Promise<void>((release) => (releaseDevice = release));
      })
      .catch(() => resolve(false));
  });
}

// ---- chat ------------------------------------------------------------------

function startChat(s: Session): void {
  session = s;
  saveSession(s);
  convs.clear();
  current = undefined;
  readSent.clear();
  deliveredSent.clear();
  $('me-name').textContent = s.user;
  $('login-view').hidden = true;
  route();
  client?.stop();
  const c = new WarblerClient(s);
  client = c;
  c.on('session', (ns) => {
    session = ns;
    saveSession(ns);
  });
  c.on('expired', (why) => {
    releaseDevice?.();
    saveSession(undefined);
    client = undefined;
    showLogin(why);
  });
  c.on('state', onState);
  c.on('convs', (list) => {
    for (const info of list) upsertConv(info);
    render();
  });
  c.on('message', onMessage);
  c.on('receipt', onReceipt);
  c.on('other', onOther);
  c.on('synced', () => {
    flushOutbox();
    void loadPreviews();
    if (current) void openConv(current, false);
    render();
  });
  c.start();
}

let connects = 0;
function onState(s: string, detail?: string): void {
  const banner = $('banner');
  if (s === 'online') $('chat-view').dataset.connects = String(++connects);
  else if (presence.size) {
    presence.clear(); // stale until asked again after reconnecting
    scheduleRender();
  }
  const dot = $('conn-dot');
  dot.className = `dot ${s}`;
  $('conn-text').textContent = s === 'online' ? 'Connected' : s;
  if (s === 'reconnecting') {
    banner.hidden = false;
    $('banner-text').textContent = `Connection lost — reconnecting…${detail && detail !== 'connection lost' ? ` (${detail})` : ''}`;
  } else if (s === 'connecting') {
    banner.hidden = false;
    $('banner-text').textContent = 'Connecting…';
  } else {
    banner.hidden = true;
  }
  $('banner-retry').hidden = s !== 'reconnecting';
  banner.dataset.state = s;
}

function emptyInfo(conv: string, kind = 'direct'): ConvInfo {
  return { conv, kind, members: 2, last_seq: 0, read: 0, unread: 0 };
}

function peerCacheKey(): string {
  return `warbler.peers.${session!.app}.${session!.user}`;
}

function peers(): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem(peerCacheKey()) ?? '{}');
  } catch {
    return {};
  }
}

function rememberPeer(conv: string, peer: string): void {
  const p = peers();
  if (p[conv] === peer) return;
  p[conv] = peer;
  localStorage.setItem(peerCacheKey(), JSON.stringify(p));
}

function getConv(id: string, kind = 'direct'): Conv {
  let c = convs.get(id);
  if (!c) {
    c = {
      id,
      info: emptyInfo(id, kind),
      counted: { read: 0, last: 0, unread: 0, more: false },
      msgs: new Map(),
      outbox: [],
      peerDelivered: 0,
      peerRead: 0,
      historyLoaded: false,
      more: false,
      typing: new Map(),
    };
    if (id.startsWith('d.')) c.peer = peers()[id];
    convs.set(id, c);
  }
  return c;
}

function upsertConv(info: ConvInfo): Conv {
  const c = getConv(info.conv, info.kind);
  c.info = { ...info, last_seq: Math.max(info.last_seq, c.info.last_seq), read: Math.max(info.read, c.info.read) };
  c.counted = { read: info.read, last: info.last_seq, unread: info.unread, more: !!info.unread_more };
  recount(c);
  if (c.info.kind === 'direct' && !c.peer && !infoAsked.has(c.id)) void refreshInfo(c);
  return c;
}

// refreshInfo asks the server about a conversation first seen through a
// message: its kind, name and counts, and the peer of a direct chat.
const infoAsked = new Set<string>();
async function refreshInfo(c: Conv): Promise<void> {
  if (!client?.online) return;
  infoAsked.add(c.id);
  try {
    const r = await client.op<{ conv: ConvInfo; members?: { user: string }[] }>('info', { conv: c.id });
    if (!c.peer && r.conv.kind === 'direct') {
      const p = r.members?.find((m) => m.user !== session!.user)?.user;
      if (p) {
        c.peer = p;
        rememberPeer(c.id, p);
      }
    }
    upsertConv(r.conv);
    scheduleRender();
  } catch {
    /* shown by ID until known */
  }
}

function isMine(m: Msg): boolean {
  return m.from.user === session?.user;
}

// countable says whether a message counts as unread, by the server's rule
// (docs/PROTOCOL.md, "Unread counts"): other people's messages that were
// not recalled, announcements and missed calls; no edits, reactions, call
// signalling or other system events.
function countable(m: Msg): boolean {
  if (isMine(m) || m.recalled) return false;
  switch (m.type) {
    case 'edit':
    case 'recall':
    case 'reaction':
      return false;
    case 'call':
      return m.body?.state === 'ended' && (m.body?.reason === 'canceled' || m.body?.reason === 'timeout');
    case 'system':
      return m.body?.event === 'announcement' && !!m.body?.text;
  }
  return true;
}

// recount sets c.info.unread: the server's count while the read position
// is where the server counted from, plus the countable messages that came
// after its count; once the user read past that, the countable messages
// after the read position that this page holds.
function recount(c: Conv): void {
  const { read, last_seq: last } = c.info;
  const base = read === c.counted.read;
  const from = base ? Math.max(read, c.counted.last) : read;
  let n = base ? c.counted.unread : 0;
  for (const [seq, m] of c.msgs) if (seq > from && seq <= last && countable(m)) n++;
  c.info.unread = n;
  c.info.unread_more = base && c.counted.more;
}

function onMessage(m: Msg, live: boolean): void {
  const known = convs.has(m.conv);
  const c = getConv(m.conv, m.conv.startsWith('d.') ? 'direct' : 'group');
  if (!known) void refreshInfo(c);
  if (!c.peer && c.info.kind === 'direct' && !isMine(m)) {
    c.peer = m.from.user;
    rememberPeer(c.id, m.from.user);
  }
  const fresh = !c.msgs.has(m.seq);
  c.msgs.set(m.seq, m);
  if (m.ref) applyEvent(c, m);
  if (m.cmid && isMine(m)) c.outbox = c.outbox.filter((o) => o.cmid !== m.cmid);
  if (m.seq > c.info.last_seq) c.info.last_seq = m.seq;
  if (isMine(m)) c.info.read = Math.max(c.info.read, m.seq);
  recount(c);
  c.typing.delete(m.from.user);
  if (fresh && live && !isMine(m)) {
    // A gap in seq means a live message was missed: sync fills it.
    if (c.historyLoaded && m.seq > 1 && !c.msgs.has(m.seq - 1)) void client?.sync();
    markDelivered(c.id, m.seq);
  }
  if (current === c.id) markRead(c);
  scheduleRender();
}

// applyEvent applies an edit, recall or reaction event to the message it
// refers to, if that message is loaded. Events carry their whole effect (the
// new body, the emoji's new total), so applying one twice changes nothing.
function applyEvent(c: Conv, e: Msg): void {
  const t = c.msgs.get(e.ref!.seq);
  if (!t || t.id !== e.ref!.id || t.recalled) return;
  switch (e.type) {
    case 'edit':
      if (e.recalled || (t.edits ?? []).some((s) => s > e.seq)) return; // t is newer already
      t.body = e.body;
      t.edited = true;
      t.edits = [...new Set([...(t.edits ?? []), e.seq])];
      break;
    case 'recall':
      t.recalled = true;
      t.body = undefined;
      t.reactions = undefined;
      t.attachment = undefined;
      break;
    case 'reaction': {
      const { emoji, action, count } = e.body ?? {};
      if (typeof emoji !== 'string') return;
      const rs = (t.reactions ??= []);
      let r = rs.find((x) => x.emoji === emoji);
      if (!r) rs.push((r = { emoji, count: 0, users: [] }));
      r.count = typeof count === 'number' ? count : r.count;
      const users = new Set(r.users ?? []);
      if (action === 'remove') users.delete(e.from.user);
      else users.add(e.from.user);
      r.users = [...users];
      t.reactions = rs.filter((x) => x.count > 0);
      break;
    }
  }
}

function onReceipt(r: Receipt): void {
  const c = convs.get(r.conv);
  if (!c) return;
  if (r.user === session?.user) {
    if (r.type === 'read') {
      c.info.read = Math.max(c.info.read, r.seq);
      recount(c);
    }
  } else if (r.type === 'read') {
    c.peerRead = Math.max(c.peerRead, r.seq);
    c.peerDelivered = Math.max(c.peerDelivered, r.seq);
  } else {
    c.peerDelivered = Math.max(c.peerDelivered, r.seq);
  }
  scheduleRender();
}

// TYPING_SHOWN is how long a typing notice shows: the sender repeats it
// every TYPING_EVERY while typing, and a sent message ends it.
const TYPING_SHOWN = 5500;
const TYPING_EVERY = 3000;

function onOther(e: any): void {
  if (e.kind === 'typing' && e.conv && e.user && e.user !== session?.user) {
    const c = convs.get(e.conv);
    if (!c) return;
    c.typing.set(e.user, Date.now() + TYPING_SHOWN);
    scheduleRender();
  } else if (e.kind === 'presence' && e.user) {
    presence.set(e.user, e);
    scheduleRender();
  }
}

const presence = new Map<string, { state: string; last_seen?: number }>();

// watchPresence asks for the presence of the open direct chat's peer; the
// server then sends changes to this device until the next request.
async function watchPresence(c: Conv): Promise<void> {
  const users = c.peer && c.info.kind === 'direct' ? [c.peer] : [];
  try {
    const r = await client!.op<{ users: { user: string; state: string; last_seen?: number }[] }>('presence', { users });
    for (const u of r.users ?? []) presence.set(u.user, u);
    scheduleRender();
  } catch {
    /* presence is optional */
  }
}

function presenceText(user: string): string {
  const p = presence.get(user);
  if (!p) return '';
  if (p.state === 'online') return 'online';
  if (p.state === 'offline' && p.last_seen) return `last seen ${fmtTime(p.last_seen)}`;
  return '';
}

// Delivered receipts are batched per task, not per timer: a microtask runs
// at once even in a background tab, whose timers browsers throttle (Firefox
// delayed a 150 ms timer by many seconds), and a sync page handled in one
// task still sends one receipt per conversation.
const deliveredPending = new Map<string, number>();
function markDelivered(conv: string, seq: number): void {
  if ((deliveredSent.get(conv) ?? 0) >= seq) return;
  deliveredSent.set(conv, seq);
  if (deliveredPending.size === 0) {
    queueMicrotask(() => {
      for (const [cv, s] of deliveredPending) {
        void client?.op('delivered', { conv: cv, seq: s }).catch(() => undefined);
      }
      deliveredPending.clear();
    });
  }
  deliveredPending.set(conv, seq);
}

function markRead(c: Conv): void {
  if (document.visibilityState !== 'visible' || !client?.online) return;
  const seq = c.info.last_seq;
  if (seq <= c.info.read || (readSent.get(c.id) ?? 0) >= seq) return;
  readSent.set(c.id, seq);
  client
    .op<{ seq: number }>('read', { conv: c.id, seq })
    .then((r) => {
      c.info.read = Math.max(c.info.read, r.seq);
      recount(c);
      scheduleRender();
    })
    .catch(() => readSent.delete(c.id));
}

document.addEventListener('visibilitychange', () => {
  const c = current ? convs.get(current) : undefined;
  if (c) markRead(c);
});

async function openConv(id: string, focus = true): Promise<void> {
  if (current !== id) opened = true;
  current = id;
  document.body.classList.add('in-conv');
  const c = getConv(id);
  render();
  if (focus) ($('composer-input') as HTMLTextAreaElement).focus();
  if (id.startsWith('to:') || !client?.online) return;
  if (!c.historyLoaded) {
    try {
      const r = await client.op<{ messages: Msg[]; more: boolean }>('history', { conv: id, limit: 50 });
      for (const m of r.messages) onMessage(m, false);
      c.historyLoaded = true;
      c.more = r.more;
    } catch (e) {
      toast(`Could not load the conversation: ${errText(e)}`);
    }
  }
  markRead(c);
  void refreshReads(c);
  void watchPresence(c);
  render();
}

// loadPreviews fetches the last message of conversations shown in the list
// without one (after a reload, sync brings only what this device missed).
async function loadPreviews(): Promise<void> {
  const bare = [...convs.values()].filter((c) => !c.msgs.size && c.info.last_seq > 0 && !c.id.startsWith('to:')).slice(0, 30);
  for (const c of bare) {
    try {
      const r = await client!.op<{ messages: Msg[] }>('history', { conv: c.id, limit: 1 });
      for (const m of r.messages) onMessage(m, false);
    } catch {
      return;
    }
  }
}

async function refreshReads(c: Conv): Promise<void> {
  const mine = [...c.msgs.values()].filter(isMine).map((m) => m.seq);
  if (!mine.length || !client?.online) return;
  const seq = Math.max(...mine);
  if (c.peerRead >= seq) return;
  try {
    const r = await client.op<{ read: number; users?: string[] }>('reads', { conv: c.id, seq });
    const others = r.users ? r.users.filter((u) => u !== session!.user).length : r.read - 1;
    if (others > 0) {
      c.peerRead = Math.max(c.peerRead, seq);
      c.peerDelivered = Math.max(c.peerDelivered, seq);
      scheduleRender();
    }
  } catch {
    /* receipts still arrive live */
  }
}

async function loadOlder(): Promise<void> {
  const c = current ? convs.get(current) : undefined;
  if (!c || !client?.online) return;
  const first = Math.min(...c.msgs.keys());
  try {
    const r = await client.op<{ messages: Msg[]; more: boolean }>('history', { conv: c.id, before: first, limit: 50 });
    for (const m of r.messages) onMessage(m, false);
    c.more = r.more;
    render();
  } catch (e) {
    toast(`Could not load older messages: ${errText(e)}`);
  }
}

function errText(e: unknown): string {
  if (e instanceof RequestError) {
    switch (e.code) {
      case 'offline':
        return 'not connected';
      case 'timeout':
        return 'no answer from the server';
      case 'not_found':
        return 'no such user';
      case 'not_member':
        return 'no such conversation, or you are not in it';
      case 'quota_exceeded':
        return 'sending too fast; try again in a moment';
      default:
        return e.message;
    }
  }
  return e instanceof Error ? e.message : String(e);
}

// ---- sending ---------------------------------------------------------------

function send(c: Conv, type: string, body: any): void {
  const o: OutMsg = { cmid: newID('c'), type, body, state: 'sending', ts: Date.now() };
  if (c.id.startsWith('to:')) o.to = c.id.slice(3);
  else o.conv = c.id;
  c.outbox.push(o);
  render();
  void deliver(c, o);
}

async function deliver(c: Conv, o: OutMsg): Promise<void> {
  if (o.inflight || !client?.online) return; // stays "sending"; flushed on reconnect
  o.inflight = true;
  o.state = 'sending';
  o.error = undefined;
  scheduleRender();
  try {
    if (o.file && !o.attachment) o.attachment = await upload(o);
    const env: Record<string, unknown> = { cmid: o.cmid, type: o.type, body: o.body };
    if (o.attachment) env.attachment = o.attachment.id;
    if (o.conv) env.conv = o.conv;
    else env.to = o.to;
    const ack = await client.request<{ id: string; conv: string; seq: number; ts: number }>(env);
    // The first message of a new direct chat names its conversation.
    if (convs.get(c.id) === c && c.id.startsWith('to:')) adoptDraft(c, ack.conv);
    const t = getConv(ack.conv);
    t.outbox = t.outbox.filter((x) => x.cmid !== o.cmid);
    if (!t.msgs.has(ack.seq)) {
      t.msgs.set(ack.seq, {
        kind: 'msg', id: ack.id, conv: ack.conv, seq: ack.seq, ts: ack.ts,
        from: { user: session!.user, device: session!.device }, cmid: o.cmid, type: o.type, body: o.body,
        attachment: o.attachment,
      });
    }
    if (o.preview && o.attachment?.thumb) {
      // Keep showing the local picture until the thumbnail is fetched.
      images.set(o.attachment.thumb, Promise.resolve(o.preview));
    }
    t.info.last_seq = Math.max(t.info.last_seq, ack.seq);
    t.info.read = Math.max(t.info.read, ack.seq);
    recount(t);
  } catch (e) {
    if (!(e instanceof RequestError && e.code === 'offline')) {
      o.state = 'failed';
      o.error = errText(e);
    } // else: resent with the same cmid after reconnecting
  } finally {
    o.inflight = false;
  }
  scheduleRender();
}

// adoptDraft moves a direct chat started with "to" to its conversation ID.
function adoptDraft(draft: Conv, conv: string): void {
  const real = getConv(conv, 'direct');
  real.peer = draft.peer;
  rememberPeer(conv, draft.peer!);
  for (const x of draft.outbox) {
    x.conv = conv;
    if (![...real.msgs.values()].some((m) => m.cmid === x.cmid) && !real.outbox.includes(x)) real.outbox.push(x);
  }
  real.historyLoaded = real.historyLoaded || real.info.last_seq <= 1;
  convs.delete(draft.id);
  if (current === draft.id) {
    current = conv;
    void watchPresence(real);
  }
}

// upload stores an outgoing image over HTTP (POST /v1/files), for the
// conversation when it exists already.
async function upload(o: OutMsg): Promise<Attachment> {
  const q = new URLSearchParams({ name: o.file!.name || 'image' });
  if (o.conv) q.set('conv', o.conv);
  let res: Response;
  try {
    res = await client!.authFetch(`/v1/files?${q}`, { method: 'POST', body: o.file, headers: { 'Content-Type': 'application/octet-stream' } });
  } catch (e) {
    if (e instanceof APIError) throw new RequestError(e.code, e.message);
    throw new RequestError('network', 'the upload did not reach the server');
  }
  const data = await res.json().catch(() => ({}));
  if (res.status !== 201) {
    const code = data?.error?.code ?? `http_${res.status}`;
    throw new RequestError(code, res.status === 413 ? 'the image is too large' : (data?.error?.message ?? 'upload failed'));
  }
  return data as Attachment;
}

// images caches object URLs of thumbnails and pictures fetched with the
// access token in a header (rather than a token in the URL).
const images = new Map<string, Promise<string>>();
function imageURL(path: string): Promise<string> {
  let p = images.get(path);
  if (!p) {
    p = (async () => {
      const res = await client!.authFetch(path);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      return URL.createObjectURL(await res.blob());
    })();
    p.catch(() => images.delete(path));
    images.set(path, p);
  }
  return p;
}

function sendImage(file: File): void {
  const c = current ? convs.get(current) : undefined;
  if (!c) return;
  if (!file.type.startsWith('image/')) {
    toast('Only images can be sent here.');
    return;
  }
  const o: OutMsg = { cmid: newID('c'), type: 'image', body: {}, state: 'sending', ts: Date.now(), file, preview: URL.createObjectURL(file) };
  if (c.id.startsWith('to:')) o.to = c.id.slice(3);
  else o.conv = c.id;
  c.outbox.push(o);
  render();
  void deliver(c, o);
}

function flushOutbox(): void {
  for (const c of [...convs.values()]) for (const o of c.outbox) if (o.state === 'sending') void deliver(c, o);
}

function setupComposer(): void {
  const input = $('composer-input') as HTMLTextAreaElement;
  const submit = () => {
    const c = current ? convs.get(current) : undefined;
    const text = input.value.trim();
    if (!c || !text) return;
    input.value = '';
    autoGrow(input);
    typingSentAt = 0;
    if (editing && editing.conv === c.id) {
      const { id, seq } = editing;
      endEdit();
      void msgOp('edit', c, id, seq, { body: { text } });
      return;
    }
    send(c, 'text', { text });
  };
  $('edit-cancel').addEventListener('click', () => {
    endEdit();
    input.value = '';
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && editing) {
      endEdit();
      input.value = '';
    }
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submit();
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submit();
    }
  });
  input.addEventListener('input', () => {
    autoGrow(input);
    onTypingInput();
  });
  $('new-chat').addEventListener('submit', (ev) => {
    ev.preventDefault();
    void startConversation();
  });
  $('load-older').addEventListener('click', () => void loadOlder());
  const attach = $('attach') as HTMLInputElement;
  attach.addEventListener('change', () => {
    for (const f of attach.files ?? []) sendImage(f);
    attach.value = '';
  });
  $('lightbox').addEventListener('click', () => ($('lightbox') as HTMLDialogElement).close());
  $('back').addEventListener('click', () => {
    current = undefined;
    document.body.classList.remove('in-conv');
    render();
  });
  $('banner-retry').addEventListener('click', () => client?.reconnectNow());
  $('logout').addEventListener('click', async () => {
    const s = session;
    client?.stop();
    client = undefined;
    saveSession(undefined);
    session = undefined;
    releaseDevice?.();
    if (s) await logout(s.access_token).catch(() => undefined);
    showLogin();
  });
}

function autoGrow(t: HTMLTextAreaElement): void {
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
}

// onTypingInput tells the conversation's other members that this user is
// typing, at most once every TYPING_EVERY (the server limits it too).
let typingSentAt = 0;
let typingConv = '';
function onTypingInput(): void {
  const c = current ? convs.get(current) : undefined;
  const text = ($('composer-input') as HTMLTextAreaElement).value.trim();
  if (!c || !text || c.id.startsWith('to:')) return;
  const now = Date.now();
  if (typingConv === c.id && now - typingSentAt < TYPING_EVERY) return;
  typingConv = c.id;
  typingSentAt = now;
  client?.notify({ op: 'typing', conv: c.id });
}

async function startConversation(): Promise<void> {
  const input = $('new-chat-input') as HTMLInputElement;
  const names = input.value.split(',').map((s) => s.trim()).filter(Boolean);
  if (!names.length || !session) return;
  const bad = names.find((n) => !/^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$/.test(n));
  if (bad) {
    toast(`"${bad}" is not a valid user ID.`);
    return;
  }
  if (names.length === 1) {
    const peer = names[0];
    if (peer === session.user) {
      toast('That is you. Enter someone else’s user ID.');
      return;
    }
    input.value = '';
    const existing = [...convs.values()].find((c) => c.peer === peer);
    if (existing) return openConv(existing.id);
    const c = getConv(`to:${peer}`);
    c.peer = peer;
    c.historyLoaded = true;
    return openConv(c.id);
  }
  try {
    const r = await client!.op<{ conv: ConvInfo }>('create', { kind: 'group', name: [session!.user, ...names].join(', '), members: names.filter((n) => n !== session!.user) });
    input.value = '';
    upsertConv(r.conv);
    await openConv(r.conv.conv);
  } catch (e) {
    toast(`Could not create the group: ${errText(e)}`);
  }
}

// ---- rendering -------------------------------------------------------------

let renderQueued = false;
function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function convTitle(c: Conv): string {
  if (c.info.kind === 'direct' || c.id.startsWith('to:')) return c.peer ?? 'Direct message';
  return c.info.name || c.id;
}

function lastMsg(c: Conv): Msg | undefined {
  let best: Msg | undefined;
  for (const m of c.msgs.values()) if (!m.ref && (!best || m.seq > best.seq)) best = m;
  return best;
}

function preview(m: Msg): string {
  if (m.recalled) return 'Message deleted';
  switch (m.type) {
    case 'text':
      return String(m.body?.text ?? '');
    case 'image':
      return 'Photo';
    case 'system':
      return systemText(m);
    default:
      return `[${m.type}]`;
  }
}

function systemText(m: Msg): string {
  const b = m.body ?? {};
  const users = Array.isArray(b.users) ? b.users.join(', ') : '';
  switch (b.event) {
    case 'created':
      return `${b.by} created the group${b.name ? ` “${b.name}”` : ''}`;
    case 'added':
      return `${b.by} added ${users}`;
    case 'removed':
      return `${b.by} removed ${users}`;
    case 'left':
      return `${users} left`;
    case 'role':
      return `${users} is now ${b.role}`;
    default:
      return b.event ? String(b.event) : 'update';
  }
}

function render(): void {
  if (!session) return;
  renderList();
  renderConv();
}

function renderList(): void {
  const list = $('conv-list');
  const items = [...convs.values()].sort((a, b) => {
    const ta = lastMsg(a)?.ts ?? a.outbox[0]?.ts ?? 0;
    const tb = lastMsg(b)?.ts ?? b.outbox[0]?.ts ?? 0;
    return tb - ta || a.id.localeCompare(b.id);
  });
  $('conv-empty').hidden = items.length > 0;
  patch(
    list,
    items.map((c) => {
      const m = lastMsg(c);
      const unread = current === c.id ? 0 : c.info.unread;
      const shown = `${unread}${c.info.unread_more ? '+' : ''}`; // "1000+" past the server's scan bound
      const title = convTitle(c);
      const typing = typingNow(c).length > 0;
      const text = m ? `${isMine(m) ? 'You: ' : c.info.kind !== 'direct' && m.type !== 'system' ? `${m.from.user}: ` : ''}${preview(m)}` : c.outbox.length ? 'Sending…' : '';
      const time = m ? fmtTime(m.ts) : '';
      return {
        key: c.id,
        sig: JSON.stringify([title, text, unread && shown, current === c.id, time, typing, c.info.kind]),
        make: () => {
          const btn = el('button', { type: 'button', class: 'conv-item', 'data-conv': c.id });
          if (current === c.id) btn.setAttribute('aria-current', 'true');
          btn.setAttribute('aria-label', `${title}${unread ? `, ${shown} unread` : ''}`);
          btn.append(
            el('span', { class: `avatar ${c.info.kind}`, 'aria-hidden': 'true' }, initials(title)),
            el('span', { class: 'conv-text' },
              el('span', { class: 'conv-name' }, title),
              typing ? el('span', { class: 'conv-preview typing-now' }, 'typing…') : el('span', { class: 'conv-preview' }, text),
            ),
            el('span', { class: 'conv-meta' },
              el('span', { class: 'time' }, time),
              unread ? el('span', { class: 'badge', 'data-unread': String(unread) }, shown) : '',
            ),
          );
          btn.addEventListener('click', () => void openConv(c.id));
          return el('li', {}, btn);
        },
      };
    }),
  );
}

interface Keyed {
  key: string;
  sig: string;
  make(): HTMLElement;
}

// patch makes parent's children the given items, in order, keeping every
// child whose key and signature are unchanged. So a screen reader announces
// only what is new in the message log, keyboard focus stays where it was,
// and loaded images are not loaded again.
function patch(parent: HTMLElement, items: Keyed[]): void {
  const old = new Map<string, HTMLElement>();
  for (const ch of Array.from(parent.children) as HTMLElement[]) if (ch.dataset.key) old.set(ch.dataset.key, ch);
  const want = items.map((it) => {
    const n = old.get(it.key);
    if (n && n.dataset.sig === it.sig) {
      old.delete(it.key);
      return n;
    }
    const f = it.make();
    f.dataset.key = it.key;
    f.dataset.sig = it.sig;
    return f;
  });
  for (const n of old.values()) n.remove();
  for (const ch of Array.from(parent.children) as HTMLElement[]) if (!ch.dataset.key) ch.remove();
  want.forEach((n, i) => {
    const at = parent.children[i];
    if (at !== n) parent.insertBefore(n, at ?? null);
  });
}

function typingNow(c: Conv): string[] {
  const now = Date.now();
  return [...c.typing].filter(([, until]) => until > now).map(([u]) => u);
}

function initials(s: string): string {
  const parts = s.split(/[\s,._-]+/).filter(Boolean);
  return ((parts[0]?.[0] ?? '?') + (parts[1]?.[0] ?? '')).toUpperCase();
}

function renderConv(): void {
  const c = current ? convs.get(current) : undefined;
  $('composer').hidden = !c;
  $('conv-pane').classList.toggle('none', !c);
  const list = $('messages');
  const scroller = $('messages-scroll');
  if (!c) {
    $('conv-title').textContent = 'Select a conversation';
    $('conv-sub').textContent = '';
    list.replaceChildren();
    $('typing').textContent = '';
    $('load-older').hidden = true;
    return;
  }
  $('conv-title').textContent = convTitle(c);
  $('conv-sub').textContent =
    c.info.kind === 'direct' || c.id.startsWith('to:')
      ? (c.peer && presenceText(c.peer)) || 'Direct message'
      : `${c.info.kind === 'channel' ? 'Channel' : 'Group'} · ${c.info.members} members`;
  $('load-older').hidden = !c.more;
  const msgs = [...c.msgs.values()].sort((a, b) => a.seq - b.seq);
  const items: Keyed[] = [];
  let lastDay = '';
  for (const m of msgs) {
    if (m.ref) continue; // edits, recalls and reactions show on their message
    const day = new Date(m.ts).toDateString();
    if (day !== lastDay) {
      lastDay = day;
      const label = new Date(m.ts).toLocaleDateString(undefined, { weekday: 'short', month: 'short', day: 'numeric' });
      items.push({ key: `day:${day}`, sig: '', make: () => el('li', { class: 'day', role: 'separator' }, label) });
    }
    const st = isMine(m) ? status(c, m).cls : '';
    items.push({
      key: `m:${m.seq}`,
      sig: JSON.stringify([m.id, m.body, m.edited, m.recalled, m.reactions, m.attachment?.id, st, c.info.kind]),
      make: () => renderMsg(c, m),
    });
  }
  for (const o of c.outbox) {
    items.push({ key: `o:${o.cmid}`, sig: JSON.stringify([o.state, o.error, o.attachment?.id]), make: () => renderOut(c, o) });
  }
  patch(list, items);
  const typers = typingNow(c);
  $('typing').textContent = typers.length ? `${typers.join(', ')} ${typers.length > 1 ? 'are' : 'is'} typing…` : '';
  if (opened) {
    // A newly opened conversation starts at its newest message. Later, the
    // scroller (flex-direction: column-reverse) keeps the bottom in view by
    // itself as messages arrive and images load.
    opened = false;
    scroller.scrollTop = 0;
  }
}
let opened = false;

function status(c: Conv, m: Msg): { text: string; cls: string } {
  if (m.seq <= c.peerRead) return { text: 'Read', cls: 'read' };
  if (m.seq <= c.peerDelivered) return { text: 'Delivered', cls: 'delivered' };
  return { text: 'Sent', cls: 'sent' };
}

function renderBody(m: { type: string; body: any; attachment?: Attachment; preview?: string }): HTMLElement | string {
  const a = m.attachment;
  if (a || m.preview) {
    const w = a?.thumb_width || Math.min(a?.width ?? 240, 240);
    const h = a?.thumb_height || (a?.width && a?.height ? Math.round((w * a.height) / a.width) : 0);
    const img = el('img', { class: 'thumb', alt: a?.name ? `Image: ${a.name}` : 'Image' }) as HTMLImageElement;
    if (w && h) {
      img.width = w;
      img.height = h;
    }
    if (m.preview && !a?.thumb) img.src = m.preview;
    else if (a) {
      const path = a.thumb || a.url;
      img.dataset.file = a.id;
      void imageURL(path).then((u) => (img.src = u), () => img.classList.add('broken'));
    }
    const wrap = el('div', { class: 'image' });
    if (a) {
      const btn = el('button', { type: 'button', class: 'image-open', 'aria-label': `Open ${a.name ?? 'image'}` }, img);
      btn.addEventListener('click', () => void openImage(a));
      wrap.append(btn);
    } else wrap.append(img);
    if (m.body?.text) wrap.append(el('span', { class: 'text caption' }, String(m.body.text)));
    return wrap;
  }
  if (m.type === 'text') return el('span', { class: 'text' }, String(m.body?.text ?? ''));
  if (m.type === 'file' || m.type === 'audio' || m.type === 'video') return el('span', { class: 'text muted' }, `[${m.type} attachment]`);
  return el('span', { class: 'text muted' }, `[${m.type}]`);
}

async function openImage(a: Attachment): Promise<void> {
  const box = $('lightbox') as HTMLDialogElement;
  const img = $('lightbox-img') as HTMLImageElement;
  img.alt = a.name ?? 'Image';
  img.removeAttribute('src');
  box.showModal();
  try {
    img.src = await imageURL(a.url);
  } catch (e) {
    box.close();
    toast(`Could not open the image: ${errText(e)}`);
  }
}

// ---- message actions: react, edit, delete ------------------------------------

let editing: { conv: string; id: string; seq: number } | undefined;

function startEdit(c: Conv, m: Msg): void {
  editing = { conv: c.id, id: m.id, seq: m.seq };
  const input = $('composer-input') as HTMLTextAreaElement;
  input.value = String(m.body?.text ?? '');
  $('edit-bar').hidden = false;
  input.focus();
  autoGrow(input);
}

function endEdit(): void {
  editing = undefined;
  $('edit-bar').hidden = true;
}

async function msgOp(op: string, c: Conv, id: string, seq: number, extra: Record<string, unknown> = {}): Promise<void> {
  try {
    await client!.op(op, { conv: c.id, id, seq, ...extra });
  } catch (e) {
    const what = op === 'recall' ? 'delete' : op === 'unreact' ? 'remove the reaction' : op;
    toast(`Could not ${what}: ${e instanceof RequestError && e.code === 'too_late' ? 'it is too late for that' : errText(e)}`);
  }
}

const QUICK_REACTION = '👍';

function actions(c: Conv, m: Msg): HTMLElement {
  const bar = el('div', { class: 'actions', role: 'group', 'aria-label': 'Message actions' });
  const mineReacted = m.reactions?.some((r) => r.emoji === QUICK_REACTION && r.users?.includes(session!.user));
  const react = el('button', { type: 'button', class: 'act', 'data-act': 'react', 'aria-pressed': String(!!mineReacted), title: 'Like' }, QUICK_REACTION);
  react.setAttribute('aria-label', mineReacted ? 'Remove like' : 'Like');
  react.addEventListener('click', () => void msgOp(mineReacted ? 'unreact' : 'react', c, m.id, m.seq, { emoji: QUICK_REACTION }));
  bar.append(react);
  if (isMine(m)) {
    if (m.type === 'text') {
      const edit = el('button', { type: 'button', class: 'act', 'data-act': 'edit' }, 'Edit');
      edit.addEventListener('click', () => startEdit(c, m));
      bar.append(edit);
    }
    const del = el('button', { type: 'button', class: 'act', 'data-act': 'delete' }, 'Delete');
    del.addEventListener('click', () => {
      if (confirm('Delete this message for everyone?')) void msgOp('recall', c, m.id, m.seq);
    });
    bar.append(del);
  }
  return bar;
}

function renderMsg(c: Conv, m: Msg): HTMLElement {
  if (m.type === 'system') return el('li', { class: 'system', 'data-seq': String(m.seq) }, systemText(m));
  const mine = isMine(m);
  const li = el('li', { class: `msg ${mine ? 'mine' : 'theirs'}`, 'data-seq': String(m.seq), 'data-id': m.id });
  const bubble = el('div', { class: 'bubble' });
  if (!mine && c.info.kind !== 'direct') bubble.append(el('div', { class: 'author' }, m.from.user));
  bubble.append(m.recalled ? el('span', { class: 'text recalled' }, 'This message was deleted') : renderBody(m));
  if (m.reactions?.length) {
    bubble.append(
      el('div', { class: 'reactions' }, ...m.reactions.map((r) =>
        el('span', { class: 'reaction', title: (r.users ?? []).join(', ') }, `${r.emoji} ${r.count}`))),
    );
  }
  const meta = el('div', { class: 'meta' });
  if (m.edited && !m.recalled) meta.append(el('span', { class: 'edited' }, 'edited'));
  meta.append(el('time', { datetime: new Date(m.ts).toISOString() }, fmtTime(m.ts)));
  if (mine) {
    const st = status(c, m);
    meta.append(el('span', { class: `status ${st.cls}`, 'data-status': st.cls, 'aria-label': st.text, title: st.text }, st.cls === 'sent' ? '✓' : '✓✓'));
  }
  bubble.append(meta);
  li.append(bubble);
  if (!m.recalled && !m.ref) li.append(actions(c, m));
  return li;
}

function renderOut(c: Conv, o: OutMsg): HTMLElement {
  const li = el('li', { class: `msg mine ${o.state}`, 'data-cmid': o.cmid });
  const bubble = el('div', { class: 'bubble' }, renderBody({ ...o, attachment: o.attachment }));
  const meta = el('div', { class: 'meta' });
  if (o.state === 'failed') {
    const retry = el('button', { type: 'button', class: 'retry' }, 'Retry');
    retry.addEventListener('click', () => void deliver(c, o).then(render));
    meta.append(el('span', { class: 'status failed', 'data-status': 'failed', role: 'alert' }, `Not sent${o.error ? `: ${o.error}` : ''}`), retry);
  } else {
    meta.append(el('span', { class: 'status sending', 'data-status': 'sending' }, o.file && !o.attachment ? 'Uploading…' : 'Sending…'));
  }
  bubble.append(meta);
  li.append(bubble);
  return li;
}

let toastTimer: ReturnType<typeof setTimeout> | undefined;
export function toast(text: string): void {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 6000);
}

// ---- routing ---------------------------------------------------------------

function route(): void {
  const admin = location.hash.startsWith('#/admin');
  if (admin) {
    $('login-view').hidden = true;
    $('chat-view').hidden = true;
    $('admin-view').hidden = false;
    startAdmin();
    return;
  }
  stopAdmin();
  $('admin-view').hidden = true;
  if (!session) {
    showLogin();
    return;
  }
  $('chat-view').hidden = false;
  render();
}

setInterval(() => {
  // expire typing indicators
  const now = Date.now();
  let changed = false;
  for (const c of convs.values()) {
    for (const [u, until] of c.typing) {
      if (until <= now) {
        c.typing.delete(u);
        changed = true;
      }
    }
  }
  if (changed) scheduleRender();
}, 500);

setupLogin();
setupComposer();
window.addEventListener('hashchange', route);
const saved = loadSession();
if (saved) {
  void claimDevice(saved, 3000).then((ok) => {
    if (ok) return startChat(saved);
    // A duplicated tab: its copy of the session belongs to the first tab.
    saveSession(undefined);
    showLogin('Warbler is open in another tab with this sign-in. Sign in again to use it here as well.');
  });
} else route();
