-- An aggregation a dashboard sends: an indexed $match (one category of
-- 100, so 1,000 documents at 100k) and a $group with $sum.
math.randomseed(os.time() + 3)
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = string.format(
    '{"pipeline":[{"$match":{"category":"c%d"}},{"$group":{"_id":null,"total":{"$sum":"$price"},"n":{"$sum":1}}}]}',
    math.random(0, 99))
  return wrk.format("POST", "/v1/collections/items/aggregate", nil, body)
end
