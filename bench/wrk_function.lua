-- wrk script of bench/functions.py: POST one JSON body with a Bearer token (wrk ... -- TOKEN BODY_FILE)
local token, body = nil, nil

function init(args)
  token = args[1]
  local f = assert(io.open(args[2], "rb"))
  body = f:read("*a")
  f:close()
end

function request()
  local headers = { ["Content-Type"] = "application/json" }
  if token ~= nil and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  return wrk.format("POST", nil, headers, body)
end
