// Evaluates FHIRPath expressions with the reference JavaScript engine (fhirpath.js, R4 model)
// for tests/api/fhirpath_differential.rs.
//
// Usage: node runner.js CASES.json
//   CASES.json: {"resources": {"<file name>": <resource>, ...},
//                "cases": [{"id": 1, "resource": "<file name>", "expression": "..."}, ...]}
// Prints one JSON array on stdout, one entry per case:
//   {"id": 1, "result": [{"type": "FHIR.string", "value": ...}, ...]} or {"id": 1, "error": "..."}
// Each result item carries its FHIRPath type (fhirpath.types) and its value: nodes as their
// JSON (plus "ext" for the `_name` companion of a primitive), decimals as {"$decimal": text},
// quantities as {"value", "unit"} (unit unquoted), dates and times as their text without '@'.
// Evaluation uses the R4 model, precise decimal arithmetic and %resource = the resource; the
// caller sets TZ=UTC.
'use strict';

const fs = require('fs');
const path = require('path');

let fhirpath, r4;
try {
  fhirpath = require('fhirpath');
  r4 = require('fhirpath/fhir-context/r4');
} catch (e) {
  process.stderr.write(
    'fhirpath.js is not installed: run `npm ci` in tests/fhirpath_differential (' + e.message + ')\n');
  process.exit(3);
}

// the value classes are not exported by the package; load the module fhirpath.js itself uses
const { ResourceNode, FP_Type, FP_Quantity, FP_Decimal } =
  require(path.join(path.dirname(require.resolve('fhirpath')), 'types.js'));

function plain(v) {
  // JSON value of the data of a node, with the engine's wrappers unwrapped.
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof FP_Decimal) return { $decimal: v.toString() };
  if (v instanceof FP_Type) return v.toString();
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v)) out[k] = plain(v[k]);
    return out;
  }
  return v;
}

function item(x) {
  const type = fhirpath.types([x])[0];
  if (x instanceof ResourceNode) {
    const out = { type, value: plain(x.data) };
    if (x._data) out.ext = plain(x._data);
    return out;
  }
  if (x instanceof FP_Quantity) {
    // UCUM units are kept quoted (`'mg'`), calendar units bare (`year`); our engine keeps both
    // bare
    return { type, value: { value: x.value.toString(), unit: x.unit.replace(/^'(.*)'$/, '$1') } };
  }
  if (x instanceof FP_Decimal) return { type, value: { $decimal: x.toString() } };
  if (x instanceof FP_Type) return { type, value: x.toString() };
  if (x && typeof x === 'object' && 'namespace' in x && 'name' in x) {
    // TypeInfo, the result of type()
    return { type, value: { namespace: x.namespace, name: x.name } };
  }
  return { type, value: plain(x) };
}

function main() {
  const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const out = [];
  for (const c of input.cases) {
    // the engine annotates its input, so each case gets a fresh copy
    const resource = JSON.parse(JSON.stringify(input.resources[c.resource]));
    try {
      const result = fhirpath.evaluate(
        resource, c.expression, { resource, rootResource: resource }, r4,
        // trace() would print to stdout, which carries the results
        { resolveInternalTypes: false, preciseMath: true, traceFn: () => {} });
      out.push({ id: c.id, result: result.map(item) });
    } catch (e) {
      out.push({ id: c.id, error: String(e && e.message || e).split('\n')[0] });
    }
  }
  process.stdout.write(JSON.stringify(out, (_, v) => typeof v === 'bigint' ? v.toString() : v));
  process.stdout.write('\n');
}

main();
