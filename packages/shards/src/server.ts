import { type Logger, parseWith, silentLogger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import { DEFAULT_SEGMENT_BYTES, type KernelFactory, type Kernels, type ShardSpec } from '@meshnet/engine'
import { z } from 'zod'
import type { Channel } from './channel.ts'
import type { ShardGate } from './peers.ts'
import type { ModelCopy, ModelResolver, ShardServerStats } from './server-config.ts'
import { ShardServerImpl } from './shard-server.ts'

export const shardServerOptionsSchema = z.strictObject({
  /** Sessions open at once (each has its own KV cache). */
  maxSessions: z.number().int().min(1).max(4096).default(16),
  /**
   * Budget for shard weights (kernel memory) plus every session's KV cache and scratch. A session
   * that does not fit is refused with ShardCapacityError; unused weights are evicted first.
   */
  memoryBytes: z
    .number()
    .int()
    .min(1 << 20)
    .default(3 * 2 ** 30),
  /**
   * With a kernel factory: weight bytes one segment takes at most, each segment in kernel memory
   * of its own (a wasm32 memory holds at most 4 GiB, KV caches and scratch included).
   */
  segmentBytes: z
    .number()
    .int()
    .min(1 << 20)
    .max(2 ** 32 - 2 ** 28)
    .default(DEFAULT_SEGMENT_BYTES),
  /** A session with no step for this long is closed (its coordinator gets an ERROR). */
  idleTimeoutMs: z.number().int().min(100).max(86_400_000).default(120_000),
  /** Budget for the first frame of a stream. */
  helloTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
  /** Budget for setting up one link to another member. */
  linkTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
  /**
   * Direct encrypted TCP channels between members (keys agreed over libp2p): true (default),
   * false (libp2p streams only), or the host the listener binds (default: 127.0.0.1 for a
   * `localOnly` node, else 0.0.0.0).
   */
  direct: z.union([z.boolean(), z.strictObject({ host: z.string().min(1) })]).default(true),
})

export type ShardServerOptions = z.input<typeof shardServerOptionsSchema>

export interface ShardServerInit extends ShardServerOptions {
  node: MeshNode
  /** Pool membership of peers: `@meshnet/ring`'s PoolGate. */
  gate: ShardGate
  /**
   * Where shard weights live and are multiplied: one kernel set for all (at most 4 GiB: one wasm32
   * memory), or a factory that gives each weight segment kernels and memory of its own, so that a
   * member holds as much as its `memoryBytes` allows.
   */
  kernels: Kernels | KernelFactory
  /** This member's copy of a model by SHA-256; its hash is checked before a shard is loaded. */
  models: ModelResolver
  logger?: Logger
}

/** A frame channel to a shard server on this node (see `ShardServer.connectLocal`). */
export type ShardChannel = Channel

/** The shard service of one ring member. */
export interface ShardServer {
  /** Serves `/meshnet/shard/1.0.0` on the node. */
  start(): Promise<void>
  /** Ends every session (their coordinators get an ERROR), frees every weight, closes listeners. */
  stop(): Promise<void>
  stats(): ShardServerStats
  /**
   * A session channel for a coordinator running on this same node (a node cannot dial itself);
   * `runShardedGeneration({ local })` uses it for the plan entry that is this node.
   */
  connectLocal(): ShardChannel
  /**
   * Loads the weights of a shard ahead of its first session (the ring agreed on a plan) and keeps
   * them while idle; resolves once loaded. Progress shows in `stats().segments`.
   */
  preload(sha256: string, spec: ShardSpec): Promise<{ weightBytes: number; loadMs: number; reused: boolean }>
}

/**
 * The service each ring member runs to take part in sharded sessions. Construction checks the
 * options and does no I/O; `start()` registers the protocol.
 */
export function shardServer(init: ShardServerInit): ShardServer {
  const { node, gate, kernels, models, logger, ...rest } = init
  const parsed = parseWith(shardServerOptionsSchema, rest, 'shard server option')
  const opts = parsed
  const directHost =
    opts.direct === false
      ? undefined
      : opts.direct === true
        ? node.options.localOnly
          ? '127.0.0.1'
          : '0.0.0.0'
        : opts.direct.host
  return new ShardServerImpl({
    node,
    gate,
    kernels,
    models,
    logger: (logger ?? silentLogger()).child({ component: 'shard-server' }),
    maxSessions: opts.maxSessions,
    memoryBytes: opts.memoryBytes,
    segmentBytes: opts.segmentBytes,
    idleTimeoutMs: opts.idleTimeoutMs,
    helloTimeoutMs: opts.helloTimeoutMs,
    linkTimeoutMs: opts.linkTimeoutMs,
    directHost,
  })
}

export type { ModelCopy, ModelResolver, ShardServerStats }
