import type { Connection, Stream } from '@libp2p/interface'
import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import {
  chainSessions,
  readLlamaConfig,
  resolveSpec,
  type ShardSpec,
  type ShardWeights,
  StepBatcher,
  sessionBytes,
  vocabSlice,
} from '@meshnet/engine'
import { openGGUF } from '@meshnet/gguf'
import {
  decodeControl,
  encodeControl,
  encodeShardError,
  type LinkHello,
  linkHelloSchema,
  type OpenMessage,
  type ReadyMessage,
  SHARD_FRAME,
  SHARD_PROTOCOL,
  shardFrameKind,
  shardOpenSchema,
} from '@meshnet/protocols'
import { type Channel, libp2pChannel, memoryChannelPair } from './channel.ts'
import { DirectListener } from './direct.ts'
import { PoolAccessError, ShardCapacityError, ShardModelError, ShardSessionError } from './errors.ts'
import { fileSha256 } from './model-hash.ts'
import { MembershipCheck } from './peers.ts'
import type { ShardServerConfig, ShardServerStats } from './server-config.ts'
import { MemberSession, type SessionHost } from './session.ts'
import { WeightCache, type WeightLease } from './weight-cache.ts'
import { within } from './within.ts'

/** `layers [a, b)`, with the column slice when there is one. */
function describeShard(plan: ReturnType<typeof resolveSpec>): string {
  return `layers [${plan.layers[0]}, ${plan.layers[1]})${plan.partial ? ` heads [${plan.heads[0]}, ${plan.heads[1]}) FFN [${plan.ffn[0]}, ${plan.ffn[1]})` : ''}`
}

/** The shard service of one ring member (see `shardServer`). */
export class ShardServerImpl implements SessionHost {
  readonly node: MeshNode
  readonly membership: MembershipCheck
  readonly direct: DirectListener | undefined
  readonly linkTimeoutMs: number
  readonly logger: Logger
  readonly counters = { steps: 0, linkBytesSent: 0, direct: 0, libp2p: 0 }
  readonly batcher = new StepBatcher()
  readonly #config: ShardServerConfig
  readonly #sessions = new Map<string, MemberSession>()
  readonly #weights: WeightCache
  readonly #refused: Record<string, number> = {}
  #opening = 0
  #opened = 0
  #expired = 0
  #timer: NodeJS.Timeout | undefined
  #started = false

  constructor(config: ShardServerConfig) {
    this.#config = config
    this.node = config.node
    this.membership = new MembershipCheck(config.gate)
    this.direct = config.directHost === undefined ? undefined : new DirectListener(config.directHost)
    this.linkTimeoutMs = config.linkTimeoutMs
    this.logger = config.logger
    this.#weights = new WeightCache({
      kernels: config.kernels,
      memoryBytes: config.memoryBytes,
      segmentBytes: config.segmentBytes,
      logger: config.logger,
    })
  }

  /** A peer lost the pool (revoked, expired): the sessions it coordinates or links to end now. */
  readonly #onRevoked = (event: Event) => {
    const { nodeId, poolId, reason } = (
      event as CustomEvent<{ nodeId: string; poolId: string; reason: string }>
    ).detail
    for (const session of [...this.#sessions.values()]) {
      if (session.open.poolId !== poolId) continue
      if (session.coordinator !== nodeId && !session.open.members.some((m) => m.nodeId === nodeId)) continue
      this.#refuse('revoked')
      this.logger.info(
        { session: session.open.session, nodeId, poolId, reason },
        'ending a session: a member lost the pool',
      )
      void session.fail(new PoolAccessError(`peer ${nodeId} may not use pool ${poolId}: ${reason}`), nodeId)
    }
  }

  async start(): Promise<void> {
    if (this.#started) return
    this.#config.gate.addEventListener?.('revoked', this.#onRevoked)
    await this.node.libp2p.handle(
      SHARD_PROTOCOL,
      (stream, connection) => {
        void this.#onStream(stream, connection)
      },
      { maxInboundStreams: 256, maxOutboundStreams: 256, runOnLimitedConnection: true },
    )
    this.#started = true
    const every = Math.max(50, Math.min(5_000, Math.floor(this.#config.idleTimeoutMs / 4)))
    this.#timer = setInterval(() => this.#sweep(), every)
    this.#timer.unref()
  }

  async stop(): Promise<void> {
    this.#config.gate.removeEventListener?.('revoked', this.#onRevoked)
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = undefined
    if (this.#started) await this.node.libp2p.unhandle(SHARD_PROTOCOL).catch(() => {})
    this.#started = false
    await Promise.all(
      [...this.#sessions.values()].map((s) =>
        s.fail(new ShardSessionError('the member is stopping its shard service')),
      ),
    )
    await this.direct?.close()
    await this.#weights.dispose()
  }

  stats(): ShardServerStats {
    return {
      sessions: this.#sessions.size,
      sessionsOpened: this.#opened,
      sessionsExpired: this.#expired,
      refused: { ...this.#refused },
      weightSets: this.#weights.size,
      weightBytes: this.#weights.weightBytes,
      segments: this.#weights.segments(),
      sessionBytes: this.#weights.sessionBytes,
      memoryBytes: this.#config.memoryBytes,
      steps: this.counters.steps,
      batching: (({ passes, steps, widest }) => ({ passes, steps, widest }))(this.batcher.stats()),
      linkBytesSent: this.counters.linkBytesSent,
      links: { direct: this.counters.direct, libp2p: this.counters.libp2p },
    }
  }

  /** A session channel for a coordinator on this node: served in-process, without libp2p. */
  connectLocal(): Channel {
    const own = this.node.nodeId
    const [client, server] = memoryChannelPair(own, own)
    void (async () => {
      try {
        const first = await server.read()
        if (first === undefined) return
        const open = decodeControl(first, SHARD_FRAME.OPEN, shardOpenSchema, 'OPEN')
        await this.#openSession(server, own, open)
      } catch (err) {
        await this.#reject(server, err)
      }
    })()
    return client
  }

  closed(session: MemberSession): void {
    if (this.#sessions.get(session.key) === session) this.#sessions.delete(session.key)
  }

  async #onStream(stream: Stream, connection: Connection): Promise<void> {
    const remote = connection.remotePeer.toString()
    const channel = libp2pChannel(stream, remote)
    let first: Uint8Array | undefined
    try {
      first = await within(channel.read(), this.#config.helloTimeoutMs, 'the first frame')
    } catch (err) {
      this.#refuse('malformed')
      channel.abort(err as Error)
      return
    }
    if (first === undefined) {
      channel.abort(new ShardSessionError('empty shard stream'))
      return
    }
    let open: OpenMessage | undefined
    let hello: LinkHello | undefined
    try {
      if (shardFrameKind(first) === SHARD_FRAME.OPEN)
        open = decodeControl(first, SHARD_FRAME.OPEN, shardOpenSchema, 'OPEN')
      else if (shardFrameKind(first) === SHARD_FRAME.LINK_HELLO)
        hello = decodeControl(first, SHARD_FRAME.LINK_HELLO, linkHelloSchema, 'LINK_HELLO')
      else
        throw new ShardSessionError(
          `a shard stream starts with OPEN or LINK_HELLO, not frame kind ${shardFrameKind(first)}`,
        )
    } catch (err) {
      this.#refuse('malformed')
      await this.#reject(channel, err)
      return
    }
    const poolId = (open ?? hello)!.poolId
    try {
      await this.membership.require(connection.remotePeer, poolId)
    } catch (err) {
      this.#refuse('not-a-member')
      this.logger.info({ peer: remote, poolId, err: (err as Error).message }, 'shard stream refused')
      await this.#reject(channel, err)
      return
    }
    if (open) {
      await this.#openSession(channel, remote, open)
      return
    }
    const session = this.#sessions.get(`${hello!.coordinator}/${hello!.session}`)
    if (session === undefined || session.open.poolId !== poolId || !session.expects(remote, hello!.rank)) {
      // Only the member the coordinator named for that rank may link; anyone else is turned away
      // without disturbing the session.
      this.#refuse('other')
      await this.#reject(
        channel,
        new ShardSessionError(
          `no session ${hello!.session} of ${hello!.coordinator} expects a link from ${remote}`,
        ),
      )
      return
    }
    try {
      await session.acceptLink(channel, remote, hello!)
    } catch (err) {
      await this.#reject(channel, err)
      await session.fail(err, remote)
    }
  }

  async #openSession(channel: Channel, coordinator: string, open: OpenMessage): Promise<void> {
    const key = `${coordinator}/${open.session}`
    if (this.#sessions.size + this.#opening >= this.#config.maxSessions) {
      this.#refuse('sessions')
      await this.#reject(
        channel,
        new ShardCapacityError(
          `this member already runs ${this.#config.maxSessions} sessions (maxSessions); try again when one ends`,
        ),
      )
      return
    }
    if (this.#sessions.has(key)) {
      this.#refuse('other')
      await this.#reject(channel, new ShardSessionError(`session ${open.session} is already open`))
      return
    }
    this.#opening++
    let session: MemberSession
    try {
      session = await this.#createSession(channel, coordinator, open)
    } catch (err) {
      this.#refuse(
        (err as Error).name === 'ShardCapacityError'
          ? 'capacity'
          : (err as Error).name === 'ShardModelError'
            ? 'model'
            : 'other',
      )
      this.logger.info({ coordinator, err: (err as Error).message }, 'shard session refused')
      await this.#reject(channel, err)
      return
    } finally {
      this.#opening--
    }
    await session.run()
  }

  /**
   * This member's copy of model `sha` for `spec`: a whole file, its hash checked, or a copy by parts
   * whose chunks of `spec` are made sure of (fetched and verified when missing).
   */
  async #modelPath(sha: string, spec: ShardSpec): Promise<string> {
    const copy = await this.#config.models(sha)
    if (copy === undefined) {
      throw new ShardModelError(`this member has no copy of model ${sha}`, {
        hint: 'copy the GGUF file to the member (or plan without it)',
      })
    }
    if (typeof copy !== 'string') {
      try {
        await copy.ensure(spec)
      } catch (err) {
        throw new ShardModelError(
          `this member cannot get its shard of model ${sha}: ${(err as Error).message}`,
        )
      }
      return copy.path
    }
    const path = copy
    const actual = await fileSha256(path)
    if (actual !== sha) {
      throw new ShardModelError(`${path} hashes to ${actual}, not ${sha}`, {
        hint: 'the file changed or is another model; replace it with the right one',
      })
    }
    return path
  }

  /**
   * Loads (or finds in memory) the weights of a shard of model `sha` ahead of any session, and keeps
   * them while idle, so that the first job's session costs a prompt pass, not a load. Weights held
   * for an earlier `preload` that `keep` does not cover may be evicted again. Resolves when loaded.
   */
  async preload(
    sha: string,
    spec: ShardSpec,
  ): Promise<{ weightBytes: number; loadMs: number; reused: boolean }> {
    const started = performance.now()
    const path = await this.#modelPath(sha, spec)
    const file = await openGGUF(path)
    let lease: WeightLease
    try {
      const config = readLlamaConfig(file)
      const plan = resolveSpec(config, spec)
      this.#weights.repin(
        (s) => s.sha === sha && s.layers[0] >= plan.layers[0] && s.layers[1] <= plan.layers[1],
      )
      lease = this.#weights.lease({
        sha,
        path,
        file,
        config,
        spec,
        sessionBytes: 0,
        describe: `shard ${describeShard(plan)} of model ${sha.slice(0, 12)}…`,
        pin: true,
      })
    } finally {
      await file.close()
    }
    try {
      const weights = await lease.weights
      return {
        weightBytes: weights.reduce((sum, w) => sum + w.weightBytes, 0),
        loadMs: performance.now() - started,
        reused: lease.reused,
      }
    } finally {
      lease.release()
    }
  }

  async #createSession(channel: Channel, coordinator: string, open: OpenMessage): Promise<MemberSession> {
    const started = performance.now()
    const sha = open.model.sha256
    const spec: ShardSpec = {
      layers: open.shard.layers,
      heads: open.shard.heads,
      ffn: open.shard.ffn,
      embed: open.shard.embed,
      // Tensor parallel: every member projects its share of the vocabulary (see VocabHead).
      head: open.mode === 'tensor' ? false : open.shard.head,
    }
    // The bytes it needs: a tensor-parallel member's vocabulary rows are in the output projection.
    const path = await this.#modelPath(sha, open.mode === 'tensor' ? { ...spec, head: true } : spec)
    const options = { contextSize: open.contextSize, kvCacheType: open.kvCacheType, maxBatch: open.maxBatch }
    const file = await openGGUF(path)
    let config: ReturnType<typeof readLlamaConfig>
    let describe: string
    let lease: WeightLease
    let bytes: { kvBytes: number; scratchBytes: number }
    try {
      config = readLlamaConfig(file)
      const plan = resolveSpec(config, spec)
      if (open.mode === 'tensor') spec.vocab = vocabSlice(config, plan.ffn)
      describe = describeShard(plan)
      bytes = sessionBytes(config, plan, { ...options, vocab: spec.vocab })
      // Every weight segment has scratch of its own.
      const segments = this.#weights.segmentCount(sha, file, config, spec)
      lease = this.#weights.lease({
        sha,
        path,
        file,
        config,
        spec,
        sessionBytes: bytes.kvBytes + bytes.scratchBytes * segments,
        describe: `shard ${describe} of model ${sha.slice(0, 12)}… for ${open.contextSize} positions`,
      })
    } finally {
      await file.close()
    }
    try {
      const weights = await lease.weights.catch((err: unknown) => {
        throw capacity(err, describe)
      })
      let parts: ReturnType<ShardWeights['createSession']>
      try {
        parts = chainSessions(weights, options)
      } catch (err) {
        throw capacity(err, describe)
      }
      const session = new MemberSession({
        host: this,
        open,
        coordinator,
        control: channel,
        shard: parts.shard,
        head: parts.head,
        bytes: bytes.kvBytes + bytes.scratchBytes,
        release: () => lease.release(),
      })
      channel.setMaxFrameBytes(session.dataCap)
      this.#sessions.set(session.key, session)
      const ready: ReadyMessage = {
        weightBytes: parts.shard.weightBytes,
        kvBytes: bytes.kvBytes,
        loadMs: performance.now() - started,
        reused: lease.reused,
        config: {
          layers: config.layers,
          embd: config.embd,
          vocab: config.vocab,
          heads: config.heads,
          kvHeads: config.kvHeads,
          ff: config.ff,
        },
      }
      try {
        await channel.write(encodeControl(SHARD_FRAME.READY, ready))
      } catch (err) {
        await session.close(false)
        throw err
      }
      this.#opened++
      return session
    } catch (err) {
      lease.release()
      throw err
    }
  }

  #sweep(): void {
    const now = Date.now()
    const idle = this.#config.idleTimeoutMs
    for (const session of this.#sessions.values()) {
      if (now - session.lastActive > idle) {
        this.#expired++
        void session.fail(
          new ShardSessionError(
            `session ${session.open.session} was idle for ${Math.round(idle / 1000)} s and expired`,
          ),
        )
      }
    }
    this.#weights.sweep(idle)
  }

  #refuse(reason: string): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1
  }

  async #reject(channel: Channel, err: unknown): Promise<void> {
    await within(channel.write(encodeShardError(err)), 1_000, 'error report').catch(() => {})
    await within(channel.close(), 1_000, 'close').catch(() => channel.abort(new ShardSessionError('refused')))
  }
}

export function capacity(err: unknown, describe: string): Error {
  if ((err as Error)?.name === 'KernelMemoryError') {
    return new ShardCapacityError(`kernel memory cannot hold shard ${describe}: ${(err as Error).message}`, {
      cause: err,
      hint: 'the system is out of memory, or one layer is larger than a kernel memory holds (4 GiB); give the member less to hold, or spread the model over more members',
    })
  }
  return err as Error
}
