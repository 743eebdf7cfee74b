-- wrk script: POST distinct, signed and encrypted WeChat pushes, cycling through a file.
--
-- File (env BENCH_PUSHES): one record per push:  "<path?query>\t<body length>\n<body>\n"
-- Each request takes the next push (threads stride through the file: thread k of n takes
-- k, k+n, k+2n, ...). When the file is exhausted the script wraps around; the wraps are
-- reported, and any request after a wrap is a duplicate push (csbot dedups it).
--
-- done() prints one line "BENCH_JSON {...}" with latency percentiles (µs), status counts
-- (from the response() hook) and wrk's socket errors.

local threads = {}
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

local reqs = {}
local n = 0
local idx = 0
statuses = {}
sent = 0
wraps = 0

function init(args)
   local path = os.getenv("BENCH_PUSHES")
   local f = assert(io.open(path, "rb"))
   while true do
      local header = f:read("*l")
      if header == nil or header == "" then break end
      local tab = header:find("\t", 1, true)
      local url = header:sub(1, tab - 1)
      local len = tonumber(header:sub(tab + 1))
      local body = f:read(len)
      f:read(1) -- the newline after the body
      n = n + 1
      if (n - 1) % nthreads == tid then
         reqs[#reqs + 1] = wrk.format("POST", url, {["Content-Type"] = "text/xml"}, body)
      end
   end
   f:close()
   n = #reqs
   loaded = n
   idx = 0
end

function request()
   idx = idx + 1
   if idx > n then
      idx = 1
      wraps = wraps + 1
   end
   sent = sent + 1
   return reqs[idx]
end

function response(status, headers, body)
   local k = tostring(status)
   statuses[k] = (statuses[k] or 0) + 1
end

local function json_table(t)
   local parts = {}
   for k, v in pairs(t) do parts[#parts + 1] = string.format("%q:%d", tostring(k), v) end
   return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
   local agg, total_sent, total_wraps, per_thread = {}, 0, 0, 0
   for _, t in ipairs(threads) do
      local st = t:get("statuses") or {}
      for k, v in pairs(st) do agg[k] = (agg[k] or 0) + v end
      total_sent = total_sent + (t:get("sent") or 0)
      total_wraps = total_wraps + (t:get("wraps") or 0)
      per_thread = per_thread + (t:get("loaded") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"sent":%d,"pushes_loaded":%d,"wraps":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"statuses":%s,' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.duration, summary.requests, summary.bytes, total_sent, per_thread, total_wraps,
      e.connect, e.read, e.write, e.status, e.timeout, json_table(agg),
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
