export { startRouter, type RouterOptions, type RouterHandle, type RouterStats } from './router.js';
export { DEFAULT_WEIGHTS, DEFAULT_TIER_WEIGHTS, score, pick, parseTierWeights, resolveWeights, type ScoreWeights, type TierWeights, type WeightOptions, type Candidate, type Scored, type TierBlocks } from './scorer.js';
export { POLICIES, isPolicy, Selector, type Policy, type Decision } from './select.js';
export { Inflight, type InflightOptions, type Ticket } from './inflight.js';
export { WorkerView, type Pool } from './workers.js';
export { PromptTokenizer } from './tokenize.js';
export { RoutingCore, decisionRecord, type Route, type RouteRequest, type RoutingCoreOptions, type ClusterState, type TokenizerPort, type IndexQuery, type DecisionSink, type PendingDecision } from './routing-core.js';
export { ClusterView, type ClusterViewOptions } from './cluster-view.js';
