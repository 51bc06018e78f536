// The admin view for an app's owner: the app's users (list, create), a
// push test, and live numbers from the server's Prometheus endpoint
// (/metrics). It authenticates every call with a key the owner pastes in:
// the operator's admin key or an app key with the "admin" scope. The key
// is kept in sessionStorage, i.e. in this tab only.

import { APIError, call } from './api';
import { $, el, fmtTime } from './dom';

const KEY = 'warbler.adminKey';

interface Creds {
  app: string;
  key: string;
}

interface User {
  id: string;
  display_name?: string;
  disabled: boolean;
  created_at: string;
}

let creds: Creds | undefined;
let timer: ReturnType<typeof setInterval> | undefined;
let wired = false;
let next = '';
let prev: { at: number; values: Map<string, number> } | undefined;

const path = (p: string) => `/v1/apps/${encodeURIComponent(creds!.app)}${p}`;

function errText(e: unknown): string {
  if (e instanceof APIError) {
    if (e.status === 401) return 'The key was not accepted.';
    if (e.status === 403) return 'This key lacks the scope for that (it needs "admin", or "users"/"push").';
    if (e.status === 404 && e.code === 'not_found') return e.message || 'Not found.';
    return e.message;
  }
  return String(e);
}

/** startAdmin shows the key form or, with a key, the panels. */
export function startAdmin(): void {
  if (!wired) wire();
  if (!creds) {
    try {
      creds = JSON.parse(sessionStorage.getItem(KEY) ?? 'null') ?? undefined;
    } catch {
      creds = undefined;
    }
  }
  if (creds) void open();
  else showForm();
}

/** stopAdmin stops polling when the view is left. */
export function stopAdmin(): void {
  clearInterval(timer);
  timer = undefined;
}

function showForm(message?: string): void {
  stopAdmin();
  $('admin-key-form').hidden = false;
  $('admin-panels').hidden = true;
  $('admin-lock').hidden = true;
  const err = $('admin-error');
  err.hidden = !message;
  err.textContent = message ?? '';
  ($('admin-key') as HTMLInputElement).focus();
}

async function open(): Promise<void> {
  try {
    await call('GET', path(''), undefined, creds!.key);
  } catch (e) {
    const msg = errText(e);
    creds = undefined;
    sessionStorage.removeItem(KEY);
    showForm(msg);
    return;
  }
  sessionStorage.setItem(KEY, JSON.stringify(creds));
  $('admin-key-form').hidden = true;
  $('admin-panels').hidden = false;
  $('admin-lock').hidden = false;
  $('users-title').textContent = `Users of ${creds!.app}`;
  next = '';
  $('users').replaceChildren();
  void loadUsers();
  void pollMetrics();
  clearInterval(timer);
  timer = setInterval(() => void pollMetrics(), 2000);
}

function wire(): void {
  wired = true;
  $('admin-key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const app = ($('admin-app') as HTMLInputElement).value.trim();
    const key = ($('admin-key') as HTMLInputElement).value.trim();
    if (!app || !key) {
      showForm('Enter the app and a key.');
      return;
    }
    creds = { app, key };
    ($('admin-key') as HTMLInputElement).value = '';
    void open();
  });
  $('admin-lock').addEventListener('click', () => {
    creds = undefined;
    sessionStorage.removeItem(KEY);
    showForm();
  });
  $('users-more').addEventListener('click', () => void loadUsers());
  $('user-create').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const id = ($('new-user-id') as HTMLInputElement).value.trim();
    const password = ($('new-user-password') as HTMLInputElement).value;
    const st = $('users-status');
    try {
      const body: Record<string, string> = { id };
      if (password) body.password = password;
      await call('POST', path('/users'), body, creds!.key);
      st.className = 'status ok';
      st.textContent = `Created ${id}.`;
      ($('new-user-id') as HTMLInputElement).value = '';
      ($('new-user-password') as HTMLInputElement).value = '';
      next = '';
      $('users').replaceChildren();
      await loadUsers();
    } catch (e) {
      st.className = 'status bad';
      st.textContent = `Could not create ${id}: ${errText(e)}`;
    }
  });
  $('push-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const st = $('push-status');
    const user = ($('push-user') as HTMLInputElement).value.trim();
    try {
      const r = await call<{ ids: string[] }>('POST', path('/push/test'), {
        user,
        title: ($('push-title-in') as HTMLInputElement).value,
        body: ($('push-body') as HTMLInputElement).value,
      }, creds!.key);
      st.className = 'status ok';
      st.textContent = r.ids.length
        ? `Queued ${r.ids.length} notification(s) for ${user}'s devices.`
        : `${user} has no device registered for push.`;
    } catch (e) {
      st.className = 'status bad';
      st.textContent = `Push test failed: ${errText(e)}`;
    }
  });
}

async function loadUsers(): Promise<void> {
  try {
    const q = new URLSearchParams({ limit: '50' });
    if (next) q.set('after', next);
    const r = await call<{ users: User[]; next: string }>('GET', path(`/users?${q}`), undefined, creds!.key);
    $('users').append(
      ...r.users.map((u) =>
        el('tr', {},
          el('td', {}, el('code', {}, u.id)),
          el('td', {}, u.display_name ?? ''),
          el('td', {}, el('span', { class: `pill ${u.disabled ? 'off' : 'on'}` }, u.disabled ? 'disabled' : 'active')),
          el('td', {}, fmtTime(Date.parse(u.created_at))),
        ),
      ),
    );
    if (!r.users.length && !next) $('users').append(el('tr', {}, el('td', { colspan: '4', class: 'empty' }, 'No users yet.')));
    next = r.next ?? '';
    $('users-more').hidden = !next;
  } catch (e) {
    $('users-status').className = 'status bad';
    $('users-status').textContent = errText(e);
  }
}

// Prometheus text format: "name{labels} value" lines; labelled series of
// one name are summed.
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    out.set(m[1], (out.get(m[1]) ?? 0) + v);
  }
  return out;
}

const SHOWN: [string, string, 'gauge' | 'rate' | 'total' | 'bytes'][] = [
  ['warbler_connections', 'Connected clients', 'gauge'],
  ['warbler_chat_messages_stored_total', 'Messages stored', 'total'],
  ['warbler_chat_messages_stored_total', 'Messages / s', 'rate'],
  ['warbler_messages_received_total', 'MQTT packets in / s', 'rate'],
  ['warbler_messages_sent_total', 'MQTT packets out / s', 'rate'],
  ['warbler_subscriptions', 'Subscriptions', 'gauge'],
  ['warbler_auth_refusals_total', 'Refused sign-ins', 'total'],
  ['warbler_store_free_bytes', 'Free disk', 'bytes'],
];

async function pollMetrics(): Promise<void> {
  let text: string;
  try {
    const res = await fetch('/metrics', { headers: { Accept: 'text/plain' } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    text = await res.text();
  } catch (e) {
    $('metrics-age').textContent = `(unavailable: ${e instanceof Error ? e.message : e})`;
    return;
  }
  const now = Date.now();
  const values = parseMetrics(text);
  const items: HTMLElement[] = [];
  for (const [name, label, how] of SHOWN) {
    if (!values.has(name)) continue;
    const v = values.get(name)!;
    let shown: string;
    if (how === 'rate') {
      const p = prev?.values.get(name);
      shown = p === undefined ? '…' : ((v - p) / ((now - prev!.at) / 1000)).toFixed(1);
    } else if (how === 'bytes') {
      shown = v >= 1 << 30 ? `${(v / (1 << 30)).toFixed(1)} GiB` : `${(v / (1 << 20)).toFixed(0)} MiB`;
    } else {
      shown = String(Math.round(v));
    }
    items.push(el('div', { class: 'metric', 'data-metric': `${name}:${how}` }, el('dt', {}, label), el('dd', {}, shown)));
  }
  prev = { at: now, values };
  $('metrics').replaceChildren(...items);
  $('metrics-age').textContent = `updated ${new Date(now).toLocaleTimeString()}`;
}
