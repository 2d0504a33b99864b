"""Calls per second of meshwasm:propagation from Python (PyPI wasmtime), one instance in one
thread: `python bench.py <component.wasm> [seconds]` (run by `cargo xtask component-bench`).

The request is what an app behind a meshwasm sidecar receives: its inbound sidecar's W3C and B3
headers, a tracestate, baggage, x-request-id, and the usual dozen others. `default-config`, a
call that takes no argument and returns a small record, is the floor: what crossing into the
component and back costs by itself from Python. The same call with only the trace headers shows
what the headers the component ignores cost to pass (each value is converted by wasmtime's
Python bindings, through ctypes, before the component sees it)."""

import platform
from importlib import metadata
import sys
import time


from propagation import Propagation

TYPICAL = [
    ("host", "orders"),
    ("user-agent", "python-requests/2.32.3"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate"),
    ("content-type", "application/json"),
    ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo"),
    ("x-forwarded-for", "10.0.3.17"),
    ("x-forwarded-proto", "http"),
    ("x-envoy-expected-rq-timeout-ms", "15000"),
    ("x-request-id", "4b0d6a4e-8f3a-4c53-9d61-2c4a0f0c1d55"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("tracestate", "mesh=1,congo=t61rcWkgMzE"),
    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("x-b3-spanid", "00f067aa0ba902b7"),
    ("x-b3-sampled", "1"),
    ("baggage", "tenant=acme,region=eu-west-1,user.id=42"),
]


def rate(call, seconds):
    """(calls, elapsed seconds) of `call` repeated for about `seconds`, after a warm-up."""
    for _ in range(200):
        call()
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            call()
        calls += 100
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - start


def main(wasm, seconds):
    p = Propagation(wasm)
    out = p.propagate(TYPICAL)
    if len(out.headers) != 7 or out.invalid:
        print(f"unexpected outcome: {out.headers} {out.invalid}")
        return 1
    print(
        f"Python {platform.python_version()}, wasmtime {metadata.version('wasmtime')}, "
        f"{len(TYPICAL)} request headers in, {len(out.headers)} out, {seconds:g} s each"
    )
    names = {n for n, _ in out.headers} | {"x-request-id"}
    only_trace = [(n, v) for n, v in TYPICAL if n in names or n.startswith("x-b3-")]
    for name, call in [
        ("propagate (typical request)", lambda: p.propagate(TYPICAL)),
        (f"propagate ({len(only_trace)} trace headers only)", lambda: p.propagate(only_trace)),
        ("default-config (floor)", p.default_config),
    ]:
        calls, elapsed = rate(call, seconds)
        print(f"{name:<36} {calls / elapsed:>10,.0f} calls/s  {elapsed / calls * 1e6:>8.1f} µs/call")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 5.0))
