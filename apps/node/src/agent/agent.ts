import type { Logger } from '@meshnet/core'
import { type DataDirLayout, ensureDataDir, loadNodeIdentity, type NodeIdentity } from '@meshnet/identity'
import { type MeshStore, openStore } from '@meshnet/store'
import pkg from '../../package.json' with { type: 'json' }
import type { NodeConfig } from '../config.ts'
import { type ControlRoutes, type ControlServer, startControlServer } from './control-api.ts'

/** What every part of a running agent can use. */
export interface AgentContext {
  identity: NodeIdentity
  layout: DataDirLayout
  config: NodeConfig
  store: MeshStore
  logger: Logger
}

/**
 * One subsystem of the agent (beacons, pools, the libp2p node, rings). Parts start in order and stop
 * in reverse; each may add control routes and a status section. A part whose start() throws is
 * stopped too, so stop() must undo whatever a partial start opened.
 */
export interface AgentPart {
  readonly name: string
  start(): Promise<void>
  stop(): Promise<void>
  status?(): unknown
  routes?: ControlRoutes
}

/** Builds the agent's parts (no I/O here); they start in the order returned. */
export type AgentParts = (context: AgentContext) => AgentPart[]

export interface RunningAgent {
  readonly identity: NodeIdentity
  readonly controlPort: number
  status(): Record<string, unknown>
  /** One part's status (what `status()` gives under its name), without computing the others'. */
  partStatus(name: string): unknown
  stop(): Promise<void>
}

/**
 * Starts an agent on a data dir: identity, the state database (which locks the data dir against a
 * second agent), each part, then the control API on 127.0.0.1 — which is what `mesh` commands talk to.
 */
export async function startAgent(options: {
  dataDir: string
  config: NodeConfig
  logger: Logger
  parts: AgentParts
}): Promise<RunningAgent> {
  const { logger } = options
  const layout = await ensureDataDir(options.dataDir)
  const { identity, warnings } = await loadNodeIdentity(layout)
  for (const warning of warnings) logger.warn(warning)
  const store = openStore({ dataDir: layout.root, logger })
  const context: AgentContext = { identity, layout, config: options.config, store, logger }
  const started: AgentPart[] = []
  let control: ControlServer | undefined
  const startedAt = new Date()

  const stop = async () => {
    await control?.close()
    for (const part of started.reverse()) {
      try {
        await part.stop()
      } catch (err) {
        logger.warn({ part: part.name, err: (err as Error).message }, 'part did not stop cleanly')
      }
    }
    started.length = 0
    const { rm } = await import('node:fs/promises')
    await rm(layout.agentInfo, { force: true })
    store.close()
  }

  try {
    for (const part of options.parts(context)) {
      // A part whose start fails half way (the libp2p node listening, then its pool gate throwing)
      // is stopped with the others, so that nothing it opened keeps the process alive.
      started.push(part)
      await part.start()
      logger.debug({ part: part.name }, 'started')
    }
    const status = () => ({
      nodeId: identity.nodeId,
      name: options.config.name,
      networkId: options.config.networkId,
      version: pkg.version,
      pid: process.pid,
      dataDir: layout.root,
      startedAt: startedAt.toISOString(),
      // Writes lost to a full or failing disk (peer rows, which the node carries on without).
      store: { writeFailures: store.writeFailures },
      ...Object.fromEntries(started.filter((p) => p.status).map((p) => [p.name, p.status!()])),
    })
    const routes: ControlRoutes = { 'GET /status': () => status() }
    for (const part of started) Object.assign(routes, part.routes)
    control = await startControlServer({ layout, nodeId: identity.nodeId, routes, logger })
    const partStatus = (name: string) => started.find((p) => p.name === name)?.status?.()
    return { identity, controlPort: control.port, status, partStatus, stop }
  } catch (err) {
    await stop()
    throw err
  }
}
