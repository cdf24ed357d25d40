-- List with an equality filter on the indexed field, 10 per page.
math.randomseed(os.time() + 1)
request = function()
  local c = math.random(0, 99)
  return wrk.format("GET", "/v1/collections/items/documents?limit=10&filter=%7B%22category%22%3A%22c" .. c .. "%22%7D")
end
