-- Create a validated document (server-generated id).
math.randomseed(os.time() + 2)
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local body = string.format('{"category":"c%d","name":"bench item","price":%d.5,"qty":%d}',
    math.random(0, 99), math.random(1, 500), math.random(1, 50))
  return wrk.format("POST", "/v1/collections/items/documents", headers, body)
end
