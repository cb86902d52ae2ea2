-- POST /auth/token with the pre-signed request bodies of $BENCH_BODIES (one a line, made by
-- benches/token/assertions.py), each used once: thread k of n sends lines k, k+n, k+2n, ...
-- and stops when its share is used up (a second use would be a jti replay, refused).
-- done() prints the answers by status, so refusals show.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local bodies = {}
local next_body = 1
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Accept"] = "application/json" }

function init(args)
  local path = os.getenv("BENCH_BODIES")
  local n = tonumber(os.getenv("BENCH_THREADS") or "2")
  local i = 0
  for line in io.lines(path) do
    if i % n == id then bodies[#bodies + 1] = line end
    i = i + 1
  end
  ok, refused, other, exhausted = 0, 0, 0, 0
end

function request()
  if next_body > #bodies then
    exhausted = 1
    wrk.thread:stop()
    next_body = #bodies
  end
  local b = bodies[next_body]
  next_body = next_body + 1
  return wrk.format("POST", wrk.path, headers, b)
end

function response(status, hdrs, body)
  if status == 200 then ok = ok + 1
  elseif status == 400 or status == 401 then refused = refused + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local o, r, x, e = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); r = r + t:get("refused"); x = x + t:get("other"); e = e + t:get("exhausted")
  end
  io.write(string.format("answers: %d 200, %d 400/401, %d other; threads that used up their bodies: %d\n", o, r, x, e))
  io.write(string.format("tokens/s: %.0f\n", o / (summary.duration / 1e6)))
  if e > 0 then
    io.write("!! assertions used up before the end: wrk still counts the whole duration, so tokens/s is a lower bound; raise the number of assertions\n")
  end
end
