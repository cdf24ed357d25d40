-- Create a validated document (server-generated id). The Content-Type goes
-- into wrk.headers (which also holds -H Authorization): a headers table
-- passed to wrk.format would replace them all.
math.randomseed(os.time() + 2)
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = string.format('{"category":"c%d","name":"bench item","price":%d.5,"qty":%d}',
    math.random(0, 99), math.random(1, 500), math.random(1, 50))
  return wrk.format("POST", "/v1/collections/items/documents", nil, body)
end
