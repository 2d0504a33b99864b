-- The trace filter's core job in Envoy's built-in Lua filter, for `cargo xtask bench`:
-- read `traceparent`, and write a child `traceparent` plus the B3 multi headers. The bare
-- proxy-wasm filter (bench/bare-trace) does exactly the same work, with the same validation:
-- version 00, lowercase hex of the right lengths, ids not all zero; otherwise a new sampled trace.

local ZERO_TRACE = string.rep("0", 32)
local ZERO_SPAN = string.rep("0", 16)

local function span_id()
  return string.format("%08x%08x", math.random(0, 0xffffffff), math.random(0, 0xffffffff))
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local trace_id, parent_id, sampled
  local tp = headers:get("traceparent")
  if tp ~= nil then
    local tid, pid, flags = string.match(tp, "^00%-([0-9a-f]+)%-([0-9a-f]+)%-([0-9a-f][0-9a-f])$")
    if tid ~= nil and #tid == 32 and #pid == 16 and tid ~= ZERO_TRACE and pid ~= ZERO_SPAN then
      trace_id = tid
      parent_id = pid
      sampled = tonumber(flags, 16) % 2 == 1
    end
  end
  if trace_id == nil then
    trace_id = span_id() .. span_id()
    sampled = true
  end
  local span = span_id()
  headers:replace("traceparent", "00-" .. trace_id .. "-" .. span .. (sampled and "-01" or "-00"))
  headers:replace("x-b3-traceid", trace_id)
  headers:replace("x-b3-spanid", span)
  if parent_id ~= nil then
    headers:replace("x-b3-parentspanid", parent_id)
  end
  headers:replace("x-b3-sampled", sampled and "1" or "0")
end
