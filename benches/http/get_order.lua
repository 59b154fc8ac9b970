-- GET /orders/{code}: reads the orders ORD-000001 .. ORD-<HTTP_BENCH_ORDERS>
-- (placed before the run, in that order, on a fresh server) round robin;
-- each wrk thread starts at its own offset.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local orders = tonumber(os.getenv("HTTP_BENCH_ORDERS") or "")
if orders == nil or orders < 1 then
   error("HTTP_BENCH_ORDERS is not set: how many orders the server holds")
end

local threads = 0
function setup(thread)
   thread:set("id", threads)
   threads = threads + 1
end

local requests = {}
local next_order = 1
function init(args)
   for n = 1, orders do
      requests[n] = wrk.format("GET", string.format("/orders/ORD-%06d", n))
   end
   -- `id` is this thread's number, set by setup() in wrk's main state;
   -- the threads start spread over the orders (golden-ratio steps).
   next_order = math.floor(((id or 0) * 0.6180339887 % 1) * orders) + 1
end

function request()
   local r = requests[next_order]
   next_order = next_order % orders + 1
   return r
end
