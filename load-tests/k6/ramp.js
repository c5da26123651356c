// Ramp: from 50 to 2,000 requests/s over 30 s, held for 10 s.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, checkEnvelope } from './lib.js';

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: 50, timeUnit: '1s',
      stages: [{ target: 2000, duration: '30s' }, { target: 2000, duration: '10s' }],
      preAllocatedVUs: 100, maxVUs: 500,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<50', 'p(99)<150'],
    dropped_iterations: ['count<100'],
  },
};

export default function () {
  const res = http.get(`${BASE}/api/orders/latest`);
  checkEnvelope(res);
  check(res, { 'status 200': (r) => r.status === 200 });
}
