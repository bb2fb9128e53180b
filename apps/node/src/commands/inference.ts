import { readFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { InvalidArgumentError, printFields, printJson } from '@meshnet/core'
import type { GenerateResult } from '@meshnet/engine'
import {
  compileGrammar,
  constraintVocabulary,
  createTokenConstraint,
  type GrammarSpec,
  type JsonSchema,
} from '@meshnet/grammar'
import { dataDirLayout } from '@meshnet/identity'
import { createEngine, ENGINE_NAMES, type EngineName } from '@meshnet/llama-cpp'
import { JOB_MODES, type JobMode, type JobResult, type JobToken } from '@meshnet/protocols'
import { type jobStats, jobStats as summarize } from '@meshnet/shards'
import { openStore } from '@meshnet/store'
import type { Command } from 'commander'
import { z } from 'zod'
import { type AgentClient, AgentNotRunningError, connectAgent } from '../agent/control-api.ts'
import { parseFlag } from '../config.ts'
import type { CommandContext } from '../context.ts'

interface InferenceFlags {
  local?: boolean
  model?: string
  prompt?: string
  maxTokens: string
  engine: string
  threads?: string
  contextSize?: string
  temperature?: string
  topK?: string
  topP?: string
  seed?: string
  mode: string
  poolId?: string
  schema?: string
}

const count = (max: number) => z.coerce.number().int('must be a whole number').min(1).max(max)

export function registerInference(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('inference')
    .description(
      'generate text from a prompt: on the ring through the running agent, or with --local on this machine only',
    )
    .option('--local', 'run the whole model in this process (no agent, no ring)')
    .option('--model <gguf>', 'the model file (--local; the agent serves its own --model)')
    .option('--mode <mode>', `how the ring runs the model: ${JOB_MODES.join(', ')}`, 'auto')
    .option('--pool-id <id>', 'the pool whose ring runs the job (default: the agent’s only pool)')
    .option('--prompt <text>', 'the text to continue')
    .option('--max-tokens <n>', 'stop after this many new tokens', '128')
    .option('--engine <engine>', `${ENGINE_NAMES.join(' or ')}`, 'meshnet')
    .option('--threads <n>', 'CPU threads (default: all cores)')
    .option('--context-size <n>', 'tokens of context (default: the model’s, at most 4096)')
    .option('--temperature <t>', 'sampling temperature; 0 (the default) is greedy')
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all; default 40)')
    .option('--top-p <p>', 'keep the most likely tokens up to this probability (default 0.95)')
    .option('--seed <n>', 'seed of the sampler (default: the clock)')
    .option(
      '--schema <file>',
      'write JSON valid for the JSON Schema in this file (constrained sampling; see docs/structured-output.md)',
    )
    .action(async (flags: InferenceFlags, cmd: Command) => {
      const ctx = context(cmd)
      if (flags.local !== true) return runOnRing(ctx, flags)
      if (flags.model === undefined || flags.model === '') {
        throw new InvalidArgumentError('--model is required', { hint: 'give the path of a GGUF model file' })
      }
      if (flags.prompt === undefined) {
        throw new InvalidArgumentError('--prompt is required', { hint: 'give the text to continue' })
      }
      const modelPath = flags.model
      const prompt = flags.prompt
      if (flags.mode !== 'auto' || flags.poolId !== undefined) {
        throw new InvalidArgumentError(
          '--mode and --pool-id choose how the ring runs a job; --local runs none',
          {
            hint: 'drop --local to send the job to the running agent',
          },
        )
      }
      const engine = parseFlag(
        '--engine',
        z.enum(ENGINE_NAMES as [EngineName, ...EngineName[]]),
        flags.engine,
      )
      const maxTokens = parseFlag('--max-tokens', count(1_048_576), flags.maxTokens)
      const threads =
        flags.threads === undefined
          ? availableParallelism()
          : parseFlag('--threads', count(1024), flags.threads)
      const contextSize =
        flags.contextSize === undefined
          ? undefined
          : parseFlag('--context-size', count(1 << 20), flags.contextSize)
      const sampling = samplingFlags(flags)
      const grammar = await schemaFlag(flags)

      // Ctrl-C stops the generation and still prints what was generated.
      const controller = new AbortController()
      const onSigint = () => controller.abort()
      process.once('SIGINT', onSigint)
      const loadStart = performance.now()
      try {
        const model = await createEngine({
          engine,
          modelPath,
          threads,
          signal: controller.signal,
          ...(contextSize === undefined ? {} : { contextSize }),
        })
        const loadMs = performance.now() - loadStart
        ctx.logger.debug({ engine, modelPath, threads, loadMs }, 'model loaded')
        let result: GenerateResult
        try {
          const constraint =
            grammar === undefined
              ? undefined
              : createTokenConstraint(compileGrammar(grammar), constraintVocabulary(model.tokenizer), {
                  maxTokens,
                })
          const stream = model.stream(prompt, {
            maxTokens,
            ...sampling,
            ...(constraint === undefined ? {} : { constraint }),
            signal: controller.signal,
          })
          let step = await stream.next()
          while (!step.done) {
            if (!ctx.json) ctx.io.stdout.write(step.value.text)
            step = await stream.next()
          }
          result = step.value
        } finally {
          await model.dispose()
        }
        if (ctx.json) {
          printJson(ctx.io, {
            tokens: result.tokens,
            text: result.text,
            stopReason: result.stopReason,
            engine,
            timings: { loadMs, ...result.timings },
          })
          return
        }
        ctx.io.stdout.write('\n')
        ctx.logger.debug({ stopReason: result.stopReason, ...result.timings }, 'generation finished')
      } finally {
        process.removeListener('SIGINT', onSigint)
      }
    })
}

/** `mesh inference` without --local: the running agent runs the job on its ring and streams it back. */
async function runOnRing(ctx: CommandContext, flags: InferenceFlags): Promise<void> {
  if (flags.prompt === undefined) {
    throw new InvalidArgumentError('--prompt is required', { hint: 'give the text to continue' })
  }
  if (flags.model !== undefined) {
    throw new InvalidArgumentError('--model goes with --local; a ring job runs the agent’s model', {
      hint: 'start the agent with `mesh start --model <gguf>`, or add --local',
    })
  }
  const mode = parseFlag('--mode', z.enum(JOB_MODES as unknown as [JobMode, ...JobMode[]]), flags.mode)
  const grammar = await schemaFlag(flags)
  const request = {
    prompt: flags.prompt,
    maxTokens: parseFlag('--max-tokens', count(32_768), flags.maxTokens),
    mode,
    ...(flags.poolId === undefined ? {} : { poolId: flags.poolId }),
    ...samplingFlags(flags),
    ...(grammar === undefined ? {} : { grammar }),
  }
  const agent = await connectAgent(dataDirLayout(ctx.dataDir))
  const controller = new AbortController()
  const onSigint = () => controller.abort()
  process.once('SIGINT', onSigint)
  try {
    const job = agent.stream<JobToken, JobResult>('/jobs', request, controller.signal)
    const tokens: JobToken[] = []
    for (let step = await job.next(); ; step = await job.next()) {
      if (step.done) {
        const result = step.value
        if (ctx.json) {
          printJson(ctx.io, {
            jobId: result.jobId,
            tokens: result.tokens,
            text: result.text,
            mode: result.mode,
            stopReason: result.stopReason,
            stats: result.stats,
          })
        } else {
          ctx.io.stdout.write('\n')
          ctx.logger.info(
            { jobId: result.jobId, mode: result.mode, stopReason: result.stopReason, ...result.stats },
            'job finished',
          )
        }
        return
      }
      tokens.push(step.value)
      if (!ctx.json) ctx.io.stdout.write(step.value.text)
    }
  } finally {
    process.removeListener('SIGINT', onSigint)
  }
}

function samplingFlags(flags: InferenceFlags) {
  return {
    ...(flags.temperature === undefined
      ? {}
      : { temperature: parseFlag('--temperature', z.coerce.number().min(0).max(100), flags.temperature) }),
    ...(flags.topK === undefined
      ? {}
      : { topK: parseFlag('--top-k', z.coerce.number().int().min(0), flags.topK) }),
    ...(flags.topP === undefined
      ? {}
      : { topP: parseFlag('--top-p', z.coerce.number().gt(0).max(1), flags.topP) }),
    ...(flags.seed === undefined
      ? {}
      : { seed: parseFlag('--seed', z.coerce.number().int().min(0).max(0xffff_ffff), flags.seed) }),
  }
}

export function registerInferenceStats(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('inference-stats')
    .description(
      'figures of the jobs this node ran: tokens/s, time to first token, hop latency, bytes, failovers',
    )
    .option('--limit <n>', 'jobs to list, newest first', '20')
    .action(async (flags: { limit: string }, cmd: Command) => {
      const ctx = context(cmd)
      const limit = parseFlag('--limit', count(200), flags.limit)
      let stats: ReturnType<typeof jobStats>
      let agent: AgentClient | undefined
      try {
        agent = await connectAgent(dataDirLayout(ctx.dataDir))
      } catch (err) {
        if (!(err instanceof AgentNotRunningError)) throw err
      }
      if (agent !== undefined) stats = await agent.request<ReturnType<typeof jobStats>>('GET', '/jobs')
      else {
        // No agent holds the data dir: read mesh_state.db directly.
        const store = openStore({ dataDir: ctx.dataDir, logger: ctx.logger })
        try {
          stats = summarize(store.listJobs(200))
        } finally {
          store.close()
        }
      }
      const jobs = stats.jobs.slice(0, limit)
      if (ctx.json) return printJson(ctx.io, { jobs, totals: stats.totals })
      const t = stats.totals
      printFields(ctx.io, [
        ['Jobs', `${t.jobs} (${t.completed} completed, ${t.failed} failed)`],
        ['Tokens', String(t.tokens)],
        ['Mean tokens/s', t.meanTokensPerSecond.toFixed(1)],
        ['Mean TTFT', `${t.meanTimeToFirstTokenMs.toFixed(0)} ms`],
        ['Mean hop latency', `${t.meanHopLatencyMs.toFixed(2)} ms`],
        ['Bytes moved', String(t.bytesMoved)],
        ['Failovers', String(t.failovers)],
      ])
      if (jobs.length > 0) ctx.io.stdout.write('\n')
      for (const j of jobs) {
        ctx.io.stdout.write(
          `${j.createdAt}  ${j.id.slice(0, 8)}  ${j.mode.padEnd(8)} ${j.status.padEnd(9)} ${String(j.tokens).padStart(5)} tok  ${j.tokensPerSecond.toFixed(1).padStart(7)} tok/s  TTFT ${j.timeToFirstTokenMs.toFixed(0)} ms  hop ${j.hopLatencyMs.toFixed(2)} ms  ${j.bytesMoved} B  failovers ${j.failovers}${j.error ? `  (${j.error})` : ''}\n`,
        )
      }
    })
}

/**
 * The grammar of `--schema <file>`: JSON valid for the JSON Schema the file holds. The schema is
 * compiled here, so an unsupported keyword is named before anything runs.
 */
async function schemaFlag(flags: InferenceFlags): Promise<GrammarSpec | undefined> {
  if (flags.schema === undefined) return undefined
  let text: string
  try {
    text = await readFile(flags.schema, 'utf8')
  } catch (err) {
    throw new InvalidArgumentError(`--schema: cannot read ${flags.schema}: ${(err as Error).message}`, {
      cause: err,
    })
  }
  let schema: unknown
  try {
    schema = JSON.parse(text)
  } catch (err) {
    throw new InvalidArgumentError(`--schema: ${flags.schema} is not JSON: ${(err as Error).message}`, {
      cause: err,
    })
  }
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
    throw new InvalidArgumentError(`--schema: ${flags.schema} must hold a JSON Schema object`)
  }
  const grammar: GrammarSpec = { parts: [{ type: 'json', schema: schema as JsonSchema }] }
  compileGrammar(grammar)
  return grammar
}
