-- A constant response through the whole middleware stack.
request = function()
  return wrk.format("GET", "/healthz")
end
