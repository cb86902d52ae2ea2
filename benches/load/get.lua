-- GET /fhir/Patient/{id} over the ids in $BENCH_IDS, in random order.
local ids = {}
local path = os.getenv("BENCH_IDS")
for line in io.lines(path) do ids[#ids + 1] = line end
math.randomseed(os.time())
request = function()
  return wrk.format("GET", wrk.path .. "/Patient/" .. ids[math.random(#ids)], { ["Accept"] = "application/fhir+json" })
end
