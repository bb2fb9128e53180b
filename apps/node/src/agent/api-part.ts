import { bearerMatches, type NodeEnv } from '@meshnet/http'
import { Hono } from 'hono'
import type { AgentContext, AgentPart } from './agent.ts'
import type { DashboardPart } from './dashboard-part.ts'
import type { EmbeddingBackend } from './embeddings.ts'
import type { JobsPart } from './jobs-part.ts'
import { modelInfo } from './model-info.ts'
import { startOpenAiApi } from './openai-api.ts'
import { describeLogprobs } from './openai-logprobs.ts'
import { ApiError } from './openai-schemas.ts'
import {
  BackendUnavailableError,
  type CompletionBackend,
  type CompletionModel,
  type OpenAiApi,
} from './openai-types.ts'
import { otherApis } from './other-apis.ts'

/** Tokens one job may generate (the job protocol's cap). */
const MAX_JOB_TOKENS = 32_768

/** What serves `/metrics` and `/health` (the metrics part). */
export interface MetricsSource {
  metrics(): Promise<{ contentType: string; body: string }>
  health(): { status: number; body: unknown } | Promise<{ status: number; body: unknown }>
}

/**
 * The agent's HTTP server: the OpenAI-compatible API (answered by the agent's job runner: the same
 * jobs as `mesh inference`, on one node's llama.cpp or split over the ring), the dashboard and chat
 * page, `/metrics` and `/health`. On `--api-port` when given, else on `--dashboard-port` or a free
 * port; on 127.0.0.1 unless `--api-host` says otherwise. Without `--api-port` the API was not asked
 * for, so every route needs the dashboard's token (`mesh dashboard` prints the link).
 */
export function apiPart(
  context: AgentContext,
  jobs: JobsPart,
  web: { dashboard?: DashboardPart; metrics?: MetricsSource } = {},
): AgentPart & { port(): number | undefined } {
  const { config, logger } = context
  const { dashboard, metrics } = web
  let api: OpenAiApi | undefined
  let model: CompletionModel | undefined

  const served = () => {
    const current = jobs.model()
    const runner = jobs.runner()
    if (current === undefined || runner === undefined || model === undefined) {
      throw new BackendUnavailableError('this agent serves no model', {
        hint: 'start it with --model <path.gguf>',
      })
    }
    return { ...current, runner }
  }
  const check = (id: string) => {
    const { served: file } = served()
    if (id !== model!.id && id !== file.info.sha256) {
      throw new BackendUnavailableError(`this agent serves ${model!.id}, not ${id}`)
    }
  }

  const backend: CompletionBackend & EmbeddingBackend = {
    models: () => (model === undefined ? [] : [model]),
    async countTokens(id, text) {
      check(id)
      return served().tokenizer.tokenize(text, { addSpecial: true, parseSpecial: true }).length
    },
    async *generate(request) {
      check(request.model)
      const job = served().runner.run(
        {
          prompt: request.prompt,
          maxTokens: Math.min(request.maxTokens, MAX_JOB_TOKENS),
          parseSpecial: true,
          ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
          ...(request.topP === undefined ? {} : { topP: request.topP }),
          ...(request.topK === undefined ? {} : { topK: request.topK }),
          ...(request.seed === undefined ? {} : { seed: request.seed }),
          ...(request.presencePenalty === undefined ? {} : { presencePenalty: request.presencePenalty }),
          ...(request.frequencyPenalty === undefined ? {} : { frequencyPenalty: request.frequencyPenalty }),
          ...(request.logprobs === undefined ? {} : { logprobs: request.logprobs }),
          ...(request.grammar === undefined ? {} : { grammar: request.grammar }),
        },
        { origin: 'api', signal: request.signal },
      )
      for (let step = await job.next(); ; step = await job.next()) {
        if (step.done) {
          const { stats, stopReason, jobId, mode } = step.value
          return {
            promptTokens: stats.promptTokens,
            completionTokens: stats.completionTokens,
            stopReason,
            meshnet: {
              jobId,
              mode,
              members: stats.members,
              tokensPerSecond: stats.tokensPerSecond,
              timeToFirstTokenMs: stats.timeToFirstTokenMs,
            },
          }
        }
        const { id, text, logprobs } = step.value
        yield {
          id,
          text,
          ...(logprobs === undefined ? {} : { logprobs: describeLogprobs(served().tokenizer, id, logprobs) }),
        }
      }
    },
    embeddingWidth(id) {
      check(id)
      return served().facts.embd
    },
    async embed({ model: id, inputs, truncate, signal }) {
      check(id)
      const result = await served().runner.embed({ inputs: [...inputs], truncate }, { origin: 'api', signal })
      return { vectors: result.vectors, promptTokens: result.stats.promptTokens }
    },
  }

  // The API key when one is set; without --api-port, the dashboard's token guards the API too.
  const apiKey = config.api?.key ?? (config.api?.port === undefined ? dashboard?.token : undefined)

  const routes = () => {
    const app = new Hono<NodeEnv>({ strict: false })
    if (dashboard !== undefined) app.route('/', dashboard.web().app)
    if (metrics !== undefined) {
      const guard = (header: string | undefined) => {
        if (apiKey !== undefined && !bearerMatches(header, apiKey)) {
          throw new ApiError(401, 'this route needs the API key: send it as Authorization: Bearer <key>', {
            code: 'invalid_api_key',
            headers: { 'www-authenticate': 'Bearer' },
          })
        }
      }
      app.get('/metrics', async (c) => {
        guard(c.req.header('authorization'))
        const { contentType, body } = await metrics.metrics()
        return c.body(body, 200, { 'content-type': contentType })
      })
      app.get('/health', async (c) => {
        guard(c.req.header('authorization'))
        const { status, body } = await metrics.health()
        return c.json(body as object, status as 200)
      })
    }
    return app
  }

  return {
    name: 'api',
    port: () => api?.port,
    async start() {
      const current = jobs.model()
      if (current !== undefined) {
        model = {
          id: current.served.info.name,
          ownedBy: 'meshnet',
          contextLength: Math.min(current.facts.trainContext, 4096),
          ...(await modelInfo(current.served.path)),
        }
      }
      const dashboardPort = config.dashboard === false ? undefined : config.dashboard?.port
      const port = config.api?.port ?? dashboardPort ?? 0
      api = await startOpenAiApi({
        backend,
        ...(config.api?.host === undefined ? {} : { host: config.api.host }),
        port,
        ...(config.api?.port !== undefined && dashboardPort !== undefined ? { alsoPort: dashboardPort } : {}),
        ...(apiKey === undefined ? {} : { apiKey }),
        ...(config.api?.corsOrigins === undefined ? {} : { corsOrigins: config.api.corsOrigins }),
        routes: routes(),
        apiRoutes: otherApis({ backend, logger: logger.child({ part: 'openai-api' }) }),
        logger: logger.child({ part: 'openai-api' }),
      })
      dashboard?.setAddress({ host: api.host, port: api.alsoPort ?? api.port })
      logger.info(
        { host: api.host, port: api.port, alsoPort: api.alsoPort },
        'HTTP API and dashboard listening',
      )
    },
    async stop() {
      await api?.close()
    },
    status: () =>
      api === undefined
        ? null
        : {
            host: api.host,
            port: api.port,
            ...(api.alsoPort === undefined ? {} : { dashboardPort: api.alsoPort }),
            model: model?.id ?? null,
          },
  }
}
