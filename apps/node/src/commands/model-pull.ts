import { setTimeout as sleep } from 'node:timers/promises'
import { MeshError, type MeshErrorOptions, parseWith, printJson } from '@meshnet/core'
import { dataDirLayout } from '@meshnet/identity'
import { FetchError } from '@meshnet/weights'
import type { Command } from 'commander'
import { z } from 'zod'
import { connectAgent } from '../agent/control-api.ts'
import { parseFlag } from '../config.ts'
import type { CommandContext } from '../context.ts'
import { untilInterrupted } from './models.ts'
import { formatBytes, formatDuration, type Progress, updateFetchProgress } from './progress.ts'

// `mesh model-pull` asks the running agent to fetch a model, or some of its layers, from its pool
// and the model's URL (`POST /models/pull`), and shows how it goes until done.

/** How often `model-pull` asks the agent how its pull is going. */
const PULL_POLL_MS = 500

/** `--layers 0-11` (both included) or `--layers 5`, as the `[first, end)` the agent takes. */
const layersSchema = z
  .string()
  .regex(/^\d+(-\d+)?$/, 'must be a layer or a range of layers, both included: 0-11')
  .transform((s) => s.split('-').map(Number))
  .refine(([first, last = first]) => first! <= last!, 'the first layer must not be after the last')
  .transform(([first, last = first]): [number, number] => [first!, last! + 1])

/** What `GET /models/pulls/<id>` answers (fields beyond these are kept for `--json`). */
const pullStatusSchema = z.looseObject({
  id: z.string(),
  model: z.string().nullable(),
  state: z.enum(['resolving', 'fetching', 'done', 'failed']),
  totalBytes: z.number().nonnegative(),
  doneBytes: z.number().nonnegative(),
  rate: z.number().nonnegative(),
  sources: z.record(z.string(), z.number().nonnegative()),
  badChunks: z.number().int().nonnegative(),
  error: z.string().optional(),
})
type PullStatus = z.infer<typeof pullStatusSchema>

const badAgentAnswer = (message: string, options: MeshErrorOptions) =>
  new MeshError('ERR_CONTROL_RESPONSE', message, {
    ...options,
    hint: 'the agent may be another version than this mesh command; restart it with mesh start',
  })

/** Registers `mesh model-pull`. */
export function registerModelPull(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('model-pull')
    .description(
      'ask the running agent to fetch a model (or a part of it) from the pool and/or a URL, and show its progress until done',
    )
    .argument(
      '<model-id|url>',
      'a model id (as mesh model-ls or a pool member shows), or an http(s) URL of a GGUF file',
    )
    .option(
      '--layers <a-b>',
      'only these layers, both included (0-11: the first twelve); default: the whole model',
    )
    .option('--embed', 'also the token embedding (what the first member of a ring needs)')
    .option('--head', 'also the output norm and projection (what the last member of a ring needs)')
    .addHelpText(
      'after',
      `
Examples:
  $ mesh model-pull 5d0c2f9a1b3c
  $ mesh model-pull 5d0c2f9a1b3c --layers 0-11 --embed
  $ mesh model-pull https://huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF/resolve/main/Llama-3.2-1B-Instruct-Q4_K_M.gguf
`,
    )
    .action(
      async (model: string, flags: { layers?: string; embed?: boolean; head?: boolean }, cmd: Command) => {
        const ctx = context(cmd)
        const body = {
          model,
          ...(flags.layers === undefined
            ? {}
            : { layers: parseFlag('--layers', layersSchema, flags.layers) }),
          ...(flags.embed === true ? { embed: true } : {}),
          ...(flags.head === true ? { head: true } : {}),
        }
        const agent = await connectAgent(dataDirLayout(ctx.dataDir))
        const { pull } = parseWith(
          z.object({ pull: z.string().min(1) }),
          await agent.request('POST', '/models/pull', body),
          'the agent’s answer to POST /models/pull:',
          badAgentAnswer,
        )
        if (!ctx.json) ctx.io.stderr.write(`pull ${pull}: resolving ${model}\n`)
        let progress: Progress | undefined
        const started = performance.now()
        try {
          const status = await untilInterrupted(
            () =>
              new MeshError(
                'ERR_INTERRUPTED',
                `stopped watching pull ${pull}; the agent goes on fetching (mesh model-ls shows what is held)`,
              ),
            async (signal) => {
              for (;;) {
                const status = parseWith(
                  pullStatusSchema,
                  await agent.request('GET', `/models/pulls/${encodeURIComponent(pull)}`),
                  `the agent’s answer to GET /models/pulls/${pull}:`,
                  badAgentAnswer,
                )
                if (status.state !== 'resolving' && status.totalBytes > 0) {
                  progress = updateFetchProgress(progress, (status.model ?? model).slice(0, 12), status, {
                    out: ctx.io.stderr,
                    silent: ctx.json,
                  })
                }
                if (status.state === 'done' || status.state === 'failed') return status
                await sleep(PULL_POLL_MS, undefined, { signal })
              }
            },
          )
          progress?.stop()
          if (status.state === 'failed') {
            throw new FetchError(`pull of ${model} failed: ${status.error ?? 'the agent gave no reason'}`, {
              details: { pull, model: status.model, doneBytes: status.doneBytes },
              hint: `the agent log (${dataDirLayout(ctx.dataDir).log('agent')}) tells more`,
            })
          }
          if (ctx.json) return printJson(ctx.io, status)
          printPulled(ctx, status, (performance.now() - started) / 1000)
        } finally {
          progress?.stop()
        }
      },
    )
}

function printPulled(ctx: CommandContext, status: PullStatus, seconds: number): void {
  const id = status.model ?? '(unknown)'
  if (status.doneBytes === 0) {
    ctx.io.stdout.write(`Model ${id}: every chunk asked for was held already, nothing fetched\n`)
    return
  }
  const sources = Object.entries(status.sources).sort((a, b) => b[1] - a[1])
  ctx.io.stdout.write(
    `Pulled model ${id}: ${formatBytes(status.doneBytes)} in ${formatDuration(seconds)} from ${sources.length} source${sources.length === 1 ? '' : 's'}\n`,
  )
  for (const [source, bytes] of sources)
    ctx.io.stdout.write(`  ${formatBytes(bytes).padStart(10)}  ${source}\n`)
  if (status.badChunks > 0) {
    ctx.io.stdout.write(
      `Dropped ${status.badChunks} chunk${status.badChunks === 1 ? '' : 's'} that did not match their hashes (never written)\n`,
    )
  }
}
