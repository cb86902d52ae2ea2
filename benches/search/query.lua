-- wrk script for the search benchmark: picks a random patient number per request
-- and fills it into the query template QUERY (env), where {n} is the patient number
-- (0..PATIENTS-1), {mrn} its MRN and {prefix} a family-name prefix.
-- Every response must be 200 with a searchset; anything else is counted as an error.
local template = os.getenv("QUERY")
local patients = tonumber(os.getenv("PATIENTS") or "100000")
local prefixes = {"Smi", "Joh", "Wil", "Bro", "Gar", "Mil", "Dav", "Rod", "Mar", "Her", "Lop",
                  "Gon", "And", "Tho", "Tay", "Moo", "Jac", "Lee", "Per", "Whi", "Har", "San",
                  "Cla", "Ram", "Lew", "Rob", "Wal", "You", "All", "Kin", "Wri", "Sco", "Tor",
                  "Ngu", "Hil", "Flo", "Gre", "Ada", "Nel", "Bak", "Hal", "Riv", "Cam", "Mit",
                  "Car", "Mül", "Sch", "Fis", "Web", "Mey", "Wag", "Bec", "Cha", "Dub", "Ros"}
local bad = 0

function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end

local function encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function request()
  local n = math.random(0, patients - 1)
  local q = template
    :gsub("{n}", tostring(n))
    :gsub("{mrn}", string.format("MRN%07d", n))
    :gsub("{prefix}", encode(prefixes[math.random(#prefixes)]))
  return wrk.format("GET", q)
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad <= 3 then print("unexpected status " .. status .. ": " .. body:sub(1, 300)) end
  end
end
