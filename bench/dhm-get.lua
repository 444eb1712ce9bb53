-- dhashmap: GET /v1/kv/bench%08d, random key of 100,000 (preload them first:
-- a missing key is a 404, which wrk counts as a non-2xx response).
-- wrk -t2 -c50 -d10s --latency -s bench/dhm-get.lua http://127.0.0.1:18080
local NK = 100000
local paths = {}
for i = 0, NK - 1 do paths[i] = string.format("/v1/kv/bench%08d", i) end
setup = function(t) t:set("id", math.random(1, 1e6)) end
init = function() math.randomseed(tonumber(id) or os.time()) end
request = function()
  return wrk.format("GET", paths[math.random(0, NK - 1)])
end
