export * from './errors.js';
export * from './subjects.js';
export * from './hashing.js';
export * from './schemas.js';
export * from './bus/bus.js';
export * from './log.js';
export * from './tracing.js';
