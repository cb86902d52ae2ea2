-- POST /fhir/Observation, the code chosen among CODES codes (bench-code-1..N) per request,
-- so notifications spread over that many subscriptions.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Prefer"] = "return=minimal"
local codes = tonumber(os.getenv("CODES") or "100")
math.randomseed(os.time())
request = function()
  local c = math.random(1, codes)
  local body = '{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],'
    .. '"code":{"coding":[{"system":"urn:bench","code":"bench-code-' .. c .. '"}]},'
    .. '"subject":{"reference":"Patient/p' .. c .. '"},"effectiveDateTime":"2026-12-04T10:00:00Z",'
    .. '"valueQuantity":{"value":' .. c .. ',"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}'
  return wrk.format(nil, nil, nil, body)
end

-- DELAY_MS (default 0): each connection waits that long before its next request, so a
-- few connections make a steady load below saturation (the "steady" phase of run.sh).
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end
