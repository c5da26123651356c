// Chaos: 50 requests/s for 40 s to a route whose upstream (orders) the runner kills at 8 s
// and restarts at 18 s. Its breaker opens (503 "circuit breaker open" without touching
// orders), then closes again after the restart. Every error must be enveloped.
import http from 'k6/http';
import { Counter } from 'k6/metrics';
import { BASE, checkEnvelope } from './lib.js';

const breakerOpen = new Counter('breaker_open_answers');
const okAfterRestart = new Counter('ok_after_restart');
const start = Date.now();

export const options = {
  scenarios: {
    chaos: {
      executor: 'constant-arrival-rate',
      rate: 50, timeUnit: '1s', duration: '40s',
      preAllocatedVUs: 20, maxVUs: 100,
    },
  },
  thresholds: {
    enveloped_errors: ['rate==1'],
    breaker_open_answers: ['count>0'],
    ok_after_restart: ['count>100'],
    http_req_duration: ['p(99)<2500'],
  },
};

export default function () {
  const res = http.get(`${BASE}/api/orders/1`);
  const body = checkEnvelope(res);
  if (res.status === 503 && body && body.message === 'circuit breaker open') {
    breakerOpen.add(1);
  }
  if (res.status === 200 && Date.now() - start > 30000) {
    okAfterRestart.add(1);
  }
}
