/** One benchmark figure (DESIGN.md section 7). `baseline` is measured in the same run, same unit. */
export interface Figure {
  bench: string;
  value: number;
  unit: string;
  baseline?: number;
  note?: string;
}

export interface BenchContext {
  /** report a figure as soon as it is measured */
  report(f: Figure): void;
  /** progress line on stderr (long runs show progress) */
  progress(msg: string): void;
  /** --quick: smaller sizes, for smoke runs */
  quick: boolean;
}

/** A bench module: `bench/<name>.bench.ts` exporting `default` of this type and a `title`. */
export type BenchModule = (ctx: BenchContext) => Promise<void>;

/** Percentile of an unsorted sample (nearest rank). */
export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}
