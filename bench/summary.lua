-- Shared by the bench scripts: per-thread non-2xx counts and one JSON summary line for bench/wrk.py.
-- Script arguments (after wrk's --): USERS NONCE [script-specific...].

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

-- A global in each thread's Lua state, so done() can read it with thread:get.
non_2xx = 0

function response(status, headers, body)
   if status < 200 or status > 299 then
      non_2xx = non_2xx + 1
   end
end

function done(summary, latency, requests)
   local non_2xx_total = 0
   for _, thread in ipairs(threads) do
      non_2xx_total = non_2xx_total + thread:get("non_2xx")
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_SUMMARY {"requests":%d,"duration_us":%d,"non_2xx":%d,'
         .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
         .. '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, non_2xx_total,
      errors.connect, errors.read, errors.write, errors.timeout,
      math.floor(latency:percentile(50)), math.floor(latency:percentile(99)), latency.max))
end

-- Seeded emails, in the format of bench/seed.py's seeded_email.
function seeded_email(index)
   return string.format("user%06d@example.com", index)
end

