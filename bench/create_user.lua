-- POST /users with fresh emails. Arguments: USERS NONCE.
-- Emails hold the run's nonce, the thread id and a counter, so no two requests of any round collide.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local nonce
local counter = 0

function init(args)
   nonce = args[2]
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   local body = string.format('{"name":"Bench User","email":"new-%s-%d-%d@example.com"}', nonce, id, counter)
   return wrk.format(nil, "/users", nil, body)
end
