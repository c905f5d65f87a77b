/**
 * The Node.js floor under router.added: a bare round-robin HTTP proxy on the same stack the router uses (node:http
 * server, an undici Pool per upstream with keep-alive), nothing else — no body parse, no routing, no metrics.
 * Whatever a Node.js router adds on top of what this adds is the router's own; what this adds over nginx is the
 * runtime's. Run as a process of its own, as nginx and HAProxy are (bench/peers.ts starts it).
 * Usage: node --import tsx bench/node-proxy.ts <port> <upstream-url>...
 */
import { createServer } from 'node:http';
import { Pool } from 'undici';

const [portArg, ...upstreams] = process.argv.slice(2);
if (!portArg || upstreams.length === 0) {
  console.error('usage: node-proxy.ts <port> <upstream-url>...');
  process.exit(2);
}
const pools = upstreams.map((u) => new Pool(u, { connections: 64 }));
let turn = 0;

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && k !== 'host' && k !== 'connection') headers[k] = v;
    pools[turn++ % pools.length]!.request({ path: req.url ?? '/', method: req.method as 'POST', headers, body: Buffer.concat(chunks) }).then(
      (up) => {
        const out: Record<string, string> = {};
        for (const [k, v] of Object.entries(up.headers)) if (typeof v === 'string' && k !== 'connection' && k !== 'keep-alive' && k !== 'transfer-encoding') out[k] = v;
        res.writeHead(up.statusCode, out);
        up.body.on('data', (c: Buffer) => res.write(c));
        up.body.on('end', () => res.end());
        up.body.on('error', () => res.destroy());
      },
      () => {
        res.writeHead(502, { 'content-length': 0 });
        res.end();
      },
    );
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(portArg), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
