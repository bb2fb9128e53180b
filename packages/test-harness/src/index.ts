/**
 * @packageDocumentation
 * Test helpers that Meshnet's packages and apps share (private, never published): temp dirs of
 * generated GGUF models, the real `mesh` CLI run from source, and the workspace built and packed
 * into tarballs as it would be published.
 */
export type { MeshResult } from './mesh-cli.ts'
export { createModel, MESH_BIN, runMesh } from './mesh-cli.ts'
export type { ModelShape } from './models.ts'
export { modelDir } from './models.ts'
export { meshnetClosure, packageDir, packWorkspace, REPO_ROOT } from './pack.ts'
