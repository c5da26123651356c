-- Shared by the wrk scripts (run wrk from the repository root): counts answers by status
-- across wrk's threads and prints the latency distribution at the end.
--   wrk -t2 -c50 -d30s -s load-tests/wrk/users.lua http://127.0.0.1:8080
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write("latency distribution (ms)\n")
  for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
    io.write(string.format("  p%-5s %9.3f\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("  max    %9.3f\n", latency.max / 1000))
  local total, counts = 0, {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
      total = total + n
    end
  end
  io.write("answers by status\n")
  for status, n in pairs(counts) do
    io.write(string.format("  %d  %d (%.1f%%)\n", status, n, 100 * n / math.max(total, 1)))
  end
end
