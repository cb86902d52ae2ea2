-- POST /fhir/Patient with a small US-style patient.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Prefer"] = "return=minimal"
wrk.body = '{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"B-1"}],"name":[{"family":"Bench","given":["Load"]}],"gender":"male","birthDate":"1980-05-05","telecom":[{"system":"phone","value":"555-0100"}]}'
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
