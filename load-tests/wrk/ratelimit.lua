-- The rate-limited route (token bucket: 10 at once, then 5 a second per client address):
-- under load nearly every answer is 429, and the share shows in the status table.
dofile("load-tests/wrk/lib.lua")
wrk.path = "/api/limited/1"
