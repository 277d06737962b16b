-- GET /users pages. Arguments: USERS NONCE MODE LIMIT, MODE being first, after, offset or q.
-- after and offset pick a random depth in the back half of the seeded users; q searches
-- for four random digits, which about 0.3% of the seeded users hold in their email or name.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local users, mode, limit

function init(args)
   users = tonumber(args[1])
   mode = args[3]
   limit = tonumber(args[4])
   math.randomseed(os.time() * 1000 + id)
end

function request()
   if mode == "first" then
      return wrk.format("GET", string.format("/users?limit=%d", limit))
   end
   if mode == "q" then
      return wrk.format("GET", string.format("/users?q=%04d&limit=%d", math.random(0, 9999), limit))
   end
   local depth = math.random(math.floor(users / 2), users - 1)
   if mode == "after" then
      return wrk.format("GET", string.format("/users?after=%s&limit=%d", seeded_email(depth), limit))
   end
   return wrk.format("GET", string.format("/users?offset=%d&limit=%d", depth, limit))
end
