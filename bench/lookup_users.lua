-- POST /users/lookup of random seeded emails. Arguments: USERS NONCE HANDLES MISS_RATIO.
-- Each request names HANDLES users, each one missing (an email no user has) with MISS_RATIO.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local users, handles, miss_ratio

function init(args)
   users = tonumber(args[1])
   handles = tonumber(args[3])
   miss_ratio = tonumber(args[4])
   math.randomseed(os.time() * 1000 + id)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   local body = {}
   for n = 1, handles do
      local index = math.random(0, users - 1)
      if math.random() < miss_ratio then
         body[n] = string.format('"missing%06d@example.com"', index)
      else
         body[n] = '"' .. seeded_email(index) .. '"'
      end
   end
   return wrk.format(nil, "/users/lookup", nil, "[" .. table.concat(body, ",") .. "]")
end
