/**
 * Prometheus text, read the way the tests need it: the sum of a metric's samples whose line carries `label`
 * (a substring such as `worker="w0"`; '' = every sample of the metric). `name` must match the sample's name
 * exactly (`kvgate_x_total` does not match `kvgate_x_total_bytes`).
 */
export function metricSum(text: string, name: string, label = ''): number {
  let n = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || !line.includes(label)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== '{' && rest[0] !== ' ') continue;
    n += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return n;
}
