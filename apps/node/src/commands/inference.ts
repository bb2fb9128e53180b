import { availableParallelism } from 'node:os'
import { InvalidArgumentError, printJson } from '@meshnet/identity'
import { createEngine, ENGINE_NAMES, type EngineName, type GenerateResult } from '@meshnet/inference'
import type { Command } from 'commander'
import { z } from 'zod'
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
}

const count = (max: number) => z.coerce.number().int('must be a whole number').min(1).max(max)

export function registerInference(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('inference')
    .description('generate text from a prompt with a GGUF model (this machine only, for now: --local)')
    .option('--local', 'run the whole model on this machine')
    .option('--model <gguf>', 'the model file')
    .option('--prompt <text>', 'the text to continue')
    .option('--max-tokens <n>', 'stop after this many new tokens', '128')
    .option('--engine <engine>', `${ENGINE_NAMES.join(' or ')}`, 'meshnet')
    .option('--threads <n>', 'CPU threads (default: all cores)')
    .option('--context-size <n>', 'tokens of context (default: the model’s, at most 4096)')
    .option('--temperature <t>', 'sampling temperature; 0 (the default) is greedy')
    .option('--top-k <k>', 'keep the k most likely tokens (0 = all; default 40)')
    .option('--top-p <p>', 'keep the most likely tokens up to this probability (default 0.95)')
    .option('--seed <n>', 'seed of the sampler (default: the clock)')
    .action(async (flags: InferenceFlags, cmd: Command) => {
      const ctx = context(cmd)
      if (flags.local !== true) {
        throw new InvalidArgumentError('only local inference is available in this version', {
          hint: 'add --local to run the model on this machine; sending a job to the ring comes in a later release',
        })
      }
      if (flags.model === undefined || flags.model === '') {
        throw new InvalidArgumentError('--model is required', { hint: 'give the path of a GGUF model file' })
      }
      if (flags.prompt === undefined) {
        throw new InvalidArgumentError('--prompt is required', { hint: 'give the text to continue' })
      }
      const modelPath = flags.model
      const prompt = flags.prompt
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
      const sampling = {
        ...(flags.temperature === undefined
          ? {}
          : {
              temperature: parseFlag('--temperature', z.coerce.number().min(0).max(100), flags.temperature),
            }),
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
          const stream = model.stream(prompt, { maxTokens, ...sampling, signal: controller.signal })
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
