-- The soak's weighted mix of requests, picked at random per request.
-- Arguments: USERS NONCE GET% LIST% CREATE% BULK% BULK_SIZE PAGE_LIMIT (the percentages add to 100).
-- Every request names a seeded user or fresh ones, so anything but 2xx is a failure; on top of
-- summary.lua's line it prints SOAK_SUMMARY with 5xx, 404 and 409 counts and requests per kind.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

local users, nonce, get_percent, list_percent, create_percent, bulk_size, page_limit
local creates, bulks = 0, 0
local soak_threads = {}

-- Globals in each thread's Lua state, so done() can read them with thread:get.
status_5xx, status_404, status_409 = 0, 0, 0
sent_get, sent_list, sent_create, sent_bulk = 0, 0, 0, 0

-- summary.lua keeps its thread list to itself; this one is for the counts below.
local summary_setup = setup
function setup(thread)
   summary_setup(thread)
   table.insert(soak_threads, thread)
end

function init(args)
   users = tonumber(args[1])
   nonce = args[2]
   get_percent = tonumber(args[3])
   list_percent = tonumber(args[4])
   create_percent = tonumber(args[5])
   bulk_size = tonumber(args[7])
   page_limit = tonumber(args[8])
   math.randomseed(os.time() * 1000 + id)
end

local json_headers = { ["Content-Type"] = "application/json" }

-- Fresh emails hold the window's nonce, the thread id and a counter: no two requests collide.
local function create_request()
   creates = creates + 1
   local body = string.format(
      '{"name":"Soak User","email":"soak-%s-%d-%d@example.com"}', nonce, id, creates)
   return wrk.format("POST", "/users", json_headers, body)
end

local function bulk_request()
   bulks = bulks + 1
   local rows = {}
   for row = 1, bulk_size do
      rows[row] = string.format(
         '{"name":"Soak User","email":"soak-bulk-%s-%d-%d-%d@example.com"}', nonce, id, bulks, row)
   end
   return wrk.format("POST", "/users/bulk", json_headers, "[" .. table.concat(rows, ",") .. "]")
end

-- Half first pages, half after= a random seeded email.
local function list_request()
   if math.random(2) == 1 then
      return wrk.format("GET", string.format("/users?limit=%d", page_limit))
   end
   local after = seeded_email(math.random(0, users - 1))
   return wrk.format("GET", string.format("/users?after=%s&limit=%d", after, page_limit))
end

function request()
   local pick = math.random(100)
   if pick <= get_percent then
      sent_get = sent_get + 1
      return wrk.format("GET", "/users/" .. seeded_email(math.random(0, users - 1)))
   elseif pick <= get_percent + list_percent then
      sent_list = sent_list + 1
      return list_request()
   elseif pick <= get_percent + list_percent + create_percent then
      sent_create = sent_create + 1
      return create_request()
   end
   sent_bulk = sent_bulk + 1
   return bulk_request()
end

local summary_response = response
function response(status, headers, body)
   summary_response(status, headers, body)
   if status >= 500 then
      status_5xx = status_5xx + 1
   elseif status == 404 then
      status_404 = status_404 + 1
   elseif status == 409 then
      status_409 = status_409 + 1
   end
end

local COUNTS = {
   "status_5xx", "status_404", "status_409", "sent_get", "sent_list", "sent_create", "sent_bulk",
}

local summary_done = done
function done(summary, latency, requests)
   summary_done(summary, latency, requests)
   local fields = {}
   for position, name in ipairs(COUNTS) do
      local total = 0
      for _, thread in ipairs(soak_threads) do
         total = total + thread:get(name)
      end
      fields[position] = string.format('"%s":%d', name, total)
   end
   io.write("SOAK_SUMMARY {" .. table.concat(fields, ",") .. "}\n")
end
