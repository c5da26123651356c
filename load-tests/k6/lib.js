// Shared by the scenarios: where the gateway is, and the check that every answer the
// gateway gives itself is the JSON envelope {code, message, data} with code = status.
import { Rate } from 'k6/metrics';

export const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
export const ADMIN = __ENV.ADMIN || 'http://127.0.0.1:9090';

export const enveloped = new Rate('enveloped_errors');

// Record whether a non-2xx answer is enveloped; returns the parsed body (or null).
export function checkEnvelope(res) {
  if (res.status >= 200 && res.status < 300) {
    return null;
  }
  let body = null;
  try {
    body = res.json();
  } catch (e) {
    body = null;
  }
  const ok = body !== null && body.code === res.status && typeof body.message === 'string'
    && 'data' in body && res.headers['X-Request-Id'] !== undefined;
  enveloped.add(ok);
  return body;
}
