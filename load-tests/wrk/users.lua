-- A proxied route with weighted round robin (conf/gateway.yaml: users).
dofile("load-tests/wrk/lib.lua")
wrk.path = "/api/users/42"
