// WarblerClient is the MQTT side of the web client: one MQTT 5 connection
// over the same-origin WebSocket endpoint (/mqtt), the two subscriptions of
// a device (downlink and device topic), requests with "rid" answered on the
// device topic, sends with an outbox that survives reconnects, and sync
// after every (re)connect. It uses only what docs/PROTOCOL.md describes.

import mqtt from 'mqtt';
import type { MqttClient } from 'mqtt';
import { APIError, refresh, type Session } from './api';

export interface Msg {
  kind: 'msg';
  id: string;
  conv: string;
  seq: number;
  ts: number;
  from: { user: string; device?: string };
  cmid?: string;
  type: string;
  body: any;
  attachment?: Attachment;
  /** Set on events that act on an earlier message: edit, recall, reaction. */
  ref?: { id: string; seq: number };
  edited?: boolean;
  edits?: number[];
  recalled?: boolean;
  reactions?: { emoji: string; count: number; users?: string[] }[];
}

/** The server's description of an uploaded file (docs/PROTOCOL.md, "Attachments"). */
export interface Attachment {
  id: string;
  url: string;
  type: string;
  size: number;
  name?: string;
  width?: number;
  height?: number;
  thumb?: string;
  thumb_width?: number;
  thumb_height?: number;
}

export interface Receipt {
  kind: 'receipt';
  type: 'read' | 'delivered';
  conv: string;
  user: string;
  device?: string;
  seq: number;
  ts: number;
}

export interface ConvInfo {
  conv: string;
  kind: string;
  name?: string;
  role?: string;
  members: number;
  last_seq: number;
  read: number;
  /** Messages after read that count as new: not edits, reactions, call
   * signalling or most system events (docs/PROTOCOL.md, "Unread counts"). */
  unread: number;
  /** The server stopped counting at its scan bound: unread is a lower bound. */
  unread_more?: boolean;
}

/** A request the server refused, with its protocol error code. */
export class RequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type ConnState = 'connecting' | 'online' | 'reconnecting' | 'stopped';

export interface ClientEvents {
  state(s: ConnState, detail?: string): void;
  message(m: Msg, live: boolean): void;
  receipt(r: Receipt): void;
  convs(c: ConvInfo[]): void;
  /** Any other envelope on the downlink (typing and later additions). */
  other(e: any): void;
  /** The session cannot be renewed: the user must sign in again. */
  expired(reason: string): void;
  session(s: Session): void;
  synced(): void;
}

interface Pending {
  resolve(v: any): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

const REQUEST_TIMEOUT = 10_000;

let ridCounter = 0;
/** newID returns a fresh client-side identifier (cmid, rid). */
export function newID(prefix = ''): string {
  const rnd = crypto.getRandomValues(new Uint8Array(6));
  const s = Array.from(rnd, (b) => b.toString(36).padStart(2, '0')).join('');
  return `${prefix}${Date.now().toString(36)}-${s}-${(ridCounter++).toString(36)}`;
}

export class WarblerClient {
  private c?: MqttClient;
  private pending = new Map<string, Pending>();
  private handlers: { [K in keyof ClientEvents]?: ClientEvents[K][] } = {};
  private stopped = true;
  private attempt = 0;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private authFailures = 0;
  private syncing?: Promise<void>;
  private resync = false;
  state: ConnState = 'stopped';

  constructor(public session: Session) {}

  on<K extends keyof ClientEvents>(ev: K, f: ClientEvents[K]): void {
    (this.handlers[ev] ??= [] as any).push(f);
  }

  private emit<K extends keyof ClientEvents>(ev: K, ...args: Parameters<ClientEvents[K]>): void {
    for (const f of this.handlers[ev] ?? []) (f as any)(...args);
  }

  private setState(s: ConnState, detail?: string): void {
    this.state = s;
    this.emit('state', s, detail);
  }

  /** start connects and keeps the connection up until stop. */
  start(): void {
    this.stopped = false;
    this.setState('connecting');
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.failPending(new RequestError('offline', 'signed out'));
    this.c?.end(true);
    this.c = undefined;
    this.setState('stopped');
  }

  /** reconnectNow skips the back-off wait (the "retry now" button). */
  reconnectNow(): void {
    if (this.stopped || this.state === 'online') return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    void this.connect();
  }

  /**
   * token returns an access token for an HTTP call, refreshing the session
   * first if the token is about to expire (or force is set, after a 401).
   */
  async token(force = false): Promise<string> {
    if (force || Date.parse(this.session.expires_at) - Date.now() < 60_000) {
      this.session = await refresh(this.session.app, this.session.refresh_token);
      this.emit('session', this.session);
    }
    return this.session.access_token;
  }

  /**
   * authFetch is fetch with the user's access token, retried once with a
   * refreshed token when the server answers 401.
   */
  async authFetch(path: string, init: RequestInit = {}): Promise<Response> {
    for (let i = 0; ; i++) {
      const headers = new Headers(init.headers);
      headers.set('Authorization', `Bearer ${await this.token(i > 0)}`);
      const res = await fetch(path, { ...init, headers });
      if (res.status !== 401 || i > 0) return res;
    }
  }

  private async freshSession(force: boolean): Promise<boolean> {
    const exp = Date.parse(this.session.expires_at);
    if (!force && exp - Date.now() > 60_000) return true;
    try {
      this.session = await refresh(this.session.app, this.session.refresh_token);
      this.emit('session', this.session);
      return true;
    } catch (e) {
      if (e instanceof APIError && e.status >= 400 && e.status < 500) {
        this.stop();
        this.emit('expired', 'Your session has expired. Please sign in again.');
        return false;
      }
      // The server is unreachable: keep trying to reconnect.
      this.scheduleRetry('The server cannot be reached.');
      return false;
    }
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    if (!(await this.freshSession(this.authFailures > 0))) return;
    if (this.stopped) return;
    const s = this.session;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/mqtt`;
    const c = mqtt.connect(url, {
      protocolVersion: 5,
      clientId: s.client_id,
      username: s.username,
      password: s.access_token,
      clean: true,
      reconnectPeriod: 0, // reconnects are ours: each needs a fresh token
      connectTimeout: 10_000,
      keepalive: 30,
      resubscribe: false,
    });
    this.c = c;
    let lastError = '';
    c.on('connect', () => {
      if (this.c !== c) return;
      this.authFailures = 0;
      c.subscribe([s.topics.downlink, s.topics.device], { qos: 1 }, (err, granted) => {
        if (this.c !== c) return;
        if (err || granted?.some((g) => g.qos >= 0x80)) {
          lastError = 'subscription refused';
          c.end(true);
          return;
        }
        this.attempt = 0;
        this.setState('online');
        void this.sync();
      });
    });
    c.on('message', (topic, payload) => {
      if (this.c !== c) return;
      let e: any;
      try {
        e = JSON.parse(new TextDecoder().decode(payload));
      } catch {
        return;
      }
      this.dispatch(topic, e);
    });
    c.on('error', (err: any) => {
      lastError = err?.message ?? String(err);
      // 0x87 at CONNECT: token refused (expired, revoked): refresh once.
      if (err?.code === 0x87 || err?.code === 5 || err?.code === 0x86) this.authFailures++;
    });
    c.on('disconnect', (p: any) => {
      if (p?.reasonCode === 0x87) {
        // The server revoked the session (logout elsewhere, password change).
        this.authFailures = 2;
      }
    });
    c.on('close', () => {
      if (this.c !== c) return;
      this.c = undefined;
      c.removeAllListeners('close');
      c.end(true);
      this.failPending(new RequestError('offline', 'connection lost'));
      if (this.stopped) return;
      if (this.authFailures >= 2) {
        this.stop();
        this.emit('expired', 'Your session has ended. Please sign in again.');
        return;
      }
      this.scheduleRetry(lastError || 'connection lost');
    });
  }

  private scheduleRetry(detail: string): void {
    if (this.stopped) return;
    const wait = Math.min(10_000, 500 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt = Math.min(this.attempt + 1, 6);
    this.setState('reconnecting', detail);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.connect(), wait);
  }

  private failPending(e: Error): void {
    for (const [rid, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(rid);
    }
  }

  private dispatch(topic: string, e: any): void {
    if (topic === this.session.topics.device) {
      if ((e.kind === 'reply' || e.kind === 'error') && e.rid) {
        const p = this.pending.get(e.rid);
        if (!p) return;
        this.pending.delete(e.rid);
        clearTimeout(p.timer);
        if (e.kind === 'reply') p.resolve(e.result ?? {});
        else p.reject(new RequestError(e.error?.code ?? 'internal', e.error?.message ?? 'request failed'));
        return;
      }
      if (e.kind === 'sync') {
        void this.sync();
        return;
      }
    }
    switch (e.kind) {
      case 'msg':
        this.emit('message', e as Msg, true);
        break;
      case 'receipt':
        this.emit('receipt', e as Receipt);
        break;
      default:
        this.emit('other', e);
    }
  }

  get online(): boolean {
    return this.state === 'online' && !!this.c?.connected;
  }

  /**
   * publish sends one request (or a send) to the uplink at QoS 1 with a
   * fresh rid, and resolves with the answer's result.
   */
  request<T = any>(payload: Record<string, unknown>, timeout = REQUEST_TIMEOUT): Promise<T> {
    const c = this.c;
    if (!c || !this.online) return Promise.reject(new RequestError('offline', 'not connected'));
    const rid = newID('r');
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new RequestError('timeout', 'the server did not answer in time'));
      }, timeout);
      this.pending.set(rid, { resolve, reject, timer });
      c.publish(this.session.topics.uplink, JSON.stringify({ ...payload, rid }), { qos: 1 }, (err) => {
        if (!err) return;
        const p = this.pending.get(rid);
        if (!p) return;
        // A PUBACK with an error reason code: the error envelope carries
        // the details and normally arrives first; this is the fallback.
        this.pending.delete(rid);
        clearTimeout(p.timer);
        const code = (err as any).code;
        reject(new RequestError(code === 0x97 ? 'quota_exceeded' : code === 0x87 ? 'forbidden' : 'refused', err.message));
      });
    });
  }

  /**
   * notify publishes a request that needs no answer (a typing notice) at
   * QoS 0; it is dropped while offline.
   */
  notify(payload: Record<string, unknown>): void {
    if (!this.c || !this.online) return;
    this.c.publish(this.session.topics.uplink, JSON.stringify(payload), { qos: 0 });
  }

  /** op sends a request {"op": name, ...fields}. */
  op<T = any>(name: string, fields: Record<string, unknown> = {}): Promise<T> {
    return this.request<T>({ op: name, ...fields });
  }

  /**
   * sync fetches everything this device missed, page by page, then marks
   * each conversation delivered up to where it got. Concurrent calls
   * coalesce into one more run.
   */
  sync(): Promise<void> {
    if (this.syncing) {
      this.resync = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.resync = false;
          await this.syncOnce();
        } while (this.resync && this.online);
        this.emit('synced');
      } catch {
        // offline or refused: the next (re)connect syncs again
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private async syncOnce(): Promise<void> {
    let cursors: Record<string, number> | undefined;
    const got = new Map<string, number>();
    for (let page = 0; page < 1000; page++) {
      const r = await this.op<{ convs?: ConvInfo[]; messages: Msg[]; cursors: Record<string, number>; more: boolean }>(
        'sync',
        cursors ? { cursors, limit: 200 } : { limit: 200 },
      );
      if (r.convs) this.emit('convs', r.convs);
      for (const m of r.messages ?? []) {
        this.emit('message', m, false);
        got.set(m.conv, Math.max(got.get(m.conv) ?? 0, m.seq));
      }
      cursors = r.cursors;
      if (!r.more) break;
    }
    for (const [conv, seq] of got) await this.op('delivered', { conv, seq }).catch(() => undefined);
  }
}
