export { startRouter, type RouterOptions, type RouterHandle, type RouterStats } from './router.js';
export { DEFAULT_WEIGHTS, score, pick, type ScoreWeights, type Candidate, type Scored } from './scorer.js';
export { POLICIES, isPolicy, Selector, type Policy, type Decision } from './select.js';
export { Inflight, type InflightOptions, type Ticket } from './inflight.js';
export { WorkerView, type Pool } from './workers.js';
export { PromptTokenizer } from './tokenize.js';
