-- dhashmap: PUT /v1/kv/bench%08d, random key of 100,000, 100-byte body.
-- wrk -t2 -c50 -d10s --latency -s bench/dhm-put.lua http://127.0.0.1:18080
local NK = 100000
local body = string.rep("v", 100)
local hdr = {["Content-Type"] = "application/octet-stream"}
local paths = {}
for i = 0, NK - 1 do paths[i] = string.format("/v1/kv/bench%08d", i) end
setup = function(t) t:set("id", math.random(1, 1e6)) end
init = function() math.randomseed(tonumber(id) or os.time()) end
request = function()
  return wrk.format("PUT", paths[math.random(0, NK - 1)], hdr, body)
end
