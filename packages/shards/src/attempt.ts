import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import type { EmbeddingPooling } from '@meshnet/engine'
import {
  decodeControl,
  decodeEmbedding,
  decodeOutput,
  type EmbeddingFrame,
  embeddingFrameBytes,
  encodeControl,
  encodeStep,
  MAX_CONTROL_FRAME_BYTES,
  MAX_EMBEDDING_VALUES,
  type MemberRef,
  type OpenMessage,
  type OutputFrame,
  type ReadyMessage,
  SHARD_FRAME,
  shardConnectedSchema,
  shardErrorSchema,
  shardFrameKind,
  shardReadySchema,
} from '@meshnet/protocols'
import type { z } from 'zod'
import { type Channel, libp2pChannel } from './channel.ts'
import type { Meter, Options, Step } from './coordinator-options.ts'
import { type Deferred, deferred } from './deferred.ts'
import { remoteError, ShardedRunError, ShardSessionError } from './errors.ts'
import { dialMember, dialTarget, knownAddrs, type MembershipCheck } from './peers.ts'
import type { ParsedShardedPlan } from './plan.ts'
import type { ShardServer } from './server.ts'

/** How long a member another one could not reach gets to show its own stream broke. */
const SUSPECT_GRACE_MS = 250

/** A failure of one attempt that a failover may cure (its cause says what happened). */
export class AttemptError extends Error {
  override name = 'AttemptError'
}

/** The options of a run an attempt uses (a generation's, or an embedding's). */
export type AttemptOptions = Pick<
  Options,
  | 'poolId'
  | 'model'
  | 'maxBatch'
  | 'kvCacheType'
  | 'activations'
  | 'links'
  | 'openTimeoutMs'
  | 'stepTimeoutMs'
>

interface AttemptContext {
  node: MeshNode
  local: ShardServer | undefined
  membership: MembershipCheck
  opts: AttemptOptions
  contextSize: number
  topK: number
  meter: Meter
  logger: Logger
  signal: AbortSignal | undefined
  /** An embedding run: the sessions pool the final hidden states this way (pipeline only). */
  embedding?: EmbeddingPooling
  /** The output members add the log-sum-exp of their rows to every OUTPUT (for log-probabilities). */
  logSumExp?: boolean
}

/** What the output member answers a step with: candidates, or (embedding sessions) a vector. */
type StepAnswer = OutputFrame | EmbeddingFrame

interface AttemptMember {
  ref: MemberRef
  rank: number
  local: boolean
  channel: Channel
  reported: boolean
  ready: Deferred<ReadyMessage>
  connected: Deferred<z.infer<typeof shardConnectedSchema>>
  outputs: StepAnswer[]
  waiter: Deferred<StepAnswer> | undefined
}

/** One plan's sessions: opened, linked, stepped, closed (or abandoned on a failure). */
export class Attempt {
  readonly #ctx: AttemptContext
  #plan!: ParsedShardedPlan
  #members: AttemptMember[] = []
  readonly #failed = deferred<never>()
  #failure: Error | undefined
  #closing = false
  #seq = 0
  readonly #suspects = new Set<string>()
  readonly #broken = new Set<string>()
  readonly #onBroken = new Map<string, () => void>()
  vocab = 0
  /** The model's width (an embedding's length). */
  embd = 0
  links = { direct: 0, libp2p: 0 }

  constructor(ctx: AttemptContext) {
    this.#ctx = ctx
  }

  controlBytes(): number {
    let sum = 0
    for (const m of this.#members) sum += m.channel.bytesRead + m.channel.bytesWritten
    return sum
  }

  /** Opens every member's session, checks they agree on the model, and links them. */
  async open(plan: ParsedShardedPlan): Promise<void> {
    this.#plan = plan
    const { opts } = this.#ctx
    const session = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('hex')
    const settled = await this.#guard(
      Promise.allSettled(plan.shards.map((shard, rank) => this.#connect(shard.nodeId, shard.addrs, rank))),
      opts.openTimeoutMs,
      'connecting to the members',
    )
    const members = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
    this.#members = members
    this.#ctx.logger.debug({ members: members.length, mode: plan.mode }, 'members reached')
    const refused = settled.find((r) => r.status === 'rejected')
    if (refused) {
      for (const m of members) m.channel.abort(new ShardSessionError('another member could not be reached'))
      const err = refused.reason as Error
      if (err instanceof AttemptError) this.#fail(err.cause as Error)
      throw err
    }
    const refs = members.map((m) => m.ref)
    const outputRank = plan.mode === 'pipeline' ? plan.shards.length - 1 : 0
    await this.#guard(
      Promise.all(
        members.map((m) => {
          const s = plan.shards[m.rank]!
          const open: OpenMessage = {
            v: 1,
            poolId: opts.poolId,
            session,
            model: { sha256: opts.model.sha256 },
            mode: plan.mode,
            rank: m.rank,
            members: refs,
            shard:
              plan.mode === 'pipeline'
                ? {
                    layers: [...(s as { layers: readonly [number, number] }).layers] as [number, number],
                    embed: m.rank === 0,
                    head: m.rank === outputRank,
                  }
                : {
                    heads: [...(s as { heads: readonly [number, number] }).heads] as [number, number],
                    ffn: [...(s as { ffn: readonly [number, number] }).ffn] as [number, number],
                    embed: true,
                    // Every member projects its share of the vocabulary; the candidates merge here.
                    head: false,
                  },
            contextSize: this.#ctx.contextSize,
            maxBatch: opts.maxBatch,
            kvCacheType: opts.kvCacheType,
            activations: opts.activations,
            topK: this.#ctx.topK,
            links: opts.links,
            ...(this.#ctx.embedding === undefined ? {} : { embedding: this.#ctx.embedding }),
            ...(this.#ctx.logSumExp === true ? { logSumExp: true as const } : {}),
          }
          void this.#read(m, outputRank)
          return m.channel.write(encodeControl(SHARD_FRAME.OPEN, open)).catch((err: unknown) => {
            this.#lost(m, err)
          })
        }),
      ),
      opts.openTimeoutMs,
      'opening the sessions',
    )
    const readies = await this.#guard(
      Promise.all(members.map((m) => m.ready.promise)),
      opts.openTimeoutMs,
      'the members loading their shards',
    )
    this.#ctx.logger.debug({ loadMs: readies.map((r) => Math.round(r.loadMs)) }, 'sessions ready')
    const config = readies[0]!.config
    for (const [i, r] of readies.entries()) {
      if (JSON.stringify(r.config) !== JSON.stringify(config)) {
        this.#fail(
          new ShardSessionError(
            `member ${members[i]!.ref.nodeId} has another model shape than ${members[0]!.ref.nodeId}`,
          ),
        )
      }
    }
    const end =
      plan.mode === 'pipeline'
        ? plan.shards.at(-1)!.layers[1] === config.layers
        : plan.shards.at(-1)!.heads[1] === config.heads && plan.shards.at(-1)!.ffn[1] === config.ff
    if (!end) {
      throw new ShardedRunError(
        plan.mode === 'pipeline'
          ? `the plan covers layers [0, ${plan.shards.at(-1)!.layers[1]}) of a ${config.layers}-layer model`
          : `the plan covers heads [0, ${plan.shards.at(-1)!.heads[1]}) and FFN columns [0, ${plan.shards.at(-1)!.ffn[1]}) of a model with ${config.heads} heads and ${config.ff} FFN columns`,
      )
    }
    this.vocab = config.vocab
    this.embd = config.embd
    await this.#guard(
      Promise.all(
        members.map((m) =>
          m.channel.write(encodeControl(SHARD_FRAME.CONNECT, {})).catch((err: unknown) => {
            this.#lost(m, err)
          }),
        ),
      ),
      opts.openTimeoutMs,
      'linking the members',
    )
    const connected = await this.#guard(
      Promise.all(members.map((m) => m.connected.promise)),
      opts.openTimeoutMs,
      'linking the members',
    )
    for (const c of connected) {
      for (const t of c.transports) this.links[t]++
    }
    this.#ctx.logger.debug({ links: this.links }, 'members linked')
  }

  /** Sends steps (all at once, so a pipeline overlaps them) and returns the last one's output. */
  async run(steps: Step[], decode: boolean): Promise<OutputFrame> {
    const { meter } = this.#ctx
    const started = performance.now()
    const bytesBefore = this.controlBytes()
    const { answers, linkBytes } = await this.#exchange(steps)
    const output = answers.at(-1)
    if (output === undefined || !('ids' in output)) {
      throw new ShardSessionError('the output member answered a generation step with no candidates')
    }
    if (decode) {
      const rtt = performance.now() - started
      const computeMs = output.computeUs / 1000
      const waitMs = output.waitUs / 1000
      const hops = this.#plan.mode === 'pipeline' ? this.#members.length + 1 : 2
      meter.decodeSteps++
      meter.decodeCompute += computeMs
      meter.decodeBytes += linkBytes + (this.controlBytes() - bytesBefore)
      meter.hopSum += Math.max(0, rtt - computeMs - waitMs) / hops
      meter.hopSteps++
      if (output.exchanges > 0) {
        meter.allReduceSum += waitMs / output.exchanges
        meter.allReduceSteps++
      }
    }
    return output
  }

  /** Embedding sessions: sends steps (all at once) and returns the output member's answer to each. */
  async embed(steps: Step[]): Promise<EmbeddingFrame[]> {
    const { answers } = await this.#exchange(steps)
    return answers.map((a) => {
      if ('ids' in a)
        throw new ShardSessionError('the output member answered an embedding step with candidates')
      return a
    })
  }

  /** Sends `steps` and reads the answer to each, in order. */
  async #exchange(steps: Step[]): Promise<{ answers: StepAnswer[]; linkBytes: number }> {
    const { opts, meter } = this.#ctx
    const first = this.#seq
    const targets = this.#plan.mode === 'pipeline' ? [this.#members[0]!] : this.#members
    for (const step of steps) {
      const frame = encodeStep({ seq: this.#seq++, pos: step.pos, want: step.want, tokens: step.tokens })
      await this.#guard(
        Promise.all(
          targets.map((m) =>
            m.channel.write(frame).catch((err: unknown) => {
              this.#lost(m, err)
            }),
          ),
        ),
        opts.stepTimeoutMs,
        'sending a step',
      )
    }
    const answers: StepAnswer[] = []
    let linkBytes = 0
    for (let i = 0; i < steps.length; i++) {
      const output = await this.#guard(this.#nextOutput(), opts.stepTimeoutMs, 'a step’s output')
      if (output.seq !== first + i) {
        this.#fail(new ShardSessionError(`output for step ${output.seq} arrived, expected step ${first + i}`))
        throw new AttemptError('out of order', { cause: this.#failure })
      }
      linkBytes += output.linkBytes
      answers.push(output)
    }
    meter.links += linkBytes
    return { answers, linkBytes }
  }

  async close(): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    await Promise.all(
      this.#members.map(async (m) => {
        await m.channel.write(encodeControl(SHARD_FRAME.CLOSE, {})).catch(() => {})
        await m.channel.close().catch(() => m.channel.abort(new ShardSessionError('closed')))
      }),
    )
  }

  async abort(): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    for (const m of this.#members)
      m.channel.abort(new ShardSessionError('the coordinator abandoned the session'))
  }

  /**
   * Members that died: those whose session stream broke or ended without an ERROR (the stream or
   * connection failed), and those another member's link to failed when they also fail a ping or
   * their own stream breaks within a short grace. When nothing points at anyone (a step timed
   * out), every remote member that fails a ping. Call before `abort()`.
   */
  async deadMembers(pingTimeoutMs: number): Promise<string[]> {
    const { node } = this.#ctx
    const known = new Map(this.#members.map((m) => [m.ref.nodeId, m.ref]))
    const remote: MemberRef[] = this.#plan.shards
      .filter((s) => s.nodeId !== node.nodeId)
      .map((s) => known.get(s.nodeId) ?? { nodeId: s.nodeId, addrs: s.addrs ?? [] })
    const dead = new Set(remote.filter((r) => this.#broken.has(r.nodeId)).map((r) => r.nodeId))
    let suspects = remote.filter((r) => !dead.has(r.nodeId) && this.#suspects.has(r.nodeId))
    if (dead.size === 0 && suspects.length === 0) suspects = remote
    const grace = Math.min(pingTimeoutMs, SUSPECT_GRACE_MS)
    await Promise.all(
      suspects.map(async (ref) => {
        const ping = node.ping(dialTarget(ref), { timeoutMs: pingTimeoutMs }).then(
          () => true,
          () => false,
        )
        const broke = new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(this.#broken.has(ref.nodeId)), grace)
          this.#onBroken.set(ref.nodeId, () => {
            clearTimeout(timer)
            resolve(true)
          })
        })
        const [alive, broken] = await Promise.all([ping, broke])
        this.#onBroken.delete(ref.nodeId)
        if (broken || !alive) dead.add(ref.nodeId)
      }),
    )
    return [...dead]
  }

  async #connect(nodeId: string, addrs: string[] | undefined, rank: number): Promise<AttemptMember> {
    const { node, local, membership, opts } = this.#ctx
    const base = {
      rank,
      reported: false,
      ready: deferred<ReadyMessage>(),
      connected: deferred<z.infer<typeof shardConnectedSchema>>(),
      outputs: [],
      waiter: undefined,
    }
    if (nodeId === node.nodeId) {
      if (local === undefined) {
        throw new ShardedRunError(
          `the plan gives this node (${nodeId}) a shard; pass its shard server as \`local\``,
        )
      }
      const ref = { nodeId, addrs: addrs ?? node.multiaddrs().map(String).slice(0, 16) }
      return { ...base, ref, local: true, channel: local.connectLocal() }
    }
    const provisional: MemberRef = { nodeId, addrs: addrs ?? [] }
    let dialed: Awaited<ReturnType<typeof dialMember>>
    try {
      dialed = await dialMember(node, provisional, {
        timeoutMs: opts.openTimeoutMs,
        signal: this.#ctx.signal,
      })
    } catch (err) {
      this.#markBroken(nodeId)
      throw new AttemptError('dial', {
        cause: new ShardSessionError(`could not reach member ${nodeId}: ${(err as Error).message}`, {
          cause: err,
        }),
      })
    }
    try {
      await membership.require(dialed.connection.remotePeer, opts.poolId)
    } catch (err) {
      dialed.stream.abort(err as Error)
      throw err
    }
    const ref = { nodeId, addrs: addrs ?? (await knownAddrs(node, dialed.connection.remotePeer)) }
    // OUTPUT frames carry up to topK candidates of 8 bytes; EMBEDDING frames a vector (its width
    // is known from READY only: the cap is the widest one).
    const cap = Math.max(
      MAX_CONTROL_FRAME_BYTES,
      64 + 8 * this.#ctx.topK,
      this.#ctx.embedding === undefined ? 0 : embeddingFrameBytes(MAX_EMBEDDING_VALUES),
    )
    return { ...base, ref, local: false, channel: libp2pChannel(dialed.stream, nodeId, cap) }
  }

  async #read(m: AttemptMember, outputRank: number): Promise<void> {
    const id = m.ref.nodeId
    try {
      for (;;) {
        const frame = await m.channel.read()
        if (frame === undefined) {
          if (!this.#closing) {
            if (!m.reported) this.#markBroken(id)
            this.#fail(new ShardSessionError(`member ${id} ended the session`))
          }
          return
        }
        switch (shardFrameKind(frame)) {
          case SHARD_FRAME.READY:
            m.ready.resolve(decodeControl(frame, SHARD_FRAME.READY, shardReadySchema, 'READY'))
            break
          case SHARD_FRAME.CONNECTED:
            m.connected.resolve(
              decodeControl(frame, SHARD_FRAME.CONNECTED, shardConnectedSchema, 'CONNECTED'),
            )
            break
          case SHARD_FRAME.OUTPUT:
          case SHARD_FRAME.EMBEDDING: {
            const kind = shardFrameKind(frame) === SHARD_FRAME.OUTPUT ? 'OUTPUT' : 'EMBEDDING'
            if ((this.#plan.mode === 'pipeline' && m.rank !== outputRank) || this.vocab === 0) {
              throw new ShardSessionError(`member ${id} sent an ${kind} it does not produce`)
            }
            if ((kind === 'EMBEDDING') !== (this.#ctx.embedding !== undefined)) {
              throw new ShardSessionError(`member ${id} sent an ${kind} in a session that has none`)
            }
            const output =
              kind === 'OUTPUT'
                ? decodeOutput(frame, Math.min(this.#ctx.topK, this.vocab), this.vocab)
                : decodeEmbedding(frame, this.embd)
            const waiter = m.waiter
            m.waiter = undefined
            if (waiter) waiter.resolve(output)
            else m.outputs.push(output)
            break
          }
          case SHARD_FRAME.ERROR: {
            const e = decodeControl(frame, SHARD_FRAME.ERROR, shardErrorSchema, 'ERROR')
            m.reported = true
            if (e.suspect !== undefined) this.#suspects.add(e.suspect)
            this.#fail(remoteError(id, e.name, e.message))
            break
          }
          default:
            throw new ShardSessionError(
              `member ${id} sent frame kind ${shardFrameKind(frame)} on its session stream`,
            )
        }
      }
    } catch (err) {
      this.#lost(m, err)
    }
  }

  #lost(m: AttemptMember, err: unknown): void {
    if (this.#closing) return
    if (!m.reported) this.#markBroken(m.ref.nodeId)
    this.#fail(
      new ShardSessionError(`lost member ${m.ref.nodeId}: ${(err as Error)?.message ?? err}`, { cause: err }),
    )
  }

  #markBroken(nodeId: string): void {
    this.#broken.add(nodeId)
    this.#onBroken.get(nodeId)?.()
  }

  #fail(err: Error): void {
    if (this.#failure !== undefined) return
    this.#failure = err
    this.#failed.reject(err)
    for (const m of this.#members) {
      m.ready.reject(err)
      m.connected.reject(err)
      m.waiter?.reject(err)
      m.waiter = undefined
    }
  }

  /**
   * The next step's output: the last pipeline stage's, or the merge of every tensor-parallel
   * member's (each holds the best candidates of its vocabulary rows; the best k of their union are
   * the best k of the whole row, in top-k order).
   */
  async #nextOutput(): Promise<StepAnswer> {
    if (this.#plan.mode === 'pipeline') return await this.#next(this.#members.at(-1)!)
    const parts = (await Promise.all(this.#members.map((m) => this.#next(m)))).filter(
      (p): p is OutputFrame => 'ids' in p,
    )
    if (parts.length !== this.#members.length) {
      throw new ShardSessionError('a tensor-parallel member answered with an embedding')
    }
    const seq = parts[0]!.seq
    if (parts.some((p) => p.seq !== seq)) {
      throw new ShardSessionError(`members answered different steps: ${parts.map((p) => p.seq).join(', ')}`)
    }
    const candidates: Array<[number, number]> = []
    for (const p of parts) {
      for (let i = 0; i < p.ids.length; i++) candidates.push([p.ids[i]!, p.logits[i]!])
    }
    candidates.sort((a, b) => b[1] - a[1] || a[0] - b[0])
    const best = candidates.slice(0, Math.min(this.#ctx.topK, this.vocab))
    // The whole row's log-sum-exp from those of every member's vocabulary rows.
    const lses = parts.map((p) => p.logSumExp)
    const lse =
      lses.every((l) => l !== undefined) && best.length > 0 ? logAddExp(lses as number[]) : undefined
    return {
      seq,
      computeUs: Math.max(...parts.map((p) => p.computeUs)),
      waitUs: parts[0]!.waitUs,
      exchanges: parts[0]!.exchanges,
      linkBytes: parts.reduce((sum, p) => sum + p.linkBytes, 0),
      ids: Uint32Array.from(best, (c) => c[0]),
      logits: Float32Array.from(best, (c) => c[1]),
      ...(lse === undefined ? {} : { logSumExp: lse }),
    }
  }

  #next(m: AttemptMember): Promise<StepAnswer> {
    const ready = m.outputs.shift()
    if (ready) return Promise.resolve(ready)
    if (this.#failure) return Promise.reject(this.#failure)
    m.waiter = deferred<StepAnswer>()
    return m.waiter.promise
  }

  /** Waits for `promise` unless the attempt fails, the budget runs out or the caller aborts. */
  async #guard<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
    const signal = this.#ctx.signal
    let timer: NodeJS.Timeout | undefined
    let onAbort: (() => void) | undefined
    const limits = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ShardSessionError(`${what} took longer than ${ms} ms`)), ms)
      onAbort = () => reject(signal!.reason)
      if (signal?.aborted) onAbort()
      else signal?.addEventListener('abort', onAbort, { once: true })
    })
    try {
      return await Promise.race([promise, this.#failed.promise, limits])
    } catch (err) {
      if (signal?.aborted) throw err
      if (err instanceof ShardedRunError || (err as Error).name === 'PoolAccessError') throw err
      if (err instanceof AttemptError) throw err
      this.#fail(err as Error)
      throw new AttemptError((err as Error).message, { cause: this.#failure ?? err })
    } finally {
      clearTimeout(timer)
      if (onAbort) signal?.removeEventListener('abort', onAbort)
    }
  }
}

/** log Σ exp(values), in float64. */
function logAddExp(values: readonly number[]): number {
  const max = Math.max(...values)
  if (!Number.isFinite(max)) return max
  return max + Math.log(values.reduce((sum, v) => sum + Math.exp(v - max), 0))
}
