// Rate limit: /api/limited/ allows a burst of 10 and 5 requests/s per client address
// (conf/gateway.yaml). At a constant 50 requests/s for 20 s, about (10 + 5 x 20) / 1000 pass:
// the share of 429s must be close to 89%, and every 429 must carry its headers.
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { BASE, checkEnvelope } from './lib.js';

const limited = new Rate('rate_limited');
const quotaHeaders = new Rate('quota_headers');

export const options = {
  scenarios: {
    limited: {
      executor: 'constant-arrival-rate',
      rate: 50, timeUnit: '1s', duration: '20s',
      preAllocatedVUs: 20, maxVUs: 50,
    },
  },
  thresholds: {
    rate_limited: ['rate>0.85', 'rate<0.93'],
    quota_headers: ['rate==1'],
    enveloped_errors: ['rate==1'],
    checks: ['rate==1'],
  },
};

export default function () {
  const res = http.get(`${BASE}/api/limited/1`);
  const body = checkEnvelope(res);
  limited.add(res.status === 429);
  const h = res.headers;
  quotaHeaders.add(h['Ratelimit-Limit'] !== undefined && h['Ratelimit-Remaining'] !== undefined
    && h['Ratelimit-Reset'] !== undefined && h['X-Ratelimit-Remaining'] !== undefined
    && (res.status !== 429 || h['Retry-After'] !== undefined));
  check(res, {
    'passed or limited': (r) => r.status === 200 || r.status === 429,
    '429 says why': (r) => r.status !== 429 || (body && body.message === 'rate limit exceeded'),
  });
}
