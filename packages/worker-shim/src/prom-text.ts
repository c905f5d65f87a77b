/**
 * A small parser for the Prometheus text exposition format (version 0.0.4), enough to read an
 * engine's /metrics: `name{label="value",…} value [timestamp]` lines, `#` comments skipped.
 * Pure. Lines it cannot read are skipped and counted, never thrown: an engine upgrade that adds a
 * strange line must not stop load reports.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface ParsedMetrics {
  samples: Sample[];
  /** lines that were neither comments, blank, nor readable samples */
  skipped: number;
}

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;

function parseValue(s: string): number {
  switch (s) {
    case '+Inf':
    case 'Inf':
      return Infinity;
    case '-Inf':
      return -Infinity;
    case 'NaN':
      return NaN;
    default:
      return s === '' ? NaN : Number(s);
  }
}

/** Parses `{a="x",b="y"}` starting at text[i] === '{'; returns the labels and the index after '}'. */
function parseLabels(line: string, start: number): { labels: Record<string, string>; end: number } | null {
  const labels: Record<string, string> = {};
  let i = start + 1;
  for (;;) {
    while (line[i] === ' ' || line[i] === ',') i++;
    if (line[i] === '}') return { labels, end: i + 1 };
    const m = NAME_RE.exec(line.slice(i));
    if (!m) return null;
    const key = m[0];
    i += key.length;
    while (line[i] === ' ') i++;
    if (line[i] !== '=') return null;
    i++;
    while (line[i] === ' ') i++;
    if (line[i] !== '"') return null;
    i++;
    let val = '';
    for (;;) {
      const c = line[i];
      if (c === undefined) return null;
      if (c === '"') break;
      if (c === '\\') {
        const e = line[i + 1];
        val += e === 'n' ? '\n' : e ?? '';
        i += 2;
        continue;
      }
      val += c;
      i++;
    }
    labels[key] = val;
    i++;
  }
}

export function parsePrometheusText(text: string): ParsedMetrics {
  const samples: Sample[] = [];
  let skipped = 0;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = NAME_RE.exec(line);
    if (!m) {
      skipped++;
      continue;
    }
    const name = m[0];
    let i = name.length;
    let labels: Record<string, string> = {};
    if (line[i] === '{') {
      const l = parseLabels(line, i);
      if (!l) {
        skipped++;
        continue;
      }
      labels = l.labels;
      i = l.end;
    }
    const rest = line.slice(i).trim().split(/\s+/);
    const value = parseValue(rest[0] ?? '');
    if (Number.isNaN(value) && rest[0] !== 'NaN') {
      skipped++;
      continue;
    }
    samples.push({ name, labels, value });
  }
  return { samples, skipped };
}
