-- wrk script: POST the body in PERF_BODY with the headers in PERF_HEADERS
-- ("Name: value|Name: value"), the same request perf/run gives oha and stream_load.
wrk.method = "POST"
wrk.body = os.getenv("PERF_BODY") or ""
for h in string.gmatch(os.getenv("PERF_HEADERS") or "", "[^|]+") do
  local name, value = string.match(h, "^%s*([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end
