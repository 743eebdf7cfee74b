-- wrk script of bench/db_bench.py: POST /cloud/db/orders/get {"where": {"status": "s<random>"},
-- "limit": 20} with a Bearer token (wrk ... -- TOKEN STATUSES); prints one JSON line of figures.
local token, statuses = nil, 1000

function init(args)
  token = args[1]
  statuses = tonumber(args[2] or "1000")
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
end

function request()
  local headers = { ["Content-Type"] = "application/json" }
  if token ~= nil and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  local body = string.format('{"where":{"status":"s%d"},"limit":20}', math.random(0, statuses - 1))
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "per_second": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non2xx, errors))
end
