export const summary = '(being built)';
export async function run(_argv: string[]): Promise<number> {
  console.error('kvgate replay: not built yet');
  return 2;
}
