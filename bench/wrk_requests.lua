-- wrk script: replays pre-signed, unique chatbuffer webhook requests from a file.
-- The file holds three lines per request: X-Chatwoot-Timestamp, X-Chatwoot-Signature, body.
-- wrk reads it once per thread at start, so signing costs nothing during the run.
local requests = {}
local next_index = 1

function init(args)
  local path = args[1]
  local file = assert(io.open(path, "r"))
  while true do
    local timestamp = file:read("*l")
    if not timestamp then break end
    local signature = file:read("*l")
    local body = file:read("*l")
    requests[#requests + 1] = wrk.format("POST", "/webhooks/chatwoot", {
      ["Content-Type"] = "application/json",
      ["X-Chatwoot-Timestamp"] = timestamp,
      ["X-Chatwoot-Signature"] = signature,
    }, body)
  end
  file:close()
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
