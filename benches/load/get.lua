-- GET /fhir/Patient/{id} over the ids in $BENCH_IDS, in random order.
local ids = {}
local path = os.getenv("BENCH_IDS")
for line in io.lines(path) do ids[#ids + 1] = line end
math.randomseed(os.time())
-- $BENCH_TOKEN (when set): the bearer token of every request.
local headers = { ["Accept"] = "application/fhir+json" }
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
request = function()
  return wrk.format("GET", wrk.path .. "/Patient/" .. ids[math.random(#ids)], headers)
end
