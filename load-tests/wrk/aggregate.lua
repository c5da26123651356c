-- The aggregate route: three backends called in parallel and merged.
dofile("load-tests/wrk/lib.lua")
wrk.path = "/api/home/42?lang=en"
