/**
 * LogSummary: rate-limited logging of a condition that can repeat thousands of times a second (a flood of bad ZMQ
 * frames from a misconfigured or hostile publisher). It owns its counts and one unref'd timer, nothing else.
 *   - the first occurrence while no window is open is logged at once (reason and the error), and opens a window;
 *   - the ones after it are counted by reason; when the window ends (every `intervalMs`, default 10 s) one line
 *     sums them up — how many, by reason, the last error — and, if there were any, the next window starts;
 *   - a window that saw nothing closes, so the next occurrence is again logged at once.
 * So a flood costs one line per interval however fast it comes, and a lone bad frame still shows its error.
 * The counters (metrics) count every occurrence; this only decides what reaches the log.
 */

/** what a summary writes to (pino's warn; a test's capture) */
export interface SummaryLog {
  warn(obj: Record<string, unknown>, msg: string): void;
}

/** timers, injectable for tests (default setTimeout/clearTimeout, unref'd) */
export interface SummaryTimers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

const REAL_TIMERS: SummaryTimers = {
  set(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clear(h) {
    clearTimeout(h as ReturnType<typeof setTimeout>);
  },
};

export interface LogSummaryOptions {
  log: SummaryLog;
  /** the first line's message, one occurrence: e.g. 'malformed engine frame skipped' */
  one: string;
  /** what is counted, plural, for the summary line: e.g. 'malformed engine frames skipped' */
  what: string;
  /** bindings on every line (e.g. the worker) */
  bindings?: Record<string, unknown>;
  /** window length, ms (default 10 000) */
  intervalMs?: number;
  timers?: SummaryTimers;
}

export class LogSummary {
  readonly #o: LogSummaryOptions;
  readonly #intervalMs: number;
  readonly #timers: SummaryTimers;
  #timer: unknown;
  #open = false;
  #counts = new Map<string, number>();
  #total = 0;
  #lastErr = '';
  #stopped = false;

  constructor(o: LogSummaryOptions) {
    this.#o = o;
    this.#intervalMs = o.intervalMs ?? 10_000;
    this.#timers = o.timers ?? REAL_TIMERS;
  }

  /** one occurrence: logged now if no window is open, else counted for the window's summary */
  note(reason: string, err: string): void {
    if (this.#stopped) return;
    if (!this.#open) {
      this.#open = true;
      this.#o.log.warn({ ...this.#o.bindings, reason, err }, `${this.#o.one} (more are summed up every ${this.#intervalMs / 1000} s)`);
      this.#arm();
      return;
    }
    this.#counts.set(reason, (this.#counts.get(reason) ?? 0) + 1);
    this.#total++;
    this.#lastErr = err;
  }

  /** the window's end: one summary line if anything was counted (then a new window), else the window closes */
  flush(): void {
    this.#timer = undefined;
    if (this.#total === 0) {
      this.#open = false;
      return;
    }
    this.#o.log.warn(
      { ...this.#o.bindings, count: this.#total, byReason: Object.fromEntries(this.#counts), lastErr: this.#lastErr, windowS: this.#intervalMs / 1000 },
      `${this.#total} more ${this.#o.what} in the last ${this.#intervalMs / 1000} s`,
    );
    this.#counts = new Map();
    this.#total = 0;
    this.#lastErr = '';
    if (!this.#stopped) this.#arm();
    else this.#open = false;
  }

  /** stop: what was counted is written now, and nothing more is */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer !== undefined) this.#timers.clear(this.#timer);
    this.flush();
  }

  #arm(): void {
    this.#timer = this.#timers.set(() => this.flush(), this.#intervalMs);
  }
}

