/**
 * @packageDocumentation
 * llama.cpp for Meshnet, through node-llama-cpp's prebuilt CPU binaries: the reference engine that
 * the Meshnet engine is tested against and that runs a whole model on one member, a tokenizer for
 * every vocabulary llama.cpp reads, and `createEngine` over both engines. The only Meshnet package
 * that loads a native runtime.
 */
export type { CreateEngineOptions, EngineName } from './create-engine.ts'
export { createEngine, ENGINE_NAMES } from './create-engine.ts'
export type { LlamaCppEngine, LlamaCppEngineOptions } from './engine.ts'
export { createLlamaCppEngine, llamaCppEngineOptionsSchema } from './engine.ts'
export type { LlamaRuntime } from './runtime.ts'
export { acquireLlama } from './runtime.ts'
export { LlamaCppTokenizer, openModelTokenizer } from './tokenizer.ts'
