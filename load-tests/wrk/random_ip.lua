-- Every request from another client address: X-Forwarded-For carries a random IPv4
-- address (the gateway believes it from a trusted proxy). Used to flood a rate limit keyed
-- by `ip` with distinct keys and watch the gateway's memory stay flat.
--   wrk -t1 -c50 -d30s -s load-tests/wrk/random_ip.lua http://127.0.0.1:8080/api/limited/
local seed = os.time()

function setup(thread)
  seed = seed + 1
  thread:set("seed", seed)
end

function init(args)
  math.randomseed(seed)
end

function request()
  local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255),
    math.random(0, 255), math.random(1, 254))
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip })
end
