-- wrk script: POST pre-signed JobServ webhooks to /webhook, a different body per request.
-- wrk's Lua has no HMAC, so the bodies are signed beforehand (bench/common.py) into a file
-- of lines "<X-JobServ-Sig value>\t<body>"; the path is the script's first argument:
--   wrk -t1 -c32 -d10s -s bench/post_signed.lua http://127.0.0.1:PORT -- bodies.tsv
-- When the file runs out the bodies repeat (the bridge answers a repeat 200 and stores
-- nothing), so the caller sizes the file above what one run can send and checks the store.

local prepared = {}
local total = 0
local sent = 0

function init(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    local headers = {
      ["Content-Type"] = "application/json",
      ["X-JobServ-Sig"] = line:sub(1, tab - 1),
    }
    total = total + 1
    prepared[total] = wrk.format("POST", "/webhook", headers, line:sub(tab + 1))
  end
end

function request()
  sent = sent + 1
  return prepared[(sent - 1) % total + 1]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
