// Steady load: a constant 500 requests/s on a proxied route for 30 s.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, checkEnvelope } from './lib.js';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: 500, timeUnit: '1s', duration: '30s',
      preAllocatedVUs: 50, maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(95)<20', 'p(99)<50'],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const res = http.get(`${BASE}/api/users/42`);
  checkEnvelope(res);
  check(res, { 'status 200': (r) => r.status === 200 });
}
