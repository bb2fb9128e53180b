import { randomUUID } from 'node:crypto'
import type { Connection, Stream } from '@libp2p/interface'
import { InvalidArgumentError, type MeshError, parseWith } from '@meshnet/core'
import { createWasmKernels, type EmbeddingPooling, type OpenedTokenizer } from '@meshnet/engine'
import {
  decodeJobRequest,
  encodeJobFrame,
  frameStream,
  JOB_PROTOCOL,
  type JobEvent,
  type JobOrigin,
  type JobRequest,
  type JobResult,
  type JobToken,
  jobRequestSchema,
  MAX_JOB_FRAME_BYTES,
  modelProviderKey,
  requestJob,
} from '@meshnet/protocols'
import { chooseShardedMode, PROCESS_RESERVE_BYTES } from '../plan.ts'
import { type ShardServer, shardServer } from '../server.ts'
import { type EmbedRequest, type EmbedResult, modelPooling, runEmbedJob } from './embed.ts'
import { JobRefusedError } from './errors.ts'
import { loadShard } from './preload.ts'
import { constraintOf, prepareJobRequest } from './request.ts'
import { holders, runSharded } from './sharded.ts'
import { runSingle, SingleEngineQueue } from './single.ts'
import type {
  JobService,
  JobServiceComponents,
  JobServiceInit,
  ShardAssignment,
  ShardLoadState,
} from './types.ts'

/** How often a public node renews the DHT provider records of its model. */
const PROVIDE_MS = 60_000
/** Stop tokens looked up in the vocabulary, at most. */
const MAX_STOP_TOKENS = 64

/**
 * Runs generations for the CLI, the job protocol (`/meshnet/job/1.0.0`), the OpenAI API and the
 * control plane: on this node's whole-model engine when one member can hold the model (`auto`), on
 * another member that can when this one cannot, else split over the ring's members that hold the
 * same file (pipeline, or tensor parallel when asked), with failover on the ring's live members.
 * Every job is kept in the store with its figures, and the members' trust scores move with what
 * they did. Also serves this node's shards (`shardServer`).
 */
export class JobServiceImpl implements JobService {
  readonly #init: JobServiceInit
  readonly #components: JobServiceComponents
  readonly #running = new Map<string, AbortController>()
  /** Job streams from pool members, so that a requester who loses the pool loses its jobs. */
  readonly #streams = new Map<AbortController, { peer: string; poolId: string }>()
  readonly #onRevoked = (event: Event) => {
    const { nodeId, poolId } = (event as CustomEvent<{ nodeId: string; poolId: string }>).detail
    for (const [controller, from] of this.#streams) {
      if (from.peer === nodeId && from.poolId === poolId) controller.abort()
    }
  }
  readonly #publicStarts = new Map<string, number[]>()
  readonly #counts = { jobs: 0, failed: 0, refusedPublic: 0, refusedPool: 0, badRequests: 0 }
  readonly #engines: SingleEngineQueue
  readonly #listeners = new Set<(event: JobEvent) => void>()
  #opened: OpenedTokenizer | undefined
  #stopTokens: number[] = []
  #server: ShardServer | undefined
  #provide: NodeJS.Timeout | undefined
  #handling = false
  #shard: ShardLoadState | undefined
  /** Counts preloads; a newer one supersedes the state reports of an older one. */
  #preloads = 0
  /** The served model's embedding pooling, read on the first embedding job. */
  #pooling: Promise<EmbeddingPooling | undefined> | undefined

  constructor(init: JobServiceInit, components: JobServiceComponents) {
    this.#init = init
    this.#components = components
    const parallel = init.parallel ?? 4
    this.#engines = new SingleEngineQueue(
      () => init.createSingleEngine(init.model!.path, init.threads, parallel),
      parallel,
    )
  }

  model() {
    const served = this.#init.model
    return served && this.#opened
      ? { served, facts: served.plan, tokenizer: this.#opened.tokenizer }
      : undefined
  }

  async start(): Promise<void> {
    const served = this.#init.model
    if (served === undefined) return
    const { node, gate, logger, rings } = this.#components
    this.#opened = await this.#init.openTokenizer(served.path)
    const tokenizer = this.#opened.tokenizer
    this.#stopTokens = []
    for (let id = 0; id < tokenizer.vocabSize && this.#stopTokens.length < MAX_STOP_TOKENS; id++) {
      if (tokenizer.isEog(id)) this.#stopTokens.push(id)
    }
    const { path, info } = served
    const threads = this.#init.threads
    this.#server = shardServer({
      node,
      gate,
      // Kernels and memory of its own for every weight segment: a member holds what it offers,
      // past the 4 GiB one wasm32 memory holds.
      kernels: (maxMemoryBytes) => createWasmKernels({ threads, maxMemoryBytes }),
      models: (wanted) => {
        if (wanted !== info.sha256) return undefined
        const { ensure } = served
        return ensure === undefined ? path : { path, ensure: (spec, signal) => ensure(spec, { signal }) }
      },
      // The process itself lives within the offer too (what plans keep back, less scratch).
      memoryBytes: Math.max(2 ** 20, rings.capacityBytes() - PROCESS_RESERVE_BYTES),
      logger,
    })
    await this.#server.start()
    await node.libp2p.handle(
      JOB_PROTOCOL,
      (stream, connection) => {
        void this.#onJobStream(stream, connection)
      },
      { maxInboundStreams: 64, runOnLimitedConnection: false },
    )
    this.#handling = true
    gate.addEventListener?.('revoked', this.#onRevoked)
    if (this.#init.public === true) {
      logger.warn('public node: anyone may run jobs on this node (rate-limited per peer)')
      void this.#provideModel()
      this.#provide = setInterval(() => void this.#provideModel(), PROVIDE_MS)
    }
  }

  async stop(): Promise<void> {
    this.#components.gate.removeEventListener?.('revoked', this.#onRevoked)
    clearInterval(this.#provide)
    for (const controller of this.#running.values()) controller.abort()
    if (this.#handling) {
      this.#handling = false
      await this.#components.node.libp2p.unhandle(JOB_PROTOCOL).catch(() => {})
    }
    await this.#server?.stop()
    await this.#engines.dispose()
    await this.#opened?.dispose()
  }

  async preload(shard: ShardAssignment, onChange?: (state: ShardLoadState) => void): Promise<ShardLoadState> {
    const id = ++this.#preloads
    return loadShard({
      served: this.#init.model,
      server: this.#server,
      shard,
      logger: this.#components.logger,
      report: (state) => {
        if (id !== this.#preloads) return state
        this.#shard = state
        onChange?.(state)
        return state
      },
      current: () => this.#shard,
    })
  }

  onEvent(listener: (event: JobEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Tells every listener; a listener that throws is logged, never fails the job. */
  #emit(event: JobEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event)
      } catch (err) {
        this.#components.logger.warn({ err: (err as Error).message }, 'a job event listener threw')
      }
    }
  }

  shardState(): ShardLoadState | undefined {
    return this.#shard
  }

  status(): Record<string, unknown> {
    const served = this.#init.model
    return {
      model: served ? { name: served.info.name, sha256: served.info.sha256 } : null,
      public: this.#init.public === true,
      running: this.#running.size,
      ...this.#counts,
      shards: this.#server?.stats(),
      ...(this.#shard ? { shard: this.#shard } : {}),
    }
  }

  async *run(
    input: JobRequest,
    options: { origin: JobOrigin; signal?: AbortSignal; requester?: string },
  ): AsyncGenerator<JobToken, JobResult, undefined> {
    const served = this.#init.model
    const opened = this.#opened
    if (served === undefined || opened === undefined) {
      throw new JobRefusedError('ERR_NO_MODEL', 'this agent serves no model', {
        hint: 'start it with --model <path.gguf>',
      })
    }
    const { nodeId, store, logger, rings, node } = this.#components
    const parsed = parseWith(jobRequestSchema, input, 'job')
    if (
      parsed.model !== undefined &&
      parsed.model !== served.info.sha256 &&
      parsed.model !== served.info.name
    ) {
      throw new JobRefusedError('ERR_NO_MODEL', `this agent serves ${served.info.name}, not ${parsed.model}`)
    }
    const facts = served.plan
    const contextSize = Math.min(facts.trainContext, 4096)
    // A chat is rendered here, with the served model's template; a forwarded job carries the prompt.
    const { renderChat, chatTools } = this.#init
    const { request, promptTokens } = await prepareJobRequest(parsed, {
      tokenizer: opened.tokenizer,
      contextSize,
      renderChat: renderChat && ((messages, tools) => renderChat(served, messages, tools)),
      toolGrammar: chatTools && ((tools, choice) => chatTools.grammar(served, tools, choice)),
    })
    // A chat with tools: its reply is parsed into content and calls here, where it was rendered.
    const { tools, toolChoice, ...forward } = request
    const withCalls = async (result: JobResult): Promise<JobResult> => {
      if (tools === undefined || tools.length === 0 || toolChoice === 'none' || chatTools === undefined) {
        return result
      }
      const { content, toolCalls } = await chatTools.parse(served, result.text)
      return { ...result, content, toolCalls }
    }
    const constraint = constraintOf(request, opened.tokenizer)
    // A job from the network without a pool runs on this node only; one from this machine goes to its pool.
    const poolId =
      (options.origin === 'p2p' || options.origin === 'control-plane') && request.poolId === undefined
        ? undefined
        : (request.poolId ?? this.#defaultPool())
    const members = poolId === undefined ? [] : holders(rings, poolId, served)
    const self = { nodeId, capacityBytes: rings.capacityBytes() }
    const choice = chooseShardedMode({
      members:
        members.length > 0
          ? members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes }))
          : [self],
      model: facts,
      contextSize,
      // A member holding only its shard of the model does not fetch all of it to run a job alone.
      mode: request.mode === 'auto' && served.whole?.() === false ? 'pipeline' : request.mode,
      preferNodeId: nodeId,
    })
    if (choice.mode === 'none') {
      throw new JobRefusedError('ERR_NO_PLAN', choice.reason, {
        hint: 'run it on a member that can hold it whole (mode auto, more --memory), or use a model the Meshnet engine runs (see the engine README)',
      })
    }
    if (choice.mode !== 'single' && poolId === undefined) {
      throw new JobRefusedError(
        'ERR_NO_PLAN',
        `${choice.reason}, and a job without a pool runs on this node only`,
        {
          hint: 'join a pool whose members hold the model, or ask a node that can hold it whole',
        },
      )
    }
    const jobId = randomUUID()
    const controller = new AbortController()
    const onAbort = () => controller.abort()
    options.signal?.addEventListener('abort', onAbort, { once: true })
    // A signal that fired before this line fires no event: the job starts cancelled.
    if (options.signal?.aborted) controller.abort()
    this.#running.set(jobId, controller)
    const started = performance.now()
    const modeName = choice.mode
    store.createJob({ id: jobId, poolId: poolId ?? null, model: served.info.sha256, mode: modeName })
    store.updateJob(jobId, { status: 'running', stats: { origin: options.origin, reason: choice.reason } })
    this.#counts.jobs++
    logger.info(
      { jobId, mode: modeName, poolId, origin: options.origin, reason: choice.reason },
      'job started',
    )
    const emitted = { at: Date.now(), jobId }
    this.#emit({
      type: 'start',
      ...emitted,
      origin: options.origin,
      mode: modeName,
      poolId: poolId ?? null,
      promptTokens: promptTokens.length,
    })
    const onMembers = (list: string[], failover?: { dead: string[] }) =>
      this.#emit({ type: 'members', jobId, at: Date.now(), members: list, ...(failover ? { failover } : {}) })
    const ending = (
      status: 'completed' | 'failed' | 'cancelled',
      extra: { error?: string; result?: JobResult },
    ) => this.#emit({ type: 'end', jobId, at: Date.now(), status, ...extra })
    let ended = false
    try {
      let result: JobResult
      if (choice.mode === 'single' && choice.nodeId !== nodeId && options.origin !== 'p2p') {
        onMembers([choice.nodeId])
        // Another member can hold the whole model: it runs the job on its own engine.
        const forwarded = requestJob(
          node,
          choice.nodeId,
          { ...forward, poolId, mode: 'auto' },
          { signal: controller.signal },
        )
        for (let step = await forwarded.next(); ; step = await forwarded.next()) {
          if (step.done) {
            result = { ...step.value, jobId }
            break
          }
          this.#emit({ type: 'token', jobId, at: Date.now(), index: step.value.index, text: step.value.text })
          yield step.value
        }
      } else if (choice.mode === 'single' && choice.nodeId === nodeId) {
        // llama.cpp loads the whole file: a model held by parts is completed first.
        await served.ensure?.(
          { layers: [0, served.plan.layers], embed: true, head: true },
          { signal: controller.signal },
        )
        onMembers([nodeId])
        result = yield* this.#announced(
          jobId,
          runSingle({
            engines: this.#engines,
            served,
            nodeId,
            request,
            promptTokens,
            constraint,
            jobId,
            signal: controller.signal,
            started,
          }),
        )
      } else {
        result = yield* this.#announced(
          jobId,
          runSharded({
            ...this.#components,
            served,
            tokenizer: opened.tokenizer,
            stopTokens: this.#stopTokens,
            local: this.#server,
            request,
            promptTokens,
            constraint,
            poolId: poolId!,
            mode: choice.mode === 'single' ? 'pipeline' : choice.mode,
            jobId,
            signal: controller.signal,
            started,
            onPlan: onMembers,
          }),
        )
      }
      result = await withCalls(result)
      ended = true
      store.updateJob(jobId, {
        status: result.stopReason === 'abort' ? 'cancelled' : 'completed',
        stats: { ...result.stats, stopReason: result.stopReason, mode: result.mode },
      })
      logger.info({ jobId, tokens: result.tokens.length, ...result.stats }, 'job finished')
      ending(result.stopReason === 'abort' ? 'cancelled' : 'completed', { result })
      return result
    } catch (err) {
      this.#counts.failed++
      ended = true
      store.updateJob(jobId, {
        status: controller.signal.aborted ? 'cancelled' : 'failed',
        error: (err as Error).message,
        stats: { totalMs: performance.now() - started },
      })
      logger.warn({ jobId, err: (err as Error).message }, 'job failed')
      ending(controller.signal.aborted ? 'cancelled' : 'failed', { error: (err as Error).message })
      throw err
    } finally {
      controller.abort()
      this.#running.delete(jobId)
      options.signal?.removeEventListener('abort', onAbort)
      // Its consumer stopped reading (returned the generator early): the job ends here too.
      if (!ended) {
        store.updateJob(jobId, {
          status: 'cancelled',
          error: 'the requester stopped reading the job',
          stats: { totalMs: performance.now() - started },
        })
        logger.info({ jobId }, 'job cancelled: the requester stopped reading it')
        ending('cancelled', { error: 'the requester stopped reading the job' })
      }
    }
  }

  async embed(
    request: EmbedRequest,
    options: { origin: JobOrigin; signal?: AbortSignal },
  ): Promise<EmbedResult> {
    const served = this.#init.model
    const opened = this.#opened
    if (served === undefined || opened === undefined) {
      throw new JobRefusedError('ERR_NO_MODEL', 'this agent serves no model', {
        hint: 'start it with --model <path.gguf>',
      })
    }
    this.#pooling ??= modelPooling(served.path).catch((err: unknown) => {
      this.#pooling = undefined
      throw err
    })
    const context = {
      ...this.#components,
      served,
      tokenizer: opened.tokenizer,
      engines: this.#engines,
      local: this.#server,
      defaultPool: () => this.#defaultPool(),
      emit: (event: JobEvent) => this.#emit(event),
      running: this.#running,
      counts: this.#counts,
    }
    return runEmbedJob(context, request, { ...options, pooling: await this.#pooling })
  }

  /** `job`'s tokens, each told to the listeners as it passes. */
  async *#announced(
    jobId: string,
    job: AsyncGenerator<JobToken, JobResult, undefined>,
  ): AsyncGenerator<JobToken, JobResult, undefined> {
    let done = false
    try {
      for (let step = await job.next(); ; step = await job.next()) {
        if (step.done) {
          done = true
          return step.value
        }
        this.#emit({ type: 'token', jobId, at: Date.now(), index: step.value.index, text: step.value.text })
        yield step.value
      }
    } finally {
      // Returned early (its consumer stopped reading): the job's own cleanup runs now.
      if (!done) await job.return(undefined as never).catch(() => {})
    }
  }

  #defaultPool(): string | undefined {
    const pools = this.#components.rings.pools()
    if (pools.length > 1) {
      throw new InvalidArgumentError(`this node is in ${pools.length} pools; say which one runs the job`, {
        hint: '--pool-id <id> (mesh pool-list shows them)',
      })
    }
    return pools[0]
  }

  /** Public jobs: at most `publicJobsPerMinute` starts per peer per minute. */
  #admitPublic(peer: string): void {
    const now = Date.now()
    const starts = (this.#publicStarts.get(peer) ?? []).filter((t) => now - t < 60_000)
    const limit = this.#init.publicJobsPerMinute ?? 30
    if (starts.length >= limit) {
      this.#counts.refusedPublic++
      throw new JobRefusedError('ERR_RATE_LIMITED', `at most ${limit} public jobs per minute per peer`, {
        hint: 'wait a minute, or join the pool with a client certificate',
      })
    }
    starts.push(now)
    this.#publicStarts.set(peer, starts)
  }

  async #onJobStream(stream: Stream, connection: Connection): Promise<void> {
    const frames = frameStream(stream, { maxFrameBytes: MAX_JOB_FRAME_BYTES })
    const peer = connection.remotePeer.toString()
    const controller = new AbortController()
    const send = (value: unknown) => frames.write(encodeJobFrame(value), { signal: controller.signal })
    stream.addEventListener('close', () => controller.abort(), { once: true })
    controller.signal.addEventListener('abort', () => this.#streams.delete(controller), { once: true })
    // Reset while libp2p was still handing it over: no 'close' event comes, yet the request may
    // still be read from what arrived before the reset.
    if (stream.status !== 'open') controller.abort()
    let job: AsyncGenerator<JobToken, JobResult, undefined> | undefined
    try {
      let first: Uint8Array | undefined
      try {
        first = await frames.read({ signal: AbortSignal.timeout(10_000) })
      } catch (err) {
        // An oversized first frame resets the stream: a bad request all the same.
        if ((err as Error).name === 'FrameTooLargeError') this.#counts.badRequests++
        throw err
      }
      if (first === undefined) return
      let request: ReturnType<typeof decodeJobRequest>
      try {
        request = decodeJobRequest(first)
      } catch (err) {
        this.#counts.badRequests++
        throw err
      }
      if (request.poolId !== undefined) {
        try {
          // A client certificate runs jobs (and nothing else of a pool's).
          this.#components.gate.requireMember(peer, request.poolId, ['admin', 'member', 'client'])
          this.#streams.set(controller, { peer, poolId: request.poolId })
        } catch (err) {
          this.#counts.refusedPool++
          throw err
        }
      } else if (this.#init.public !== true) {
        this.#counts.refusedPublic++
        throw new JobRefusedError('ERR_POOL_ACCESS', 'this node runs jobs for its pools only', {
          hint: 'name a pool you hold a certificate of, or ask a node started with --public',
        })
      } else this.#admitPublic(peer)
      job = this.run(request, { origin: 'p2p', signal: controller.signal, requester: peer })
      let announced = false
      for (let step = await job.next(); ; step = await job.next()) {
        if (!announced) {
          announced = true
          await send({ type: 'accepted', jobId: step.done ? step.value.jobId : '' })
        }
        if (step.done) {
          await send({ type: 'end', result: step.value })
          break
        }
        await send({ type: 'token', ...step.value })
      }
      await stream.close()
    } catch (err) {
      if (controller.signal.aborted) return
      const e = err as MeshError
      await send({
        type: 'error',
        error: {
          name: e.name ?? 'Error',
          code: e.code ?? 'ERR_JOB',
          message: String(e.message).slice(0, 4000),
        },
      }).catch(() => {})
      await stream.close().catch(() => stream.abort(e))
    } finally {
      // A write that failed (the requester went away) left the job waiting at a token: end it.
      controller.abort()
      await job?.return(undefined as never).catch(() => {})
    }
  }

  async #provideModel(): Promise<void> {
    const served = this.#init.model
    if (served === undefined || this.#init.dht === false) return
    const { node, logger } = this.#components
    for (const key of [served.info.sha256, served.info.name]) {
      await node.libp2p.contentRouting
        .provide(await modelProviderKey(key), { signal: AbortSignal.timeout(10_000) })
        .catch((err: Error) => logger.debug({ err: err.message }, 'model provider record not stored yet'))
    }
  }
}
