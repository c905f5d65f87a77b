/**
 * Small Mooncake-format traces for tests. `sharedPrefixTrace`: 7 "conversations" (not a multiple of the engine
 * count, so round-robin scatters them), each 6 requests that extend a shared 4-block prefix, 150 ms apart — kv
 * routing beats round-robin on it. One JSON object a line: {timestamp, input_length, output_length, hash_ids}.
 */
export function sharedPrefixTrace(): string {
  const lines: string[] = [];
  let t = 0;
  for (let turn = 0; turn < 6; turn++) {
    for (let c = 0; c < 7; c++) {
      const ids = [c * 100, c * 100 + 1, c * 100 + 2, c * 100 + 3, ...Array.from({ length: turn }, (_, k) => c * 100 + 10 + k)];
      lines.push(JSON.stringify({ timestamp: (t += 150), input_length: ids.length * 512, output_length: 8, hash_ids: ids }));
    }
  }
  return lines.join('\n');
}
