/**
 * @packageDocumentation
 * Test helpers that Meshnet's packages and apps share (private, never published): temp dirs of
 * generated GGUF models, the real `mesh` CLI and agents run from source as processes, polling with a
 * bound, the workspace built and packed into tarballs as it would be published, and a headless
 * Chromium with the dashboard page built for browser tests.
 */
export type { AgentProcess, AgentProcessOptions } from './agent-process.ts'
export { agentRequest, beaconPort, startAgentProcess } from './agent-process.ts'
export type { BrowserName, LaunchedBrowser } from './browser.ts'
export { buildDashboard, launchBrowser } from './browser.ts'
export { withBuildLock } from './build-lock.ts'
export { eventually } from './eventually.ts'
export type { MeshResult } from './mesh-cli.ts'
export { createModel, MESH_BIN, runMesh } from './mesh-cli.ts'
export type { ModelShape } from './models.ts'
export { modelDir, withChatTemplate, withMetadata } from './models.ts'
export { packWorkspace } from './pack.ts'
export type { RangeServer } from './range-server.ts'
export { startRangeServer } from './range-server.ts'
export { meshnetClosure, packageDir, REPO_ROOT, SDK_FORBIDDEN_DEPENDENCIES } from './workspace.ts'
