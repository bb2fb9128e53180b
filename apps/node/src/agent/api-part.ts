import type { AgentContext, AgentPart } from './agent.ts'
import type { JobsPart } from './jobs-part.ts'
import { modelInfo } from './model-info.ts'
import { startOpenAiApi } from './openai-api.ts'
import {
  BackendUnavailableError,
  type CompletionBackend,
  type CompletionModel,
  type OpenAiApi,
} from './openai-types.ts'

/** Tokens one job may generate (the job protocol's cap). */
const MAX_JOB_TOKENS = 32_768

/**
 * The OpenAI-compatible API (`mesh start --api-port`), answered by the agent's job runner: the same
 * jobs as `mesh inference`, on one node's llama.cpp or split over the ring.
 */
export function apiPart(context: AgentContext, jobs: JobsPart): AgentPart & { port(): number | undefined } {
  const { config, logger } = context
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

  const backend: CompletionBackend = {
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
        },
        { origin: 'api', signal: request.signal },
      )
      for (let step = await job.next(); ; step = await job.next()) {
        if (step.done) {
          const { stats, stopReason } = step.value
          return { promptTokens: stats.promptTokens, completionTokens: stats.completionTokens, stopReason }
        }
        yield { id: step.value.id, text: step.value.text }
      }
    },
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
      api = await startOpenAiApi({
        backend,
        ...(config.api?.host === undefined ? {} : { host: config.api.host }),
        port: config.api?.port ?? 0,
        ...(config.api?.key === undefined ? {} : { apiKey: config.api.key }),
        logger: logger.child({ part: 'openai-api' }),
      })
      logger.info({ host: api.host, port: api.port }, 'OpenAI-compatible API listening')
    },
    async stop() {
      await api?.close()
    },
    status: () => (api === undefined ? null : { host: api.host, port: api.port, model: model?.id ?? null }),
  }
}
