-- GET a random seeded document by id (ids d0000000 .. d{N-1}).
local n = tonumber(os.getenv("BENCH_N") or "1000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/collections/items/documents/d%07d", math.random(0, n - 1)))
end
