// Spike: 100 requests/s, then 3,000/s within 2 s for 10 s, then back.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, checkEnvelope } from './lib.js';

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: 100, timeUnit: '1s',
      stages: [
        { target: 100, duration: '5s' },
        { target: 3000, duration: '2s' },
        { target: 3000, duration: '10s' },
        { target: 100, duration: '2s' },
        { target: 100, duration: '5s' },
      ],
      preAllocatedVUs: 200, maxVUs: 800,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(99)<300'],
    enveloped_errors: ['rate==1'],
  },
};

export default function () {
  const res = http.get(`${BASE}/api/users/7`);
  checkEnvelope(res);
  check(res, { 'status 200': (r) => r.status === 200 });
}
