import {
  type AllReduce,
  EmbeddingPooler,
  type LlamaShard,
  logSumExp,
  type StepBatcher,
  type VocabHead,
} from '@meshnet/engine'
import {
  decodeControl,
  decodeHidden,
  decodePartial,
  decodeStep,
  encodeControl,
  encodeEmbedding,
  encodeHidden,
  encodeOutput,
  encodePartial,
  encodeShardError,
  hiddenFrameBytes,
  type LinkHello,
  linkModeSchema,
  type OpenMessage,
  roundTrip,
  SHARD_FRAME,
  shardFrameKind,
} from '@meshnet/protocols'
import { topCandidates } from './candidates.ts'
import type { Channel } from './channel.ts'
import { type Deferred, deferred } from './deferred.ts'
import type { DirectListener } from './direct.ts'
import { ShardSessionError } from './errors.ts'
import { dialLink, type Link, type LinkHost } from './links.ts'
import { within } from './within.ts'

/** What a session needs from its server. */
export interface SessionHost extends LinkHost {
  readonly direct: DirectListener | undefined
  /** Runs the steps of this member's sessions over the same weights together (continuous batching). */
  readonly batcher: StepBatcher
  readonly counters: { steps: number; linkBytesSent: number; direct: number; libp2p: number }
  closed(session: MemberSession): void
}

/**
 * One session on a member: its shard (shared weights, own KV cache), the coordinator's control
 * channel and the links to the other members of the session. Steps run one at a time in the order
 * they arrive; a failure is reported on the control channel (ERROR, naming the member a broken
 * link led to) and ends the session.
 */
export class MemberSession {
  readonly key: string
  readonly open: OpenMessage
  readonly coordinator: string
  readonly control: Channel
  readonly shard: LlamaShard
  readonly #head: VocabHead | undefined
  readonly bytes: number
  readonly dataCap: number
  lastActive = Date.now()
  readonly #host: SessionHost
  readonly #release: () => void
  readonly #incoming = new Map<number, Deferred<Link>>()
  readonly #links = new Map<number, Link>()
  readonly #embd: number
  /** The output member of an embedding session: what pools the final hidden states of each input. */
  readonly #pooler: EmbeddingPooler | undefined
  #exchange = 0
  #closed = false
  #busy: Promise<unknown> = Promise.resolve()

  constructor(init: {
    host: SessionHost
    open: OpenMessage
    coordinator: string
    control: Channel
    shard: LlamaShard
    head: VocabHead | undefined
    bytes: number
    release: () => void
  }) {
    this.#host = init.host
    this.open = init.open
    this.coordinator = init.coordinator
    this.key = `${init.coordinator}/${init.open.session}`
    this.control = init.control
    this.shard = init.shard
    this.#head = init.head
    this.bytes = init.bytes
    this.#release = init.release
    this.#embd = init.shard.config.embd
    const { maxBatch, activations, topK, embedding, mode, rank, members } = init.open
    this.#pooler =
      embedding !== undefined && mode === 'pipeline' && rank === members.length - 1
        ? new EmbeddingPooler(embedding, this.#embd)
        : undefined
    this.dataCap = Math.max(
      hiddenFrameBytes(maxBatch, this.#embd, activations),
      64 + maxBatch * this.#embd * 4,
      64 + 8 * Math.min(topK, init.shard.config.vocab),
    )
    for (const rank of this.#incomingRanks()) this.#incoming.set(rank, deferred<Link>())
  }

  /** True when `remote` is the member of rank `rank` and that rank links to us. */
  expects(remote: string, rank: number): boolean {
    return this.#incoming.has(rank) && this.open.members[rank]?.nodeId === remote
  }

  /** Serves the control channel until the coordinator closes it or the session fails. */
  async run(): Promise<void> {
    try {
      for (;;) {
        const frame = await this.control.read()
        this.lastActive = Date.now()
        if (frame === undefined || shardFrameKind(frame) === SHARD_FRAME.CLOSE) {
          await this.close()
          return
        }
        switch (shardFrameKind(frame)) {
          case SHARD_FRAME.CONNECT: {
            const transports = await this.#connect()
            await this.control.write(encodeControl(SHARD_FRAME.CONNECTED, { transports }))
            if (this.open.mode === 'pipeline' && this.open.rank > 0) void this.#pipelineInput()
            break
          }
          case SHARD_FRAME.STEP: {
            if (this.open.mode === 'pipeline' && this.open.rank > 0) {
              throw new ShardSessionError('STEP frames go to the first member of a pipeline only')
            }
            const step = decodeStep(frame, this.open.maxBatch)
            await this.#compute({ ...step, computeUs: 0, linkBytes: 0 })
            break
          }
          default:
            throw new ShardSessionError(
              `unexpected frame kind ${shardFrameKind(frame)} on the session stream`,
            )
        }
      }
    } catch (err) {
      await this.fail(err)
    }
  }

  /** Takes a link another member of this session opened to us. */
  async acceptLink(channel: Channel, remote: string, hello: LinkHello): Promise<void> {
    const slot = this.#incoming.get(hello.rank)
    if (slot === undefined || this.open.members[hello.rank]?.nodeId !== remote) {
      throw new ShardSessionError(
        `${remote} (rank ${hello.rank}) is not a member that links to rank ${this.open.rank}`,
      )
    }
    if (this.#links.has(hello.rank)) throw new ShardSessionError(`rank ${hello.rank} linked twice`)
    channel.setMaxFrameBytes(this.dataCap)
    const direct = hello.direct && this.open.links === 'direct' ? this.#host.direct : undefined
    const binding = {
      poolId: this.open.poolId,
      coordinator: this.coordinator,
      session: this.open.session,
      caller: { nodeId: remote, rank: hello.rank },
      callee: { nodeId: this.#host.node.nodeId, rank: this.open.rank },
    }
    const offer = direct ? await direct.offer(binding, this.dataCap).catch(() => undefined) : undefined
    await channel.write(encodeControl(SHARD_FRAME.LINK_ACCEPT, offer ? { direct: offer.offer } : {}))
    this.#host.logger.debug({ session: this.key, from: remote, direct: offer !== undefined }, 'link offered')
    const modeFrame = await within(channel.read(), this.#host.linkTimeoutMs, `link mode from ${remote}`)
    if (modeFrame === undefined)
      throw new ShardSessionError(`${remote} closed the link before choosing a transport`)
    const { transport } = decodeControl(modeFrame, SHARD_FRAME.LINK_MODE, linkModeSchema, 'LINK_MODE')
    this.#host.logger.debug({ session: this.key, from: remote, transport }, 'link mode received')
    let data = channel
    if (transport === 'direct') {
      if (offer === undefined)
        throw new ShardSessionError(`${remote} chose a direct channel that was not offered`)
      data = await offer.accepted
    } else if (offer) direct?.withdraw(offer.offer.id)
    const link = { data, stream: channel }
    this.#links.set(hello.rank, link)
    this.#count(data)
    if (this.#closed) this.#closeLink(link, true)
    slot.resolve(link)
  }

  /** Ends the session: links closed, shard and weights released once the step in flight is done. */
  async close(graceful = true): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const slot of this.#incoming.values()) slot.reject(new ShardSessionError('session closed'))
    for (const link of this.#links.values()) this.#closeLink(link, graceful)
    if (graceful) await this.control.close().catch(() => {})
    else this.control.abort(new ShardSessionError('session aborted'))
    await this.#busy.catch(() => {})
    await this.shard.dispose()
    this.#head?.dispose()
    this.#release()
    this.#host.closed(this)
  }

  /** Reports `err` to the coordinator (best effort) and ends the session. */
  async fail(err: unknown, suspect?: string): Promise<void> {
    if (this.#closed) return
    const peer = suspect ?? (err as { suspect?: string })?.suspect
    this.#host.logger.debug(
      { session: this.key, err: (err as Error)?.message, suspect: peer },
      'shard session failed',
    )
    await within(this.control.write(encodeShardError(err, peer)), 1_000, 'error report').catch(() => {})
    await this.close(true)
  }

  #incomingRanks(): number[] {
    const { mode, rank } = this.open
    if (mode === 'pipeline') return rank > 0 ? [rank - 1] : []
    return Array.from({ length: rank }, (_, i) => i)
  }

  #outgoingRanks(): number[] {
    const { mode, rank, members } = this.open
    if (mode === 'pipeline') return rank < members.length - 1 ? [rank + 1] : []
    return Array.from({ length: members.length - rank - 1 }, (_, i) => rank + 1 + i)
  }

  /** Dials our outgoing links (the next stage; tensor parallel: every higher rank). */
  async #connect(): Promise<Array<'direct' | 'libp2p'>> {
    const links = await Promise.all(this.#outgoingRanks().map((rank) => this.#dial(rank)))
    return links.map((l) => (l.data.transport === 'direct' ? 'direct' : 'libp2p'))
  }

  async #dial(rank: number): Promise<Link> {
    const link = await dialLink(
      this.#host,
      { open: this.open, key: this.key, coordinator: this.coordinator, dataCap: this.dataCap },
      rank,
    )
    this.#links.set(rank, link)
    this.#count(link.data)
    return link
  }

  #count(channel: Channel): void {
    if (channel.transport === 'direct') this.#host.counters.direct++
    else this.#host.counters.libp2p++
  }

  #closeLink(link: Link, graceful: boolean): void {
    for (const channel of new Set([link.data, link.stream])) {
      if (graceful) void channel.close().catch(() => channel.abort(new ShardSessionError('link closed')))
      else channel.abort(new ShardSessionError('session aborted'))
    }
  }

  async #link(rank: number): Promise<Link> {
    const known = this.#links.get(rank)
    if (known) return known
    const slot = this.#incoming.get(rank)
    if (slot === undefined) throw new ShardSessionError(`no link to rank ${rank}`)
    return await within(
      slot.promise,
      this.#host.linkTimeoutMs,
      `the link from ${this.open.members[rank]!.nodeId}`,
    )
  }

  /** Pipeline stage > 0: hidden states from the previous stage, one step at a time. */
  async #pipelineInput(): Promise<void> {
    const from = this.open.rank - 1
    const peer = this.open.members[from]!.nodeId
    try {
      const link = await this.#link(from)
      for (;;) {
        let frame: Uint8Array | undefined
        try {
          frame = await link.data.read()
        } catch (err) {
          if (this.#closed) return
          throw Object.assign(
            new ShardSessionError(`the link from ${peer} broke: ${(err as Error).message}`),
            {
              suspect: peer,
            },
          )
        }
        if (this.#closed) return
        if (frame === undefined) {
          throw Object.assign(new ShardSessionError(`${peer} closed its link mid-session`), { suspect: peer })
        }
        this.lastActive = Date.now()
        const h = decodeHidden(frame, this.#embd, this.open.maxBatch)
        await this.#compute({
          seq: h.seq,
          pos: h.pos,
          want: h.want,
          hidden: h.hidden,
          computeUs: h.computeUs,
          linkBytes: h.linkBytes,
        })
      }
    } catch (err) {
      await this.fail(err)
    }
  }

  /** Runs one step through the shard and passes the result on. */
  async #compute(step: {
    seq: number
    pos: number
    want: boolean
    tokens?: number[]
    hidden?: Float32Array
    computeUs: number
    linkBytes: number
  }): Promise<void> {
    if (this.#closed) return
    const run = this.#step(step)
    this.#busy = run
    await run
  }

  async #step(step: {
    seq: number
    pos: number
    want: boolean
    tokens?: number[]
    hidden?: Float32Array
    computeUs: number
    linkBytes: number
  }): Promise<void> {
    const { open } = this
    const start = performance.now()
    let waitUs = 0
    let exchanges = 0
    let linkBytes = step.linkBytes
    const allReduce: AllReduce | undefined =
      open.mode === 'tensor' && open.members.length > 1
        ? async (partial) => {
            const t = performance.now()
            const sum = await this.#allReduce(partial)
            linkBytes += sum.bytes
            waitUs += (performance.now() - t) * 1000
            exchanges++
            return sum.values
          }
        : undefined
    const input = step.tokens ? { tokens: step.tokens } : { hidden: step.hidden! }
    // Tensor-parallel steps run in lockstep with the other members; every other step shares a
    // pass over the weights with the steps of this member's other sessions.
    const pooler = this.#pooler
    const out = allReduce
      ? await this.shard.forward(input, step.pos, { allReduce })
      : await this.#host.batcher.forwardChunked(this.shard, input, step.pos, {
          chunk: open.maxBatch,
          // An embedding pools the final hidden states, not logits.
          ...(pooler ? { logits: 'none' as const } : {}),
        })
    const n = step.tokens?.length ?? step.hidden!.length / this.#embd
    this.#host.counters.steps++
    if (pooler !== undefined) {
      if (out.kind !== 'hidden') throw new ShardSessionError('an embedding step produced logits')
      // Each input starts at position 0; its steps follow one another.
      if (step.pos === 0) pooler.reset()
      else if (step.pos !== pooler.positions) {
        throw new ShardSessionError(
          `an embedding step at position ${step.pos} does not follow the ${pooler.positions} positions pooled so far`,
        )
      }
      pooler.add(this.shard.outputNorm(out.hidden, n), n)
      const values = step.want ? pooler.vector() : new Float32Array(0)
      const computeUs = step.computeUs + (performance.now() - start) * 1000
      await this.control.write(encodeEmbedding({ seq: step.seq, computeUs, linkBytes, values }))
      return
    }
    if (open.mode === 'pipeline' && open.rank < open.members.length - 1) {
      const computeUs = step.computeUs + (performance.now() - start) * 1000
      const next = await this.#link(open.rank + 1)
      if (out.kind !== 'hidden') throw new ShardSessionError('a middle pipeline stage produced logits')
      const bytes = hiddenFrameBytes(n, this.#embd, open.activations)
      const frame = encodeHidden(
        {
          seq: step.seq,
          pos: step.pos,
          n,
          want: step.want,
          computeUs,
          linkBytes: linkBytes + bytes,
          hidden: out.hidden,
        },
        open.activations,
      )
      try {
        await next.data.write(frame)
      } catch (err) {
        const peer = open.members[open.rank + 1]!.nodeId
        throw Object.assign(new ShardSessionError(`the link to ${peer} broke: ${(err as Error).message}`), {
          suspect: peer,
        })
      }
      this.#host.counters.linkBytesSent += bytes
      return
    }
    let ids: Uint32Array = new Uint32Array(0)
    let logits: Float32Array = new Float32Array(0)
    let lse: number | undefined
    if (step.want) {
      const head = this.#head
      let row: Float32Array
      if (head !== undefined) {
        // Tensor parallel: the best of this member's vocabulary rows; the coordinator merges.
        if (out.kind !== 'hidden') throw new ShardSessionError('a tensor-parallel shard produced logits')
        row = head.logits(out.hidden.subarray((n - 1) * this.#embd, n * this.#embd))
        const part = topCandidates(row, open.topK)
        ids = part.ids.map((id) => id + head.range[0])
        logits = part.logits
      } else {
        if (out.kind !== 'logits') throw new ShardSessionError('the output member has no output head')
        row = out.logits
        ;({ ids, logits } = topCandidates(row, open.topK))
      }
      if (open.logSumExp === true) lse = logSumExp(row)
    }
    const computeUs = step.computeUs + (performance.now() - start) * 1000 - waitUs
    await this.control.write(
      encodeOutput({
        seq: step.seq,
        computeUs,
        waitUs,
        exchanges,
        linkBytes,
        ids,
        logits,
        ...(lse === undefined ? {} : { logSumExp: lse }),
      }),
    )
  }

  /**
   * Sums this member's partial with every other member's, in rank order (the order of
   * `createLocalAllReduce`, so every member gets the same bits). Sends first, then reads, so two
   * members never wait on each other's send buffers.
   */
  async #allReduce(partial: Float32Array): Promise<{ values: Float32Array; bytes: number }> {
    const { open } = this
    const exchange = this.#exchange++
    const frame = encodePartial(exchange, partial, open.activations)
    const own = roundTrip(partial, open.activations)
    const peers = open.members.map((_, rank) => rank).filter((rank) => rank !== open.rank)
    const links = await Promise.all(peers.map((rank) => this.#link(rank)))
    const sent = Promise.all(
      links.map((l, i) =>
        l.data.write(frame).catch((err: unknown) => {
          throw this.#linkFailure(peers[i]!, err)
        }),
      ),
    )
    sent.catch(() => {})
    const received = await Promise.all(
      links.map(async (l, i) => {
        let got: Uint8Array | undefined
        try {
          got = await l.data.read()
        } catch (err) {
          throw this.#linkFailure(peers[i]!, err)
        }
        if (got === undefined) throw this.#linkFailure(peers[i]!, new Error('closed'))
        const p = decodePartial(got, partial.length)
        if (p.exchange !== exchange || p.values.length !== partial.length) {
          throw new ShardSessionError(
            `all-reduce out of step with ${open.members[peers[i]!]!.nodeId}: exchange ${p.exchange} of ${p.values.length} values, expected ${exchange} of ${partial.length}`,
          )
        }
        return p.values
      }),
    )
    await sent
    this.#host.counters.linkBytesSent += frame.byteLength * links.length
    const parts = new Map<number, Float32Array>(peers.map((rank, i) => [rank, received[i]!]))
    parts.set(open.rank, own)
    const sum = new Float32Array(partial.length)
    for (let rank = 0; rank < open.members.length; rank++) {
      const p = parts.get(rank)!
      for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + p[i]!
    }
    return { values: sum, bytes: frame.byteLength * links.length }
  }

  #linkFailure(rank: number, err: unknown): Error {
    const peer = this.open.members[rank]!.nodeId
    return Object.assign(
      new ShardSessionError(`the link to ${peer} broke: ${(err as Error)?.message ?? err}`),
      {
        suspect: peer,
      },
    )
  }
}
