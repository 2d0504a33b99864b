// Validates Istio custom resources (WasmPlugin, EnvoyFilter, ...) against the OpenAPI schemas of
// Istio's CRDs, as packaged by npm `@kubernetes-models/istio`; for integration/tests/configs.rs,
// which checks every manifest of examples/k8s with it and with kubernetes-validate.
//
//   node validate-istio.mjs <models-dir> <file.yaml>...
//
// <models-dir> is where `npm ci` installed this directory's package.json (the test does that under
// <target>/tools/k8s-models/). Prints one line per YAML document:
//   PASS <file> <apiVersion> <kind>/<name>          valid against its CRD schema
//   FAIL <file> <apiVersion> <kind>/<name>: <why>   invalid (or the file is not YAML)
//   SKIP <file> <apiVersion> <kind>/<name>: ...     no Istio schema for that kind (another
//                                                   validator's, or nobody's: the test decides)
// and exits 1 when any document failed. The schemas catch wrong types, values outside an enum,
// missing required fields and bad formats; Istio's CRD schemas do not forbid unknown fields, so
// a misspelt field passes here (`kubectl apply`'s strict field validation would refuse it).

import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modelsDir, ...files] = process.argv.slice(2);
if (!modelsDir || files.length === 0) {
  console.error("usage: node validate-istio.mjs <models-dir> <file.yaml>...");
  process.exit(2);
}
const yaml = createRequire(join(modelsDir, "package.json"))("js-yaml");
const istio = join(modelsDir, "node_modules", "@kubernetes-models", "istio");

// The model class for `apiVersion` and `kind`, or undefined when the package has none.
async function model(apiVersion, kind) {
  const [group, version, extra] = String(apiVersion).split("/");
  if (extra !== undefined || !/^[a-z0-9.-]+$/.test(group) || !/^v[a-z0-9]+$/.test(version ?? "")) {
    return undefined;
  }
  const index = join(istio, group, version, "index.js");
  if (!existsSync(index)) {
    return undefined;
  }
  const Model = (await import(pathToFileURL(index).href))[kind];
  const matches = typeof Model === "function" && Model.apiVersion === apiVersion && Model.kind === kind;
  return matches ? Model : undefined;
}

let failed = false;
for (const file of files) {
  let docs;
  try {
    docs = yaml.loadAll(readFileSync(file, "utf8"));
  } catch (e) {
    console.log(`FAIL ${file}: not YAML: ${e.message}`);
    failed = true;
    continue;
  }
  for (const doc of docs) {
    if (doc === null || doc === undefined) {
      continue;
    }
    const what = `${doc.apiVersion} ${doc.kind}/${doc.metadata?.name}`;
    const Model = await model(doc.apiVersion, doc.kind);
    if (!Model) {
      console.log(`SKIP ${file} ${what}: no Istio schema`);
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`PASS ${file} ${what}`);
    } catch (e) {
      console.log(`FAIL ${file} ${what}: ${String(e.message).replaceAll("\n", "; ")}`);
      failed = true;
    }
  }
}
process.exit(failed ? 1 : 0);
