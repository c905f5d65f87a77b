// node wait.mjs <url> [<field> <min>] [--timeout-ms N]: polls GET url until it answers 200 (and, with a field,
// until the JSON body's numeric field is ≥ min). Exit 0 when it does, 1 (one line on stderr) when it times out.
const args = process.argv.slice(2);
const ti = args.indexOf('--timeout-ms');
const timeoutMs = ti >= 0 ? Number(args.splice(ti, 2)[1]) : 30_000;
const [url, field, min] = args;
const t0 = Date.now();
let last = 'no answer';
for (;;) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    last = `HTTP ${res.status} ${text.slice(0, 200)}`;
    if (res.status === 200) {
      if (!field) process.exit(0);
      const v = JSON.parse(text)[field];
      if (typeof v === 'number' && v >= Number(min)) process.exit(0);
    }
  } catch (e) {
    last = String(e?.cause?.code ?? e?.message ?? e);
  }
  if (Date.now() - t0 > timeoutMs) {
    console.error(`timed out after ${timeoutMs} ms waiting for ${url}${field ? ` ${field} ≥ ${min}` : ''}: ${last}`);
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 200));
}
