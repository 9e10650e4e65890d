-- wrk script for benchmarks/bench_envoy.py: every request carries the next bearer token
-- from a file (one token a line), so the authorizer sees one token (a file of one line)
-- or a different token on every request.
--
--   wrk -t THREADS ... -s wrk_tokens.lua URL -- TOKENS_FILE FIRST_INDEX HOST PATH THREADS
--
-- The requests are formatted once, in init(), so the per-request work in wrk is the same
-- for one token and for thousands. done() prints one JSON line (prefixed "WRKJSON ")
-- with the counts and latency percentiles in microseconds.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local tokens_file, first, host, path = args[1], tonumber(args[2]), args[3], args[4]
  step = tonumber(args[5])
  requests_of = {}
  for token in io.lines(tokens_file) do
    if #token > 0 then
      requests_of[#requests_of + 1] = wrk.format("GET", path, {
        ["Host"] = host,
        ["Authorization"] = "Bearer " .. token,
      })
    end
  end
  count = #requests_of
  -- Thread i of n takes the tokens first + i, first + i + n, ...
  index = first + id
  sent = 0
end

function request()
  local r = requests_of[(index % count) + 1]
  index = index + step
  sent = sent + 1
  return r
end

function done(summary, latency, requests)
  local sent_total, count_seen = 0, 0
  for _, thread in ipairs(threads) do
    sent_total = sent_total + (thread:get("sent") or 0)
    count_seen = thread:get("count") or count_seen
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "sent": %d, "tokens": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, sent_total, count_seen,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
