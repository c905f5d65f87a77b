// npm 11 gates install scripts (allowScripts). kvgate relies on prebuilt native parts that ship inside
// their registry packages; prove they really load, and fail loudly if one does not.
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const failures = [];
try {
  const zmq = await import('zeromq');
  const s = new zmq.Publisher();
  s.close();
} catch (e) {
  failures.push(`zeromq native addon did not load: ${e.message}`);
}
try {
  const m = require('msgpackr');
  if (!m.isNativeAccelerationEnabled) failures.push('msgpackr-extract (native msgpack decoding) is not enabled');
} catch (e) {
  failures.push(`msgpackr did not load: ${e.message}`);
}
try {
  const esbuild = require('esbuild');
  esbuild.transformSync('let x: number = 1', { loader: 'ts' });
} catch (e) {
  failures.push(`esbuild (used by tsx to run TypeScript) did not load: ${e.message}`);
}
if (failures.length) {
  console.error('\n*** native dependency check FAILED ***');
  for (const f of failures) console.error(' - ' + f);
  console.error('Reinstall with `npm ci`; if npm blocked install scripts, approve them with `npm install-scripts approve <pkg>`.\n');
  process.exit(1);
}
console.log('native dependencies: zeromq, msgpackr-extract, esbuild load');
