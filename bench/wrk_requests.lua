-- wrk script: replays pre-signed, unique chatbuffer webhook requests from a file.
-- Per request the file holds: the path, the number of headers, one "Name: value" line per
-- header, then the body on one line (bench/ingest.py writes it).
-- wrk reads it once per thread at start, so signing costs nothing during the run.
local requests = {}
local next_index = 1

function init(args)
  local path = args[1]
  local file = assert(io.open(path, "r"))
  while true do
    local target = file:read("*l")
    if not target then break end
    local headers = {}
    for _ = 1, tonumber(file:read("*l")) do
      local name, value = file:read("*l"):match("^([^:]+): (.*)$")
      headers[name] = value
    end
    local body = file:read("*l")
    requests[#requests + 1] = wrk.format("POST", target, headers, body)
  end
  file:close()
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
