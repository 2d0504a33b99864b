"""The shared case table (`../cases.json`) for the Python host: builds each case's config and
headers, and the case file's view of an outcome (the same object the Rust and Node tests build)."""

import json


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["cases"]


def headers_of(case):
    out = []
    for name, value in case["headers"]:
        if isinstance(value, dict):
            items = [value["repeat"].replace("{i}", str(i)) for i in range(value["times"])]
            value = value.get("join", "").join(items)
        out.append((name, value))
    return out


CONFIG_FIELDS = {
    "extract": "extract",
    "inject": "inject",
    "baggage": "baggage",
    "baggage_max_bytes": "baggage-max-bytes",
    "baggage_max_members": "baggage-max-members",
    "request_id": "request-id",
}


def config_of(case, default):
    for key, value in case.get("config", {}).items():
        setattr(default, CONFIG_FIELDS[key], value)
    return default


def pairs(items):
    return [[k, v] for k, v in items]


def normalized(out):
    c = out.context
    context = None
    if c is not None:
        context = {
            "trace_id": getattr(c, "trace-id"),
            "short_trace_id": getattr(c, "short-trace-id"),
            "span_id": getattr(c, "span-id"),
            "parent_span_id": getattr(c, "parent-span-id"),
            "sampled": c.sampled,
            "debug": c.debug,
            "random": c.random,
            "tracestate": pairs(c.tracestate),
            "format": c.format,
        }
    return {
        "headers": pairs(out.headers),
        "context": context,
        "sampled": out.sampled,
        "baggage": pairs(out.baggage),
        "request_id": getattr(out, "request-id"),
        "invalid": list(out.invalid),
    }
