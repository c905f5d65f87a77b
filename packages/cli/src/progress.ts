/** The progress line of long runs (kvgate start): a bar on a TTY, a line per tenth otherwise; on stderr. */
export function progressBar(label: string, total: number): { tick(done: number): void; end(): void } {
  const tty = process.stderr.isTTY;
  const t0 = Date.now();
  let last = -1;
  let lastDraw = 0;
  const draw = (done: number, force = false) => {
    const now = Date.now();
    if (!force && now - lastDraw < 200) return;
    lastDraw = now;
    const pct = total > 0 ? done / total : 1;
    const secs = ((now - t0) / 1000).toFixed(0);
    if (tty) {
      const width = 30;
      const fill = Math.round(pct * width);
      process.stderr.write(`\r${label.padEnd(16)} [${'█'.repeat(fill)}${'░'.repeat(width - fill)}] ${done}/${total} ${(pct * 100).toFixed(0)}% ${secs}s `);
    } else {
      const decile = Math.floor(pct * 10);
      if (decile !== last) {
        last = decile;
        process.stderr.write(`${label}: ${done}/${total} (${decile * 10}%) ${secs}s\n`);
      }
    }
  };
  return {
    tick: (done) => draw(done),
    end: () => {
      draw(total, true);
      if (tty) process.stderr.write('\n');
    },
  };
}
