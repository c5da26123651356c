// Aggregate route: three backends in parallel, merged, at 200 requests/s for 20 s.
import http from 'k6/http';
import { check } from 'k6';
import { BASE, checkEnvelope } from './lib.js';

export const options = {
  scenarios: {
    aggregate: {
      executor: 'constant-arrival-rate',
      rate: 200, timeUnit: '1s', duration: '20s',
      preAllocatedVUs: 50, maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<50', 'p(99)<150'],
    checks: ['rate>0.99'],
  },
};

export default function () {
  const res = http.get(`${BASE}/api/home/42?lang=en`);
  checkEnvelope(res);
  check(res, {
    'status 200': (r) => r.status === 200,
    'all three backends': (r) => {
      const d = r.json('data');
      return d && d.profile && d.orders && d.recommend;
    },
  });
}
