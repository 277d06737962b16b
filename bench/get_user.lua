-- GET /users/{email} on random seeded emails. Arguments: USERS NONCE [MISS_RATIO].
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local users, miss_ratio

function init(args)
   users = tonumber(args[1])
   miss_ratio = tonumber(args[3] or "0")
   math.randomseed(os.time() * 1000 + id)
end

function request()
   local index = math.random(0, users - 1)
   if miss_ratio > 0 and math.random() < miss_ratio then
      return wrk.format("GET", string.format("/users/missing%06d@example.com", index))
   end
   return wrk.format("GET", "/users/" .. seeded_email(index))
end
