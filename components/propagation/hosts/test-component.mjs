// Runs the shared cases (../cases.json) against the component transpiled by jco, in Node:
// `node test-component.mjs <transpiled module.js> <cases.json>`. Prints a line per failure and
// `propagation (node): N passed, M failed`; exits 1 on any failure.

import { readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { pathToFileURL } from 'node:url';

const [moduleFile, caseFile] = process.argv.slice(2);
const { propagate: component } = await import(pathToFileURL(moduleFile).href);

const CONFIG_FIELDS = {
  extract: 'extract',
  inject: 'inject',
  baggage: 'baggage',
  baggage_max_bytes: 'baggageMaxBytes',
  baggage_max_members: 'baggageMaxMembers',
  request_id: 'requestId',
};

function headersOf(c) {
  return c.headers.map(([name, value]) => {
    if (typeof value === 'string') return [name, value];
    const items = Array.from({ length: value.times }, (_, i) => value.repeat.replaceAll('{i}', String(i)));
    return [name, items.join(value.join ?? '')];
  });
}

function configOf(c) {
  const config = component.defaultConfig();
  for (const [key, value] of Object.entries(c.config ?? {})) config[CONFIG_FIELDS[key]] = value;
  return config;
}

const pairs = (list) => list.map(([k, v]) => [k, v]);
const orNull = (v) => (v === undefined ? null : v);

// The case file's view of an outcome (the same object the Rust and Python tests build).
function normalized(out) {
  const c = out.context;
  return {
    headers: pairs(out.headers),
    context: c === undefined ? null : {
      trace_id: c.traceId,
      short_trace_id: c.shortTraceId,
      span_id: c.spanId,
      parent_span_id: orNull(c.parentSpanId),
      sampled: orNull(c.sampled),
      debug: c.debug,
      random: c.random,
      tracestate: pairs(c.tracestate),
      format: c.format,
    },
    sampled: orNull(out.sampled),
    baggage: pairs(out.baggage),
    request_id: orNull(out.requestId),
    invalid: [...out.invalid],
  };
}

let passed = 0;
let failed = 0;
for (const c of JSON.parse(readFileSync(caseFile, 'utf8')).cases) {
  const wrong = [];
  let got;
  try {
    got = normalized(component.propagate(configOf(c), headersOf(c)));
  } catch (e) {
    const message = String(e.payload ?? e);
    if (!(c.error !== undefined && message.includes(c.error))) wrong.push(`${c.name}: error ${message}`);
  }
  if (got !== undefined) {
    for (const [key, want] of Object.entries(c.expect ?? {})) {
      if (!isDeepStrictEqual(got[key], want)) {
        wrong.push(`${c.name}: ${key}: got ${JSON.stringify(got[key])}, want ${JSON.stringify(want)}`);
      }
    }
    if (c.error !== undefined) wrong.push(`${c.name}: wanted error ${c.error}, got ${JSON.stringify(got)}`);
  }
  for (const line of wrong) console.log(line);
  if (wrong.length) failed += 1; else passed += 1;
}
console.log(`propagation (node): ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
