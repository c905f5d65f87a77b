/** Parses a time flag: ms since the epoch, an ISO date, or relative to now ("-5m", "-30s", "-2h", "now"). */
export function parseTimeArg(s: string | undefined, now = Date.now()): number | undefined {
  if (s === undefined || s === '') return undefined;
  if (s === 'now') return now;
  const rel = /^-(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(s);
  if (rel) {
    const unit = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[rel[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
    return now - Number(rel[1]) * unit;
  }
  if (/^\d+$/.test(s)) return Number(s);
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new Error(`not a time: ${JSON.stringify(s)} (use ms since epoch, ISO 8601, or -5m style)`);
  return t;
}
