/**
 * @packageDocumentation
 * Test helpers that Meshnet's packages and apps share (private, never published): temp dirs of
 * generated GGUF models, and agents run as real `mesh` processes.
 */
export type { ModelShape } from './models.ts'
export { modelDir } from './models.ts'
