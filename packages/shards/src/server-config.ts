import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import type { KernelFactory, Kernels, ShardSpec } from '@meshnet/engine'
import type { ShardGate } from './peers.ts'
import type { SegmentReport } from './weight-cache.ts'

/**
 * A member's copy of a model known by its id: a file, and how to make sure the bytes of a shard are
 * on disk and verified before it loads (a model fetched by parts fetches what is missing).
 */
export interface ModelCopy {
  path: string
  ensure(spec: ShardSpec, signal?: AbortSignal): Promise<void>
}

/**
 * Finds this member's copy of a model by its id (hex): a whole file whose SHA-256 is the id, or a
 * `ModelCopy`; undefined when it has none.
 */
export type ModelResolver = (
  sha256: string,
) => string | ModelCopy | undefined | Promise<string | ModelCopy | undefined>

export interface ShardServerConfig {
  node: MeshNode
  gate: ShardGate
  /** One kernel set for every weight, or a factory: kernels (and memory) of its own per segment. */
  kernels: Kernels | KernelFactory
  /** Weight bytes per segment at most, with a factory. */
  segmentBytes: number
  models: ModelResolver
  logger: Logger
  maxSessions: number
  memoryBytes: number
  idleTimeoutMs: number
  helloTimeoutMs: number
  linkTimeoutMs: number
  /** Host the direct-channel listener binds, or undefined for libp2p links only. */
  directHost: string | undefined
}

export interface ShardServerStats {
  /** Sessions open now. */
  sessions: number
  sessionsOpened: number
  sessionsExpired: number
  /** Streams and sessions refused, by reason: not-a-member, malformed, capacity, model, sessions, other. */
  refused: Record<string, number>
  /** Distinct shards whose weights are in memory (shared by their sessions). */
  weightSets: number
  weightBytes: number
  /** The weight segments in memory or loading, with their load progress. */
  segments: SegmentReport[]
  /** KV caches and scratch of the open sessions. */
  sessionBytes: number
  /** The budget both come out of. */
  memoryBytes: number
  steps: number
  /**
   * Continuous batching: passes over the weights, the steps they ran (several sessions' steps per
   * pass when they arrive together), and the most sessions one pass served.
   */
  batching: { passes: number; steps: number; widest: number }
  linkBytesSent: number
  /** Links set up since start, by transport. */
  links: { direct: number; libp2p: number }
}
