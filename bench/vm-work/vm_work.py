"""The work a proxy-wasm filter does inside its VM per request, counted as wasmtime fuel (one
unit per wasm instruction executed, whatever the machine's load).

The filter's .wasm is driven through the bench request (`GET /orders/7` with a `traceparent`,
a 200 answer) the way Envoy drives it: context creation, request headers, response headers (and
body, log and done when the module exports them), delete. Every proxy-wasm hostcall is a stub
that answers at once from tables below, so the count is the filter's own code (its SDK, its
allocator, its decoding), never the host's. Run by `cargo xtask bench --vm-work`; prints one JSON
line: fuel per request, per phase, and the hostcalls made.

usage: vm_work.py <filter.wasm> <plugin configuration JSON> [warm-up requests]
VM_WORK_ENV: the VM's environment variables as a JSON object (the snippet's `key_values`; the
bench runner sets it), default {"MESH_VERSION": "v1"}.
"""
import collections
import json
import os
import struct
import sys

import wasmtime

LOGALL = os.environ.get("VM_WORK_LOG") == "1"
# VM_WORK_TRACE=1: also print, for the last request, the instructions run between consecutive
# hostcalls (which hostcall ends each stretch, with its header name or property path), to find
# where a callback's work goes.
TRACE = os.environ.get("VM_WORK_TRACE") == "1"
trace = None
path, config = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 200

cfg = wasmtime.Config()
cfg.consume_fuel = True
# PERFMAP=1: wasmtime writes /tmp/perf-<pid>.map, so `perf record` names the wasm functions.
if os.environ.get("PERFMAP"):
    cfg.profiler = "perfmap"
engine = wasmtime.Engine(cfg)
module = wasmtime.Module.from_file(engine, path)
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.env = list(json.loads(os.environ.get("VM_WORK_ENV", '{"MESH_VERSION": "v1"}')).items())
store.set_wasi(wasi)
linker = wasmtime.Linker(engine)
linker.define_wasi()

inst = None
mem = None
calls = collections.Counter()

def rd(ptr, n):
    return bytes(mem.read(store, ptr, ptr + n)) if n else b""
def wr(ptr, data):
    mem.write(store, data, ptr)
def ret_buf(data, pdata, psize):
    if data is None:
        wr(pdata, struct.pack("<I", 0)); wr(psize, struct.pack("<I", 0)); return
    p = inst.exports(store)["proxy_on_memory_allocate"](store, len(data)) if data else 0
    if data: wr(p, data)
    wr(pdata, struct.pack("<I", p)); wr(psize, struct.pack("<I", len(data)))

def enc_map(pairs):
    out = struct.pack("<I", len(pairs))
    for k, v in pairs: out += struct.pack("<II", len(k), len(v))
    for k, v in pairs: out += k + b"\0" + v + b"\0"
    return out

REQ = [(b":authority", b"127.0.0.1:10000"), (b":path", b"/orders/7"), (b":method", b"GET"),
       (b":scheme", b"http"), (b"user-agent", b"wrk"),
       (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
       (b"x-forwarded-proto", b"http"), (b"x-request-id", b"3f1c6c1e-2a7b-4c55-9d6e-8b2f0a1c9e77")]
RESP = [(b":status", b"200"), (b"content-length", b"11"), (b"content-type", b"application/json")]
maps = {}
i64 = lambda v: struct.pack("<q", v)
PROPS = {
    b"xds\0route_name": b"orders", b"xds\0cluster_name": b"upstream",
    b"request\0duration": i64(250000), b"response\0code": i64(200), b"response\0flags": i64(0),
    b"upstream\0address": b"127.0.0.1:8081", b"destination\0address": b"127.0.0.1:10000",
    b"source\0address": b"127.0.0.1:50000", b"request\0protocol": b"HTTP/1.1",
    b"request\0total_size": i64(180), b"response\0total_size": i64(90),
    b"request\0size": i64(0), b"response\0size": i64(11),
}
expressions = []

def enc_list(values):
    """A list as Envoy 1.40 answers expr_evaluate of a CEL list: the pairs form, each element
    paired with an empty string, each value in proxy_get_property's wire form."""
    return enc_map([(v, b"") for v in values])

def evaluate(expr):
    """expr_evaluate of a meshwasm property batch (`[a.b, has(c.d) ? [c.d] : [], ...]`), or None
    when a required attribute is missing (Envoy's error for the whole list)."""
    out = []
    for el in expr[1:-1].split(", "):
        if el.startswith("has("):
            k = el[4:el.index(")")].replace(".", "\0").encode()
            out.append(enc_list([PROPS[k]] if k in PROPS else []))
        else:
            k = el.replace(".", "\0").encode()
            if k not in PROPS: return None
            out.append(PROPS[k])
    return enc_list(out)

shared = {}
now = [1_700_000_000_000_000_000]
plugin_config = config.encode()

def stub(name):
    def answer(*a):
        a = [x & 0xffffffff if isinstance(x, int) and -2**31 <= x < 0 else x for x in a]
        calls[name] += 1
        if name == "proxy_log":
            if a[0] >= 3 or LOGALL: print("LOG", a[0], rd(a[1], a[2]).decode(errors="replace"))
            return 0
        if name == "proxy_get_log_level": wr(a[0], struct.pack("<I", 2)); return 0
        if name == "proxy_get_current_time_nanoseconds":
            now[0] += 1000; wr(a[0], struct.pack("<Q", now[0])); return 0
        if name in ("proxy_set_tick_period_milliseconds", "proxy_continue_stream",
                    "proxy_increment_metric", "proxy_record_metric", "proxy_set_property",
                    "proxy_send_local_response"): return 0
        if name == "proxy_define_metric": wr(a[3], struct.pack("<I", 7)); return 0
        if name == "proxy_get_metric": wr(a[1], struct.pack("<Q", 0)); return 0
        if name == "proxy_get_buffer_bytes":
            t, start, mx, pd, ps = a
            if t == 7: ret_buf(plugin_config[start:start + mx], pd, ps); return 0
            return 1
        if name == "proxy_get_header_map_pairs":
            ret_buf(enc_map(maps.get(a[0], [])), a[1], a[2]); return 0
        if name == "proxy_get_header_map_value":
            t, kp, kl, pd, ps = a; k = rd(kp, kl)
            for kk, v in maps.get(t, []):
                if kk == k: ret_buf(v, pd, ps); return 0
            return 1
        if name in ("proxy_replace_header_map_value", "proxy_add_header_map_value"):
            t, kp, kl, vp, vl = a; k, v = rd(kp, kl), rd(vp, vl)
            m = [p for p in maps.setdefault(t, []) if p[0] != k or name.endswith("add_header_map_value")]
            m.append((k, v)); maps[t] = m; return 0
        if name == "proxy_remove_header_map_value":
            t, kp, kl = a; k = rd(kp, kl); maps[t] = [p for p in maps.get(t, []) if p[0] != k]; return 0
        if name == "proxy_get_property":
            pp, pl, pd, ps = a; k = rd(pp, pl)
            if k in PROPS: ret_buf(PROPS[k], pd, ps); return 0
            return 1
        if name == "proxy_get_shared_data":
            kp, kl, pd, ps, pc = a; k = rd(kp, kl)
            if k in shared: ret_buf(shared[k][0], pd, ps); wr(pc, struct.pack("<I", shared[k][1])); return 0
            return 1
        if name == "proxy_set_shared_data":
            kp, kl, vp, vl, cas = a; k = rd(kp, kl)
            c = shared.get(k, (b"", 0))[1]
            if cas and cas != c: return 8
            shared[k] = (rd(vp, vl), c + 1); return 0
        if name == "proxy_http_call": wr(a[9], struct.pack("<I", 1)); return 0
        if name == "proxy_call_foreign_function":
            fn, arg, pd, ps = rd(a[0], a[1]), rd(a[2], a[3]), a[4], a[5]
            if fn == b"expr_create":
                expressions.append(arg.decode()); ret_buf(struct.pack("<I", len(expressions) - 1), pd, ps)
                return 0
            if fn == b"expr_evaluate":
                out = evaluate(expressions[struct.unpack("<I", arg)[0]])
                if out is None: return 10  # InternalFailure
                ret_buf(out, pd, ps); return 0
            return 12  # Unimplemented
        raise RuntimeError("no stub for " + name)
    def f(*a):
        if trace is None:
            return answer(*a)
        # The stretch of VM work since the last hostcall ended, then the hostcall (its own VM
        # work: the allocation of the value it returns, counted apart).
        stretch = trace["mark"] - store.get_fuel()
        what = name[len("proxy_"):]
        named = {"proxy_get_property": (0, 1), "proxy_get_header_map_value": (1, 2),
                 "proxy_replace_header_map_value": (1, 2), "proxy_get_shared_data": (0, 1)}
        if name in named:
            p, n = named[name]
            u = [x & 0xffffffff for x in a]
            what += " " + rd(u[p], u[n]).replace(b"\0", b".").decode(errors="replace")
        before = store.get_fuel()
        r = answer(*a)
        trace["mark"] = store.get_fuel()
        trace["rows"].append((trace["phase"], stretch, what, before - trace["mark"]))
        return r
    return f

for imp in module.imports:
    if imp.module == "env":
        ft = imp.type
        linker.define_func("env", imp.name, ft, stub(imp.name))
inst = linker.instantiate(store, module)
mem = inst.exports(store)["memory"]
ex = inst.exports(store)
FUEL = 10**12
store.set_fuel(FUEL)
def fuel_used(fn, phase=None):
    before = store.get_fuel()
    if trace is not None:
        trace["phase"] = phase
        trace["mark"] = before
    r = fn()
    if trace is not None:
        trace["rows"].append((phase, trace["mark"] - store.get_fuel(), "(return)", 0))
    return before - store.get_fuel(), r
ex["_initialize"](store)
ex["proxy_on_context_create"](store, 1, 0)
ex["proxy_on_vm_start"](store, 1, 0)
assert ex["proxy_on_configure"](store, 1, len(plugin_config)), "configure refused"
names = [e.name for e in module.exports]
phase_fuel = collections.Counter()
def request(cid):
    maps.clear(); maps[0] = list(REQ)
    used = {}
    used["create"], _ = fuel_used(phase="create", fn=lambda: ex["proxy_on_context_create"](store, cid, 1))
    used["request_headers"], _ = fuel_used(phase="request_headers", fn=lambda: ex["proxy_on_request_headers"](store, cid, len(REQ), 1))
    maps[2] = list(RESP)
    if "proxy_on_response_headers" in names:
        used["response_headers"], _ = fuel_used(phase="response_headers", fn=lambda: ex["proxy_on_response_headers"](store, cid, len(RESP), 0))
    if "proxy_on_response_body" in names:
        used["response_body"], _ = fuel_used(phase="response_body", fn=lambda: ex["proxy_on_response_body"](store, cid, 11, 1))
    if "proxy_on_log" in names:
        used["log"], _ = fuel_used(phase="log", fn=lambda: ex["proxy_on_log"](store, cid))
    if "proxy_on_done" in names:
        used["done"], _ = fuel_used(phase="done", fn=lambda: ex["proxy_on_done"](store, cid))
    used["delete"], _ = fuel_used(phase="delete", fn=lambda: ex["proxy_on_delete"](store, cid))
    return used
for i in range(N):
    request(100 + i)
calls.clear()
total = collections.Counter()
M = 100
for i in range(M):
    u = request(100000 + i)
    for k, v in u.items(): total[k] += v
if TRACE:
    trace = {"rows": [], "phase": None, "mark": 0}
    request(200000)
    for phase, stretch, what, inside in trace["rows"]:
        print(f"TRACE {phase:16} {stretch:8} then {what} ({inside})", file=sys.stderr)
    trace = None
print(json.dumps({
    "file": os.path.basename(path),
    # The VM's linear memory after the run (64 KiB pages): what one VM of the filter holds.
    "memory_bytes": mem.size(store) * 65536,
    "fuel_per_request": round(sum(total.values()) / M),
    "phases": {k: round(v / M) for k, v in total.items()},
    "hostcalls": {k[len("proxy_"):]: v / M for k, v in sorted(calls.items())},
}))
