-- GET /health: no storage; the baseline of the server's HTTP stack.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "GET"
wrk.path = "/health"
