import { randomUUID } from 'node:crypto'
import { availableParallelism } from 'node:os'
import type { Connection, Stream } from '@libp2p/interface'
import { InvalidArgumentError, MeshError } from '@meshnet/core'
import { createWasmKernels, type Kernels, type OpenedTokenizer, TextStreamer } from '@meshnet/engine'
import { createLlamaCppEngine, type LlamaCppEngine, openModelTokenizer } from '@meshnet/llama-cpp'
import {
  decodeJobRequest,
  encodeJobFrame,
  frameStream,
  JOB_PROTOCOL,
  type JobRequest,
  type JobResult,
  type JobRunner,
  type JobToken,
  jobRequestSchema,
  MAX_JOB_FRAME_BYTES,
  modelProviderKey,
  requestJob,
} from '@meshnet/protocols'
import { planPipeline, planTensor, type RingMember, ShardPlanError } from '@meshnet/ring'
import {
  chooseShardedMode,
  runShardedGeneration,
  type ShardedGenerationResult,
  type ShardedPlan,
  type ShardModelFacts,
  type ShardServer,
  shardServer,
} from '@meshnet/shards'
import type { AgentContext, AgentPart } from './agent.ts'
import type { ControlRoutes } from './control-api.ts'
import type { MeshPart } from './mesh-part.ts'
import type { RingPart, ServedModel } from './ring-part.ts'

/** A job that cannot run here, with the reason (no model, no pool, no plan fits, rate limit). */
export class JobRefusedError extends MeshError {
  override name = 'JobRefusedError' as const
}

/** How often a public node renews the DHT provider records of its model. */
const PROVIDE_MS = 60_000
/** Jobs listed by `GET /jobs` and `mesh inference-stats`. */
const JOB_LIST_LIMIT = 200

export interface JobsPart extends AgentPart {
  /** The runner once the part started with a model; undefined on a node that serves none. */
  runner(): JobRunner | undefined
  /** The served model and its tokenizer (what the OpenAI API needs). */
  model():
    | { served: ServedModel; facts: ShardModelFacts; tokenizer: OpenedTokenizer['tokenizer'] }
    | undefined
}

/**
 * Runs generations for the CLI, the job protocol (`/meshnet/job/1.0.0`), the OpenAI API and the
 * control plane: on this node's llama.cpp when one member can hold the model (`auto`), else split
 * over the ring's members that hold the same file (pipeline, or tensor parallel when asked), with
 * failover on the ring's live members. Every job is kept in mesh_state.db with its figures, and the
 * members' trust scores move with what they did.
 */
export function jobsPart(context: AgentContext, mesh: MeshPart, ring: RingPart): JobsPart {
  const { config, logger, store, identity } = context
  let served: ServedModel | undefined
  let facts: ShardModelFacts | undefined
  let opened: OpenedTokenizer | undefined
  let stopTokens: number[] = []
  let kernels: Kernels | undefined
  let server: ShardServer | undefined
  let engine: Promise<LlamaCppEngine> | undefined
  let engineQueue: Promise<unknown> = Promise.resolve()
  let provide: NodeJS.Timeout | undefined
  const running = new Map<string, AbortController>()
  const publicStarts = new Map<string, number[]>()
  const counts = { jobs: 0, failed: 0, refusedPublic: 0, refusedPool: 0, badRequests: 0 }
  const threads = config.threads ?? availableParallelism()

  const holders = (poolId: string): RingMember[] => {
    const view = ring.rings().get(poolId)?.view()
    if (view === undefined)
      throw new JobRefusedError('ERR_NO_RING', `this node has no ring for pool ${poolId}`)
    return view.members.filter((m) => m.capabilities.models.some((x) => x.sha256 === served!.info.sha256))
  }

  const planOn = (mode: 'pipeline' | 'tensor', members: readonly RingMember[]): ShardedPlan => {
    const ringOrder = members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes }))
    const addrs = (nodeId: string) => {
      const found = members.find((m) => m.nodeId === nodeId)!.addresses
      return found.length > 0 ? { addrs: found.slice(0, 16) } : {}
    }
    return mode === 'pipeline'
      ? { mode, shards: planPipeline(ringOrder, facts!).map((s) => ({ ...s, ...addrs(s.nodeId) })) }
      : {
          mode,
          shards: planTensor(ringOrder, facts!).map((s) => ({
            nodeId: s.nodeId,
            heads: s.heads,
            ffn: s.ffn,
            ...addrs(s.nodeId),
          })),
        }
  }

  const defaultPool = (): string | undefined => {
    const pools = [...ring.rings().keys()]
    if (pools.length > 1) {
      throw new InvalidArgumentError(`this node is in ${pools.length} pools; say which one runs the job`, {
        hint: '--pool-id <id> (mesh pool-list shows them)',
      })
    }
    return pools[0]
  }

  /** node-llama-cpp runs one generation at a time; jobs wait their turn. */
  const withEngine = <T>(task: (engine: LlamaCppEngine) => Promise<T>): Promise<T> => {
    engine ??= createLlamaCppEngine({ modelPath: served!.path, threads })
    const next = engineQueue.then(async () => task(await engine!))
    engineQueue = next.catch(() => {})
    return next
  }

  async function* runSingle(
    request: ReturnType<typeof jobRequestSchema.parse>,
    promptTokens: number[],
    jobId: string,
    signal: AbortSignal,
    started: number,
  ): AsyncGenerator<JobToken, JobResult, undefined> {
    const queue: Array<JobToken | { done: JobResult } | { error: unknown }> = []
    let wake: (() => void) | undefined
    const push = (item: (typeof queue)[number]) => {
      queue.push(item)
      wake?.()
    }
    let index = 0
    let firstTokenAt: number | undefined
    void withEngine(async (llama) => {
      const stream = llama.stream(promptTokens, {
        maxTokens: request.maxTokens,
        ...sampling(request),
        signal,
      })
      for (let step = await stream.next(); ; step = await stream.next()) {
        if (step.done) {
          const { timings } = step.value
          return push({
            done: {
              jobId,
              mode: 'single',
              model: served!.info.sha256,
              tokens: step.value.tokens,
              text: step.value.text,
              stopReason: step.value.stopReason,
              stats: {
                tokensPerSecond: timings.tokensPerSecond,
                timeToFirstTokenMs: firstTokenAt === undefined ? 0 : firstTokenAt - started,
                totalMs: performance.now() - started,
                promptTokens: timings.promptTokens,
                completionTokens: step.value.tokens.length,
                hopLatencyMs: 0,
                bytesMoved: 0,
                failovers: 0,
                members: [identity.nodeId],
              },
            },
          })
        }
        firstTokenAt ??= performance.now()
        if (step.value.textOnly)
          push({ id: step.value.id, text: step.value.text, index: index - 1, textOnly: true })
        else push({ id: step.value.id, text: step.value.text, index: index++ })
      }
    }).catch((error: unknown) => push({ error }))
    for (;;) {
      const item = queue.shift()
      if (item === undefined) {
        await new Promise<void>((resolve) => (wake = resolve))
        wake = undefined
        continue
      }
      if ('error' in item) throw item.error
      if ('done' in item) return item.done
      yield item
    }
  }

  async function* runSharded(
    request: ReturnType<typeof jobRequestSchema.parse>,
    promptTokens: number[],
    poolId: string,
    mode: 'pipeline' | 'tensor',
    jobId: string,
    signal: AbortSignal,
    started: number,
  ): AsyncGenerator<JobToken, JobResult, undefined> {
    const tokenizer = opened!.tokenizer
    let plan: ShardedPlan
    try {
      plan = planOn(mode, holders(poolId))
    } catch (err) {
      if (err instanceof ShardPlanError) throw new JobRefusedError('ERR_NO_PLAN', err.message)
      throw err
    }
    const gen = runShardedGeneration({
      node: mesh.node(),
      gate: mesh.gate(),
      poolId,
      model: { sha256: served!.info.sha256 },
      plan,
      promptTokens,
      maxTokens: request.maxTokens,
      sampling: sampling(request),
      stopTokens,
      local: server,
      signal,
      logger,
      replan: (dead) => {
        for (const nodeId of dead) {
          store.recordTrustEvent(nodeId, { kind: 'shard-lost', delta: -0.1, reason: `lost mid-job ${jobId}` })
        }
        const left = holders(poolId).filter((m) => !dead.includes(m.nodeId))
        if (left.length === 0) throw new ShardPlanError('no member that holds the model is left')
        return planOn(mode, left)
      },
    })
    const streamer = new TextStreamer(tokenizer, promptTokens)
    let result: ShardedGenerationResult
    for (;;) {
      const step = await gen.next()
      if (step.done) {
        result = step.value
        break
      }
      yield { id: step.value.id, text: streamer.push(step.value.id), index: step.value.index }
    }
    const tail = streamer.flush()
    if (tail !== '') {
      yield { id: result.tokens.at(-1) ?? 0, text: tail, index: result.tokens.length - 1, textOnly: true }
    }
    const members = result.plan.shards.map((s) => s.nodeId)
    for (const nodeId of members) {
      if (nodeId !== identity.nodeId)
        store.recordTrustEvent(nodeId, { kind: 'shard-completed', delta: 0.01, reason: `job ${jobId}` })
    }
    const { stats } = result
    return {
      jobId,
      mode,
      model: served!.info.sha256,
      tokens: result.tokens,
      text: streamer.text,
      stopReason: result.stopReason,
      stats: {
        tokensPerSecond: stats.tokensPerSecond,
        timeToFirstTokenMs: stats.timeToFirstTokenMs,
        totalMs: performance.now() - started,
        promptTokens: promptTokens.length,
        completionTokens: result.tokens.length,
        hopLatencyMs: stats.hopLatencyMs ?? 0,
        bytesMoved: stats.bytes.control + stats.bytes.links,
        failovers: stats.failovers.length,
        members,
      },
    }
  }

  const runner: JobRunner = {
    async *run(input: JobRequest, options): AsyncGenerator<JobToken, JobResult, undefined> {
      if (served === undefined || facts === undefined || opened === undefined) {
        throw new JobRefusedError('ERR_NO_MODEL', 'this agent serves no model', {
          hint: 'start it with --model <path.gguf>',
        })
      }
      const parsed = jobRequestSchema.safeParse(input)
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!
        throw new InvalidArgumentError(`job ${issue.path.join('.') || 'request'}: ${issue.message}`)
      }
      const request = parsed.data
      if (
        request.model !== undefined &&
        request.model !== served.info.sha256 &&
        request.model !== served.info.name
      ) {
        throw new JobRefusedError(
          'ERR_NO_MODEL',
          `this agent serves ${served.info.name}, not ${request.model}`,
        )
      }
      // A job from the network without a pool runs on this node only; one from this machine goes to its pool.
      const poolId =
        (options.origin === 'p2p' || options.origin === 'control-plane') && request.poolId === undefined
          ? undefined
          : (request.poolId ?? defaultPool())
      const members = poolId === undefined ? [] : holders(poolId)
      const contextSize = Math.min(facts.trainContext, 4096)
      const self = { nodeId: identity.nodeId, capacityBytes: ring.capabilities().capacityBytes }
      const choice = chooseShardedMode({
        members:
          members.length > 0
            ? members.map((m) => ({ nodeId: m.nodeId, capacityBytes: m.capabilities.capacityBytes }))
            : [self],
        model: facts,
        contextSize,
        mode: request.mode,
        preferNodeId: identity.nodeId,
      })
      if (choice.mode !== 'single' && poolId === undefined) {
        throw new JobRefusedError(
          'ERR_NO_PLAN',
          `${choice.reason}, and a job without a pool runs on this node only`,
          { hint: 'join a pool whose members hold the model, or ask a node that can hold it whole' },
        )
      }
      const promptTokens = opened.tokenizer.tokenize(request.prompt, {
        addSpecial: true,
        parseSpecial: request.parseSpecial,
      })
      const jobId = randomUUID()
      const controller = new AbortController()
      const onAbort = () => controller.abort()
      options.signal?.addEventListener('abort', onAbort, { once: true })
      running.set(jobId, controller)
      const started = performance.now()
      const modeName = choice.mode === 'single' ? 'single' : choice.mode
      store.createJob({ id: jobId, poolId: poolId ?? null, model: served.info.sha256, mode: modeName })
      store.updateJob(jobId, { status: 'running', stats: { origin: options.origin, reason: choice.reason } })
      counts.jobs++
      logger.info(
        { jobId, mode: modeName, poolId, origin: options.origin, reason: choice.reason },
        'job started',
      )
      try {
        let result: JobResult
        if (choice.mode === 'single' && choice.nodeId !== identity.nodeId && options.origin !== 'p2p') {
          // Another member can hold the whole model: it runs the job on its llama.cpp.
          const forwarded = requestJob(
            mesh.node(),
            choice.nodeId,
            { ...request, poolId, mode: 'auto' },
            {
              signal: controller.signal,
            },
          )
          for (let step = await forwarded.next(); ; step = await forwarded.next()) {
            if (step.done) {
              result = { ...step.value, jobId }
              break
            }
            yield step.value
          }
        } else if (choice.mode === 'single' && choice.nodeId === identity.nodeId) {
          result = yield* runSingle(request, promptTokens, jobId, controller.signal, started)
        } else {
          const mode = choice.mode === 'single' ? 'pipeline' : choice.mode
          result = yield* runSharded(request, promptTokens, poolId!, mode, jobId, controller.signal, started)
        }
        store.updateJob(jobId, {
          status: result.stopReason === 'abort' ? 'cancelled' : 'completed',
          stats: { ...result.stats, stopReason: result.stopReason, mode: result.mode },
        })
        logger.info({ jobId, tokens: result.tokens.length, ...result.stats }, 'job finished')
        return result
      } catch (err) {
        counts.failed++
        store.updateJob(jobId, {
          status: controller.signal.aborted ? 'cancelled' : 'failed',
          error: (err as Error).message,
          stats: { totalMs: performance.now() - started },
        })
        logger.warn({ jobId, err: (err as Error).message }, 'job failed')
        throw err
      } finally {
        controller.abort()
        running.delete(jobId)
        options.signal?.removeEventListener('abort', onAbort)
      }
    },
  }

  /** Public jobs: at most `publicJobsPerMinute` starts per peer per minute, one at a time. */
  const admitPublic = (peer: string): void => {
    const now = Date.now()
    const starts = (publicStarts.get(peer) ?? []).filter((t) => now - t < 60_000)
    const limit = config.publicJobsPerMinute ?? 30
    if (starts.length >= limit) {
      counts.refusedPublic++
      throw new JobRefusedError('ERR_RATE_LIMITED', `at most ${limit} public jobs per minute per peer`, {
        hint: 'wait a minute, or join the pool with a client certificate',
      })
    }
    starts.push(now)
    publicStarts.set(peer, starts)
  }

  const onJobStream = async (stream: Stream, connection: Connection) => {
    const frames = frameStream(stream, { maxFrameBytes: MAX_JOB_FRAME_BYTES })
    const peer = connection.remotePeer.toString()
    const controller = new AbortController()
    const send = (value: unknown) => frames.write(encodeJobFrame(value), { signal: controller.signal })
    stream.addEventListener('close', () => controller.abort(), { once: true })
    try {
      const first = await frames.read({ signal: AbortSignal.timeout(10_000) })
      if (first === undefined) return
      let request: ReturnType<typeof decodeJobRequest>
      try {
        request = decodeJobRequest(first)
      } catch (err) {
        counts.badRequests++
        throw err
      }
      if (request.poolId !== undefined) {
        try {
          mesh.gate().requireMember(peer, request.poolId)
        } catch (err) {
          counts.refusedPool++
          throw err
        }
      } else if (config.public !== true) {
        counts.refusedPublic++
        throw new JobRefusedError('ERR_POOL_ACCESS', 'this node runs jobs for its pools only', {
          hint: 'name a pool you hold a certificate of, or ask a node started with --public',
        })
      } else admitPublic(peer)
      const job = runner.run(request, { origin: 'p2p', signal: controller.signal, requester: peer })
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
    }
  }

  const provideModel = async () => {
    if (served === undefined || config.dht === false) return
    for (const key of [served.info.sha256, served.info.name]) {
      await mesh
        .node()
        .libp2p.contentRouting.provide(await modelProviderKey(key), { signal: AbortSignal.timeout(10_000) })
        .catch((err: Error) => logger.debug({ err: err.message }, 'model provider record not stored yet'))
    }
  }

  const routes: ControlRoutes = {
    'POST /jobs': (body, _params, { signal }) => {
      const request = body as JobRequest
      return runner.run(request, { origin: 'cli', signal })
    },
    'GET /jobs': () => jobStats(store.listJobs(JOB_LIST_LIMIT)),
    'GET /jobs/:jobId': (_body, { jobId }) => {
      const job = store.getJob(jobId!)
      if (job === undefined) throw new InvalidArgumentError(`no job ${jobId} on this node`)
      return job
    },
  }

  return {
    name: 'jobs',
    runner: () => (served === undefined ? undefined : runner),
    model: () => (served && facts && opened ? { served, facts, tokenizer: opened.tokenizer } : undefined),
    routes,
    async start() {
      served = ring.served()
      if (served === undefined) return
      facts = served.plan
      opened = await openModelTokenizer(served.path)
      const tokenizer = opened.tokenizer
      stopTokens = []
      for (let id = 0; id < tokenizer.vocabSize && stopTokens.length < 64; id++) {
        if (tokenizer.isEog(id)) stopTokens.push(id)
      }
      kernels = await createWasmKernels({ threads })
      const path = served.path
      const sha = served.info.sha256
      server = shardServer({
        node: mesh.node(),
        gate: mesh.gate(),
        kernels,
        models: (wanted) => (wanted === sha ? path : undefined),
        memoryBytes: ring.capabilities().capacityBytes,
        logger,
      })
      await server.start()
      await mesh.node().libp2p.handle(
        JOB_PROTOCOL,
        (stream, connection) => {
          void onJobStream(stream, connection)
        },
        { maxInboundStreams: 64, runOnLimitedConnection: false },
      )
      if (config.public === true) {
        logger.warn('public node: anyone may run jobs on this node (rate-limited per peer)')
        void provideModel()
        provide = setInterval(() => void provideModel(), PROVIDE_MS)
      }
    },
    async stop() {
      clearInterval(provide)
      for (const controller of running.values()) controller.abort()
      if (served !== undefined)
        await mesh
          .node()
          .libp2p.unhandle(JOB_PROTOCOL)
          .catch(() => {})
      await server?.stop()
      await engine?.then((e) => e.dispose()).catch(() => {})
      await kernels?.dispose()
      await opened?.dispose()
    },
    status: () => ({
      model: served ? { name: served.info.name, sha256: served.info.sha256 } : null,
      public: config.public === true,
      running: running.size,
      ...counts,
      shards: server?.stats(),
    }),
  }
}

function sampling(request: ReturnType<typeof jobRequestSchema.parse>) {
  return {
    ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
    ...(request.topK === undefined ? {} : { topK: request.topK }),
    ...(request.topP === undefined ? {} : { topP: request.topP }),
    ...(request.seed === undefined ? {} : { seed: request.seed }),
  }
}

/** Per-job figures and totals (`mesh inference-stats`). */
export function jobStats(jobs: ReturnType<AgentContext['store']['listJobs']>) {
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0)
  const done = jobs.filter((j) => j.status === 'completed')
  const tokens = done.reduce((n, j) => n + num(j.stats.completionTokens), 0)
  const mean = (key: string) =>
    done.length === 0 ? 0 : done.reduce((n, j) => n + num(j.stats[key]), 0) / done.length
  return {
    jobs: jobs.map((j) => ({
      id: j.id,
      poolId: j.poolId,
      mode: (j.stats.mode as string | undefined) ?? j.mode,
      status: j.status,
      createdAt: new Date(j.createdAt).toISOString(),
      error: j.error,
      tokens: num(j.stats.completionTokens),
      tokensPerSecond: num(j.stats.tokensPerSecond),
      timeToFirstTokenMs: num(j.stats.timeToFirstTokenMs),
      hopLatencyMs: num(j.stats.hopLatencyMs),
      bytesMoved: num(j.stats.bytesMoved),
      failovers: num(j.stats.failovers),
    })),
    totals: {
      jobs: jobs.length,
      completed: done.length,
      failed: jobs.filter((j) => j.status === 'failed').length,
      tokens,
      meanTokensPerSecond: mean('tokensPerSecond'),
      meanTimeToFirstTokenMs: mean('timeToFirstTokenMs'),
      meanHopLatencyMs: mean('hopLatencyMs'),
      bytesMoved: done.reduce((n, j) => n + num(j.stats.bytesMoved), 0),
      failovers: jobs.reduce((n, j) => n + num(j.stats.failovers), 0),
    },
  }
}
