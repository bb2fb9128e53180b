import { availableParallelism } from 'node:os'
import { InvalidArgumentError } from '@meshnet/core'
import { createLlamaCppEngine, openModelTokenizer } from '@meshnet/llama-cpp'
import type { JobRequest } from '@meshnet/protocols'
import { type JobService, jobService, jobStats, type ServedModel } from '@meshnet/shards'
import type { AgentContext, AgentPart } from './agent.ts'
import { chatJobHooks } from './chat-jobs.ts'
import type { ControlRoutes } from './control-api.ts'
import type { MeshPart } from './mesh-part.ts'
import { modelInfo } from './model-info.ts'
import type { RingPart } from './ring-part.ts'
import type { WeightsPart } from './weights-part.ts'

/** Jobs listed by `GET /jobs` and `mesh inference-stats`. */
const JOB_LIST_LIMIT = 200

export interface JobsPart extends AgentPart {
  /** The runner once the part started with a model; undefined on a node that serves none. */
  runner(): JobService | undefined
  /** Hears the runner when it is made (at once if it is): a model fetched from peers makes it late. */
  onRunner(listener: (runner: JobService) => void): void
  /** The served model and its tokenizer (what the OpenAI API needs). */
  model(): ReturnType<JobService['model']>
}

/**
 * The agent's job service (`jobService` of @meshnet/shards) wired to its parts: the libp2p node and
 * certificate gate, the rings, mesh_state.db, and llama.cpp as the whole-model engine; plus the
 * control routes `POST /jobs`, `GET /jobs` and `GET /jobs/:jobId`.
 */
export function jobsPart(
  context: AgentContext,
  mesh: MeshPart,
  ring: RingPart,
  weights: WeightsPart,
): JobsPart {
  const { config, logger, store, identity } = context
  let service: JobService | undefined
  let served: ServedModel | undefined
  let stopped = false
  const runnerListeners: Array<(runner: JobService) => void> = []

  const routes: ControlRoutes = {
    'POST /jobs': (body, _params, { signal }) => {
      if (service === undefined) throw new InvalidArgumentError('the agent is not running jobs yet')
      return service.run(body as JobRequest, { origin: 'cli', signal })
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
    runner: () => (served === undefined ? undefined : service),
    onRunner(listener) {
      runnerListeners.push(listener)
      if (served !== undefined && service !== undefined) listener(service)
    },
    model: () => service?.model(),
    routes,
    async start() {
      if (config.model !== undefined && weights.served() === undefined) {
        // A model whose manifest is still on its way from a pool peer: jobs start once it is here.
        weights.onServed((model) => {
          if (service !== undefined || stopped) return
          void begin(model).catch((err: Error) => logger.error({ err: err.message }, 'could not start jobs'))
        })
        return
      }
      await begin(weights.served())
    },
    async stop() {
      stopped = true
      await service?.stop()
    },
    status: () =>
      service?.status() ?? { model: null, public: config.public === true, running: 0, jobs: 0, failed: 0 },
  }

  async function begin(model: ServedModel | undefined): Promise<void> {
    served = model
    service = jobService({
      model: served,
      threads: config.threads ?? availableParallelism(),
      ...(config.public === undefined ? {} : { public: config.public }),
      ...(config.publicJobsPerMinute === undefined
        ? {}
        : { publicJobsPerMinute: config.publicJobsPerMinute }),
      ...(config.dht === undefined ? {} : { dht: config.dht }),
      ...(config.parallel === undefined ? {} : { parallel: config.parallel }),
      createSingleEngine: (modelPath, threads, parallel) =>
        createLlamaCppEngine({ modelPath, threads, parallel }),
      openTokenizer: (path) => openModelTokenizer(path),
      // Chat jobs get the prompt the OpenAI API would render for the same messages (and tools).
      ...chatJobHooks(modelInfo),
    })({
      nodeId: identity.nodeId,
      node: mesh.node(),
      gate: mesh.gate(),
      store,
      rings: {
        members: (poolId) => ring.rings().get(poolId)?.view()?.members,
        pools: () => [...ring.rings().keys()],
        capacityBytes: () => ring.capabilities().capacityBytes,
      },
      logger,
    })
    if (served !== undefined) for (const listener of runnerListeners) listener(service)
    await service.start()
    const runner = service
    // Load this member's shard as soon as a ring agrees on a plan, so that the first job costs a
    // prompt pass, not a load. A newer plan supersedes the load in flight. A ring of one runs
    // its jobs on llama.cpp, so it loads nothing ahead.
    ring.onPlan((poolId, plan) => {
      const at = plan.findIndex((s) => s.nodeId === identity.nodeId)
      if (at < 0 || plan.length < 2) return
      const shard = { layers: plan[at]!.layers, embed: at === 0, head: at === plan.length - 1 }
      logger.info({ poolId, layers: shard.layers }, "the ring agreed on a plan; loading this member's shard")
      void runner.preload(shard, (state) => ring.setShardState(state))
    })
  }
}
