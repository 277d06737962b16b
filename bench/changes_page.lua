-- GET /users/changes pages from random points of the seeding's changes.
-- Arguments: USERS NONCE XID FIRST_SEQ LIMIT: the seeding's transaction, its first change's seq.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local users, xid, first_seq, limit

function init(args)
   users = tonumber(args[1])
   xid = tonumber(args[3])
   first_seq = tonumber(args[4])
   limit = tonumber(args[5])
   math.randomseed(os.time() * 1000 + id)
end

function request()
   -- After a change that a whole page of the seeding's changes follows.
   local seq = first_seq + math.random(0, users - limit - 1)
   return wrk.format("GET", string.format("/users/changes?after=%x-%x&limit=%d", xid, seq, limit))
end
