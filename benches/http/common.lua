-- Shared by the workload scripts of `cargo bench -p cqrs-benches --bench http`
-- (benches/benches/http.rs), which runs wrk with one of them against the
-- e-commerce example's release binary. Loaded by each script with dofile.
--
-- Environment: HTTP_BENCH_TOKEN, a bearer token of the server's secret
-- (sent with every request, as the in-process bench did; /health ignores it).
--
-- By hand, against a server started as the example's README says:
--   export HTTP_BENCH_TOKEN=...      # the TOKEN_A it prints
--   wrk -t2 -c32 -d10s --latency -s benches/http/health.lua http://127.0.0.1:3000
-- get_order.lua also needs HTTP_BENCH_ORDERS, and that many orders placed
-- first on a fresh server (ORD-000001 onwards); post_order.lua places orders.

local token = os.getenv("HTTP_BENCH_TOKEN")
if token == nil or token == "" then
   error("HTTP_BENCH_TOKEN is not set: a bearer token the server accepts")
end
wrk.headers["Authorization"] = "Bearer " .. token

-- One machine-readable line for the driver, after wrk's own report:
-- latencies in microseconds, from wrk's histogram of every request.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "HTTP_BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d " ..
      "p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
