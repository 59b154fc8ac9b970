-- POST /orders: the seed's order, PRD-001 x 1 at 29.99, the same body every
-- time (the server numbers the orders; no Idempotency-Key, as before).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.method = "POST"
wrk.path = "/orders"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"customerId":"CUST-001",'
   .. '"items":[{"productCode":"PRD-001","name":"Wireless Mouse","quantity":1,"price":29.99}],'
   .. '"shippingAddress":{"street":"123 Main St","city":"Tokyo","postalCode":"100-0001","country":"JP"},'
   .. '"paymentMethod":"credit_card"}'
