/**
 * @kvgate/workload: the simulation and measurement harness behind `kvgate start`, `kvgate replay whatif`, the
 * end-to-end tests and the benchmarks. Nothing here runs in a production router; the router does not depend on it.
 */
export { startStack, type Stack, type StackOptions } from './stack.js';
export { buildPlan, chatPlan, tracePlan, planData, runPlan, runPlanInThread, type Plan, type PlanSpec, type PlannedRequest, type ChatWorkloadOptions, type RequestData } from './plan.js';
export { LoadClient, type RequestResult } from './client.js';
export { parseTrace, readTrace, recordTokens, blockTokens, TRACE_BLOCK, type TraceRecord } from './trace.js';
export { summarize, percentile, type PolicyResult } from './stats.js';
export { infiniteHitRate, pooledHitRate, type BoundBlock } from './bounds.js';
export { engineCounter, sumCounter } from './engine-counters.js';
export { startEngineThread, type ThreadEngine } from './engine-threads.js';
export { longPromptRequests, pdFigures, type LongPromptWorkload, type PdRunFigures } from './pd-workload.js';
