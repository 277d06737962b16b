-- GET /groups/{id}/members/{email} on random seeded emails, each a member when the
-- group holds the first MEMBERS seeded users. Arguments: USERS NONCE GROUP MEMBERS.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local group, members

function init(args)
   group = args[3]
   members = tonumber(args[4])
   math.randomseed(os.time() * 1000 + id)
end

function request()
   local index = math.random(0, members - 1)
   return wrk.format("GET", "/groups/" .. group .. "/members/" .. seeded_email(index))
end
