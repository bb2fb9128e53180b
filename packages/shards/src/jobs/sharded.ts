import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import { TextStreamer, type Tokenizer } from '@meshnet/engine'
import type { JobResult, JobToken } from '@meshnet/protocols'
import { planPipeline, planTensor, type RingMember, ShardPlanError } from '@meshnet/ring'
import { runShardedGeneration } from '../coordinator.ts'
import type { ShardedGenerationResult } from '../coordinator-options.ts'
import type { ShardGate } from '../peers.ts'
import type { ShardedPlan, ShardModelFacts } from '../plan.ts'
import type { ShardServer } from '../server.ts'
import { JobRefusedError } from './errors.ts'
import { type ConstraintFactory, type ParsedJobRequest, samplingOf } from './request.ts'
import type { JobRings, JobStore, ServedModel } from './types.ts'

/** Ring members that hold the served model's file. */
export function holders(rings: JobRings, poolId: string, served: ServedModel): RingMember[] {
  const members = rings.members(poolId)
  if (members === undefined)
    throw new JobRefusedError('ERR_NO_RING', `this node has no ring for pool ${poolId}`)
  return members.filter((m) => m.capabilities.models.some((x) => x.sha256 === served.info.sha256))
}

/** A pipeline or tensor plan over `members`, each shard with the member's addresses. */
export function planOn(
  mode: 'pipeline' | 'tensor',
  members: readonly RingMember[],
  facts: ShardModelFacts,
): ShardedPlan {
  const ringOrder = members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes }))
  const addrs = (nodeId: string) => {
    const found = members.find((m) => m.nodeId === nodeId)!.addresses
    return found.length > 0 ? { addrs: found.slice(0, 16) } : {}
  }
  return mode === 'pipeline'
    ? { mode, shards: planPipeline(ringOrder, facts).map((s) => ({ ...s, ...addrs(s.nodeId) })) }
    : {
        mode,
        shards: planTensor(ringOrder, facts).map((s) => ({
          nodeId: s.nodeId,
          heads: s.heads,
          ffn: s.ffn,
          ...addrs(s.nodeId),
        })),
      }
}

/** Runs a job split over the ring's members that hold the model, failing over to the live ones. */
export async function* runSharded(job: {
  nodeId: string
  node: MeshNode
  gate: ShardGate
  store: JobStore
  rings: JobRings
  logger: Logger
  served: ServedModel
  tokenizer: Tokenizer
  stopTokens: number[]
  local: ShardServer | undefined
  request: ParsedJobRequest
  promptTokens: number[]
  /** With a `grammar`: the constraint of this run (it lasts through failovers). */
  constraint: ConstraintFactory | undefined
  poolId: string
  mode: 'pipeline' | 'tensor'
  jobId: string
  signal: AbortSignal
  started: number
  /** Hears the members of the first plan, and of each plan a failover moves to. */
  onPlan?: (members: string[], failover?: { dead: string[] }) => void
}): AsyncGenerator<JobToken, JobResult, undefined> {
  const { served, poolId, mode, jobId, store, promptTokens } = job
  let plan: ShardedPlan
  try {
    plan = planOn(mode, holders(job.rings, poolId, served), served.plan)
  } catch (err) {
    if (err instanceof ShardPlanError) throw new JobRefusedError('ERR_NO_PLAN', err.message)
    throw err
  }
  job.onPlan?.(plan.shards.map((s) => s.nodeId))
  const gen = runShardedGeneration({
    node: job.node,
    gate: job.gate,
    poolId,
    model: { sha256: served.info.sha256 },
    plan,
    promptTokens,
    maxTokens: job.request.maxTokens,
    sampling: samplingOf(job.request),
    ...(job.request.logprobs === undefined ? {} : { logprobs: job.request.logprobs }),
    ...(job.constraint === undefined ? {} : { constraint: job.constraint() }),
    stopTokens: job.stopTokens,
    local: job.local,
    signal: job.signal,
    logger: job.logger,
    replan: (dead) => {
      for (const nodeId of dead) {
        store.recordTrustEvent(nodeId, { kind: 'shard-lost', delta: -0.1, reason: `lost mid-job ${jobId}` })
      }
      const left = holders(job.rings, poolId, served).filter((m) => !dead.includes(m.nodeId))
      if (left.length === 0) throw new ShardPlanError('no member that holds the model is left')
      const next = planOn(mode, left, served.plan)
      job.onPlan?.(
        next.shards.map((s) => s.nodeId),
        { dead },
      )
      return next
    },
  })
  const streamer = new TextStreamer(job.tokenizer, promptTokens)
  let result: ShardedGenerationResult | undefined
  try {
    for (;;) {
      const step = await gen.next()
      if (step.done) {
        result = step.value
        break
      }
      yield {
        id: step.value.id,
        text: streamer.push(step.value.id),
        index: step.value.index,
        ...(step.value.logprobs === undefined ? {} : { logprobs: step.value.logprobs }),
      }
    }
  } finally {
    // Returned early (its consumer stopped reading): the members' sessions close now, not at their timeout.
    if (result === undefined) await gen.return(undefined as never).catch(() => {})
  }
  const tail = streamer.flush()
  if (tail !== '') {
    yield { id: result.tokens.at(-1) ?? 0, text: tail, index: result.tokens.length - 1, textOnly: true }
  }
  const members = result.plan.shards.map((s) => s.nodeId)
  for (const nodeId of members) {
    if (nodeId !== job.nodeId)
      store.recordTrustEvent(nodeId, { kind: 'shard-completed', delta: 0.01, reason: `job ${jobId}` })
  }
  const { stats } = result
  return {
    jobId,
    mode,
    model: served.info.sha256,
    tokens: result.tokens,
    text: streamer.text,
    stopReason: result.stopReason,
    stats: {
      tokensPerSecond: stats.tokensPerSecond,
      timeToFirstTokenMs: stats.timeToFirstTokenMs,
      totalMs: performance.now() - job.started,
      promptTokens: promptTokens.length,
      completionTokens: result.tokens.length,
      hopLatencyMs: stats.hopLatencyMs ?? 0,
      bytesMoved: stats.bytes.control + stats.bytes.links,
      failovers: stats.failovers.length,
      members,
      ...(stats.allReduceMs === undefined ? {} : { allReduceMs: stats.allReduceMs }),
    },
  }
}
