// HTTP side of the Warbler API used by the web client: sign-in, token
// refresh, logout, and the operator routes of the admin view. Every call is
// same-origin and JSON; errors arrive as {"error": {"code", "message"}}.

/** A failed HTTP call, with the server's error code when it sent one. */
export class APIError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/** What POST /v1/apps/{app}/login and /refresh return. */
export interface Session {
  app: string;
  access_token: string;
  refresh_token: string;
  expires_at: string;
  refresh_expires_at: string;
  user: string;
  device: string;
  client_id: string;
  username: string;
  topics: { downlink: string; device: string; uplink: string };
}

/** call sends one JSON request and decodes the JSON answer. */
export async function call<T>(method: string, path: string, body?: unknown, bearer?: string): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new APIError(0, 'network', 'The server cannot be reached. Check your connection.');
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let data: any = undefined;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON: handled below */
  }
  if (!res.ok) {
    const e = data?.error ?? {};
    const ra = Number(res.headers.get('Retry-After') ?? '');
    throw new APIError(res.status, e.code ?? `http_${res.status}`, e.message ?? (text || res.statusText), ra > 0 ? ra : undefined);
  }
  return data as T;
}

export interface LoginInput {
  app: string;
  username: string;
  password: string;
  device?: string;
  totp?: string;
}

/** login signs in with a password and, when enabled, a TOTP code. */
export async function login(i: LoginInput): Promise<Session> {
  const body: Record<string, string> = { username: i.username, password: i.password };
  if (i.device) body.device = i.device;
  if (i.totp) body.totp = i.totp;
  const s = await call<Session>('POST', `/v1/apps/${encodeURIComponent(i.app)}/login`, body);
  return { ...s, app: i.app };
}

/** refresh trades a refresh token (usable once) for a new session. */
export async function refresh(app: string, refreshToken: string): Promise<Session> {
  const s = await call<Session>('POST', `/v1/apps/${encodeURIComponent(app)}/refresh`, { refresh_token: refreshToken });
  return { ...s, app };
}

/** logout revokes the access token's whole sign-in session. */
export async function logout(accessToken: string): Promise<void> {
  await call<void>('POST', '/v1/logout', undefined, accessToken);
}

/** Human text for the sign-in errors of the identity API. */
export function loginErrorText(e: unknown): string {
  if (!(e instanceof APIError)) return 'Sign-in failed.';
  switch (e.code) {
    case 'invalid_credentials':
      return 'Wrong username or password.';
    case 'mfa_required':
      return 'Enter the 6-digit code from your authenticator app.';
    case 'invalid_mfa':
      return 'That code is not valid. Try the current one.';
    case 'locked':
      return `Too many attempts. Try again in ${e.retryAfter ?? 60} seconds.`;
    case 'not_found':
      return 'No such app.';
    default:
      return e.message || 'Sign-in failed.';
  }
}
