/**
 * `kvgate replay whatif --report out.html`: the what-if run as one self-contained HTML file — the table whatif
 * prints (the same cells, whatifCells) and, per policy, three plots drawn here as inline SVG (no script, no
 * library, nothing fetched): hit rate over time, TTFT CDF, and each engine's load (mean requests in flight) over
 * time. Time-axis and TTFT plots share their ranges across policies so that they compare at a glance.
 */
import { whatifCells, WHATIF_COLUMNS, type WhatifResult, type WhatifSeries } from './whatif.js';

const W = 360, H = 220, M = { l: 46, r: 10, t: 24, b: 36 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const num = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(1));

interface Axis {
  min: number;
  max: number;
  log?: boolean;
  label: string;
  fmt?: (v: number) => string;
}
interface Line {
  /** null: a gap */
  points: Array<[number, number] | null>;
  color: string;
  label?: string;
  dash?: boolean;
  /** a dot at each point */
  dots?: boolean;
}

/** ~5 round tick values in [min, max] (for a log axis: 1, 2, 5 × powers of ten) */
function ticks(a: Axis): number[] {
  if (a.log) {
    const out: number[] = [];
    for (let e = Math.floor(Math.log10(a.min)); e <= Math.ceil(Math.log10(a.max)); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= a.min && v <= a.max) out.push(v);
      }
    }
    return out.length > 7 ? out.filter((v) => Math.abs(Math.log10(v) % 1) < 1e-9) : out;
  }
  const span = a.max - a.min || 1;
  const raw = span / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= 6) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(a.min / step) * step; v <= a.max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function scale(a: Axis, from: number, to: number): (v: number) => number {
  if (a.log) {
    const l0 = Math.log10(a.min), l1 = Math.log10(a.max);
    return (v) => from + ((Math.log10(Math.max(v, a.min)) - l0) / (l1 - l0 || 1)) * (to - from);
  }
  return (v) => from + ((v - a.min) / (a.max - a.min || 1)) * (to - from);
}

/** one line plot as an <svg> element (HTML5 inline SVG: no namespace URL needed) */
export function linePlot(o: { title: string; kind: string; x: Axis; y: Axis; lines: Line[] }): string {
  const sx = scale(o.x, M.l, W - M.r), sy = scale(o.y, H - M.b, M.t);
  const fx = o.x.fmt ?? num, fy = o.y.fmt ?? num;
  const parts: string[] = [
    `<svg class="plot" data-kind="${esc(o.kind)}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(o.title)}">`,
    `<text x="${W / 2}" y="14" text-anchor="middle" class="title">${esc(o.title)}</text>`,
  ];
  for (const v of ticks(o.y)) {
    const y = sy(v).toFixed(1);
    parts.push(`<line x1="${M.l}" x2="${W - M.r}" y1="${y}" y2="${y}" class="grid"/><text x="${M.l - 4}" y="${y}" dy="3" text-anchor="end">${esc(fy(v))}</text>`);
  }
  for (const v of ticks(o.x)) {
    const x = sx(v).toFixed(1);
    parts.push(`<line x1="${x}" x2="${x}" y1="${M.t}" y2="${H - M.b}" class="grid"/><text x="${x}" y="${H - M.b + 13}" text-anchor="middle">${esc(fx(v))}</text>`);
  }
  parts.push(`<rect x="${M.l}" y="${M.t}" width="${W - M.l - M.r}" height="${H - M.t - M.b}" class="frame"/>`);
  parts.push(`<text x="${(M.l + W - M.r) / 2}" y="${H - 4}" text-anchor="middle">${esc(o.x.label)}</text>`);
  parts.push(`<text transform="translate(11 ${(M.t + H - M.b) / 2}) rotate(-90)" text-anchor="middle">${esc(o.y.label)}</text>`);
  for (const l of o.lines) {
    let d = '';
    let pen = false;
    for (const p of l.points) {
      if (!p) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${sx(p[0]).toFixed(1)} ${sy(Math.min(o.y.max, p[1])).toFixed(1)}`;
      pen = true;
    }
    if (d) parts.push(`<path d="${d}" stroke="${l.color}" class="line${l.dash ? ' dash' : ''}"><title>${esc(l.label ?? '')}</title></path>`);
    if (l.dots) for (const p of l.points) if (p) parts.push(`<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(Math.min(o.y.max, p[1])).toFixed(1)}" r="1.8" fill="${l.color}"/>`);
  }
  const named = o.lines.filter((l) => l.label);
  if (named.length > 1) {
    named.forEach((l, i) => {
      const x = M.l + 6 + (i % 4) * 72, y = M.t + 10 + Math.floor(i / 4) * 12;
      parts.push(`<line x1="${x}" x2="${x + 12}" y1="${y - 3}" y2="${y - 3}" stroke="${l.color}" class="line${l.dash ? ' dash' : ''}"/><text x="${x + 15}" y="${y}">${esc(l.label!)}</text>`);
    });
  }
  parts.push('</svg>');
  return parts.join('');
}

const secs = (ms: number) => ms / 1000;

/** the three plots of one policy, on the ranges shared by all policies */
function policyPlots(s: WhatifSeries, overall: number, ranges: { endS: number; ttft: Axis; loadMax: number }): string[] {
  const at = (i: number) => secs(i * s.bucketMs + s.bucketMs / 2);
  // buckets where no request got its first token are left out (joined over, not drawn as 0 %)
  const hit: Line = { points: s.promptTokens.flatMap((p, i): Array<[number, number]> => (p > 0 ? [[at(i), (100 * s.cachedTokens[i]!) / p]] : [])), color: COLORS[0]!, label: 'per bucket', dots: true };
  const mean: Line = { points: [[0, overall * 100], [ranges.endS, overall * 100]], color: '#555', label: `run: ${(overall * 100).toFixed(1)}%`, dash: true };
  const cdf: Line = { points: s.ttftQuantilesMs.map((v, q) => [v, q]), color: COLORS[1]! };
  const load: Line[] = s.load.map((a, e) => ({ points: a.map((v, i) => [at(i), v]), color: COLORS[e % COLORS.length]!, label: `engine ${e}` }));
  const timeAxis: Axis = { min: 0, max: ranges.endS, label: `time (s of simulated time; buckets of ${num(secs(s.bucketMs))} s)` };
  return [
    linePlot({ title: 'hit rate over time (cached / prompt tokens)', kind: 'hit-rate', x: timeAxis, y: { min: 0, max: 100, label: 'hit rate %' }, lines: [hit, mean] }),
    linePlot({ title: 'TTFT CDF', kind: 'ttft-cdf', x: ranges.ttft, y: { min: 0, max: 100, label: '% of requests' }, lines: [cdf] }),
    linePlot({ title: 'per-engine load (mean requests in flight)', kind: 'engine-load', x: timeAxis, y: { min: 0, max: ranges.loadMax, label: 'requests in flight' }, lines: load }),
  ];
}

export function renderReport(r: WhatifResult, meta: { trace?: string; generatedAt?: Date } = {}): string {
  const withSeries = r.policies.filter((p) => p.series);
  const endS = Math.max(1e-3, ...withSeries.map((p) => secs(p.series!.promptTokens.length * p.series!.bucketMs)));
  const ttfts = withSeries.flatMap((p) => p.series!.ttftQuantilesMs).filter((v) => v > 0);
  const tMin = ttfts.length ? Math.min(...ttfts) : 1, tMax = ttfts.length ? Math.max(...ttfts) : 10;
  const log = tMax / tMin > 30;
  const ttft: Axis = log
    ? { min: 10 ** Math.floor(Math.log10(tMin)), max: 10 ** Math.ceil(Math.log10(tMax)), log: true, label: 'TTFT ms (log)', fmt: (v) => (v >= 1000 ? `${v / 1000}k` : String(v)) }
    : { min: 0, max: tMax * 1.05, label: 'TTFT ms' };
  const loadMax = Math.max(1, ...withSeries.flatMap((p) => p.series!.load.flat())) * 1.05;
  const rows = r.policies
    .map((p) => `<tr data-policy="${esc(p.policy)}">${whatifCells(p).map((c, i) => `<td${i ? ' class="n"' : ''}>${esc(c)}</td>`).join('')}</tr>`)
    .join('\n');
  const groups = r.policies
    .map((p) =>
      p.series
        ? `<section class="policy" data-policy="${esc(p.policy)}"><h2>${esc(p.policy)}</h2><div class="plots">${policyPlots(p.series, p.hitRate, { endS, ttft, loadMax }).join('\n')}</div></section>`
        : '',
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvgate what-if report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:3px 10px;border-bottom:1px solid #ddd}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:10px}.policy{margin-top:18px}h2{margin:4px 0;font-size:16px}
svg.plot{background:#fff;border:1px solid #ccc}svg text{font-size:10px;fill:#333}svg .title{font-size:12px;font-weight:600}
.grid{stroke:#eee}.frame{fill:none;stroke:#999}.line{fill:none;stroke-width:1.6}.dash{stroke-dasharray:4 3}
.meta{color:#555}
</style></head><body>
<h1>kvgate replay whatif</h1>
<p class="meta">${r.requests} requests on ${r.engines} simulated engines (virtual clock)${meta.trace ? ` · trace ${esc(meta.trace)}` : ''}${meta.generatedAt ? ` · ${esc(meta.generatedAt.toISOString())}` : ''}<br>
engines: ${esc(r.capacity.line)}<br>
bounds: infinite-cache hit rate ${(r.infiniteCacheHitRate * 100).toFixed(1)}%, pooled hit rate ${(r.pooledHitRate * 100).toFixed(1)}%</p>
<table id="summary"><thead><tr>${WHATIF_COLUMNS.map((c, i) => `<th${i ? ' class="n"' : ''}>${esc(c)}</th>`).join('')}</tr></thead><tbody>
${rows}
</tbody></table>
<p class="meta">(times in ms of simulated engine time)</p>
${groups}
</body></html>
`;
}
