import { stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import { InvalidArgumentError, MeshError, printFields, printJson } from '@meshnet/core'
import { generateModel, MODEL_ARCHITECTURES, MODEL_WEIGHT_TYPES, modelOptionsSchema } from '@meshnet/gguf'
import type { Command } from 'commander'
import { z } from 'zod'
import { parseFlag } from '../config.ts'
import type { CommandContext } from '../context.ts'

interface ModelCreateFlags {
  out: string
  arch: string
  headDim?: string
  slidingWindow?: string
  layers: string
  embd: string
  heads: string
  kvHeads?: string
  ff?: string
  vocab: string
  type: string
  seed: string
  fill: string
  context: string
  ropeBase?: string
  name?: string
  force?: boolean
}

const DEFAULTS = {
  arch: 'llama',
  layers: '4',
  embd: '512',
  heads: '8',
  vocab: '32000',
  type: 'Q8_0',
  seed: '0',
  fill: 'random',
  context: '2048',
} as const

/** The flag each generator option comes from, so an error names what the user typed. */
const FLAG_OF: Record<string, string> = {
  out: '--out',
  arch: '--arch',
  headDim: '--head-dim',
  slidingWindow: '--sliding-window',
  layers: '--layers',
  embd: '--embd',
  heads: '--heads',
  kvHeads: '--kv-heads',
  ff: '--ff',
  vocab: '--vocab',
  type: '--type',
  seed: '--seed',
  fill: '--fill',
  context: '--context',
  ropeBase: '--rope-base',
  name: '--name',
}

const integer = z
  .string()
  .regex(/^\d+$/, 'must be a whole number')
  .transform((s) => Number(s))
  .pipe(z.number().int().min(0).max(Number.MAX_SAFE_INTEGER))
const decimal = z
  .string()
  .regex(/^\d+(\.\d+)?([eE][+-]?\d+)?$/, 'must be a positive number')
  .transform((s) => Number(s))
const architecture = z
  .string()
  .pipe(z.enum(MODEL_ARCHITECTURES, { message: `must be one of ${MODEL_ARCHITECTURES.join(', ')}` }))
const weightType = z
  .string()
  .transform((s) => s.toUpperCase())
  .pipe(z.enum(MODEL_WEIGHT_TYPES, { message: `must be one of ${MODEL_WEIGHT_TYPES.join(', ')}` }))
const fillMode = z.enum(['random', 'tiled'], { message: 'must be random or tiled' })

/** Llama's feed-forward width, about 8/3 of the embedding, rounded up to a whole K-quant block. */
function defaultFeedForward(embd: number): number {
  return Math.ceil((embd * 8) / 3 / 256) * 256
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`
  return String(n)
}

function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${n} B`
}

export function registerModelCreate(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('model-create')
    .description('write a deterministic test model (GGUF, random weights) that llama.cpp and Meshnet load')
    .requiredOption('--out <file>', 'where to write the .gguf file')
    .option('--arch <name>', `architecture: ${MODEL_ARCHITECTURES.join(', ')}`, DEFAULTS.arch)
    .option('--layers <n>', 'transformer blocks', DEFAULTS.layers)
    .option('--embd <n>', 'embedding width', DEFAULTS.embd)
    .option('--heads <n>', 'attention heads', DEFAULTS.heads)
    .option('--kv-heads <n>', 'key/value heads (grouped-query attention; default: --heads)')
    .option('--head-dim <n>', 'head size (default: --embd / --heads; Qwen 3 and Gemma set their own)')
    .option('--ff <n>', 'feed-forward width (default: 8/3 of --embd, rounded up to 256)')
    .option('--vocab <n>', 'vocabulary size, at least 259', DEFAULTS.vocab)
    .option(
      '--type <type>',
      `weight type, or a llama-quantize mix (*_K_S, *_K_M): ${MODEL_WEIGHT_TYPES.join(', ')}`,
      DEFAULTS.type,
    )
    .option('--seed <n>', 'weights seed (same flags and seed give the same file)', DEFAULTS.seed)
    .option(
      '--fill <mode>',
      'random: every weight row drawn and quantized (slow past a few GB); tiled: rows assembled from small pools of such rows, at disk speed',
      DEFAULTS.fill,
    )
    .option('--context <n>', 'context length written to the model', DEFAULTS.context)
    .option('--rope-base <x>', "RoPE frequency base (default: the architecture's usual one)")
    .option(
      '--sliding-window <n>',
      'Gemma: sliding window of the local layers (default 4096 for gemma2, 512 for gemma3)',
    )
    .option('--name <name>', 'general.name written to the model')
    .option('--force', 'replace --out if it exists')
    .action(async (flags: ModelCreateFlags, cmd: Command) => {
      const ctx = context(cmd)
      const embd = parseFlag('--embd', integer, flags.embd)
      const options = {
        out: resolve(flags.out),
        arch: parseFlag('--arch', architecture, flags.arch),
        layers: parseFlag('--layers', integer, flags.layers),
        embd,
        heads: parseFlag('--heads', integer, flags.heads),
        ...(flags.kvHeads === undefined ? {} : { kvHeads: parseFlag('--kv-heads', integer, flags.kvHeads) }),
        ...(flags.headDim === undefined ? {} : { headDim: parseFlag('--head-dim', integer, flags.headDim) }),
        ...(flags.slidingWindow === undefined
          ? {}
          : { slidingWindow: parseFlag('--sliding-window', integer, flags.slidingWindow) }),
        ff: flags.ff === undefined ? defaultFeedForward(embd) : parseFlag('--ff', integer, flags.ff),
        vocab: parseFlag('--vocab', integer, flags.vocab),
        type: parseFlag('--type', weightType, flags.type),
        seed: parseFlag('--seed', integer, flags.seed),
        fill: parseFlag('--fill', fillMode, flags.fill),
        context: parseFlag('--context', integer, flags.context),
        ...(flags.ropeBase === undefined
          ? {}
          : { ropeBase: parseFlag('--rope-base', decimal, flags.ropeBase) }),
        ...(flags.name === undefined ? {} : { name: flags.name }),
        sha256: true,
      }
      // The generator's own schema checks the combination (heads divide embd, block sizes, ...).
      const checked = modelOptionsSchema.safeParse(options)
      if (!checked.success) {
        const issue = checked.error.issues[0]!
        const key = String(issue.path[0] ?? 'out')
        const flag = FLAG_OF[key] ?? `--${key}`
        const given = (options as Record<string, unknown>)[key]
        throw new InvalidArgumentError(
          `${flag}${given === undefined ? '' : ` ${JSON.stringify(given)}`}: ${issue.message}`,
        )
      }
      if (flags.force !== true && (await stat(options.out).catch(() => undefined)) !== undefined) {
        throw new InvalidArgumentError(`--out ${options.out} already exists`, {
          hint: 'pass --force to replace it',
        })
      }

      // Ctrl-C stops between chunks and removes the partial file instead of leaving it behind.
      const controller = new AbortController()
      const interrupt = () =>
        controller.abort(new MeshError('ERR_INTERRUPTED', `interrupted; ${options.out} was not written`))
      process.once('SIGINT', interrupt)
      process.once('SIGTERM', interrupt)
      const started = performance.now()
      ctx.logger.debug({ ...options }, 'generating test model')
      let made: Awaited<ReturnType<typeof generateModel>>
      try {
        made = await generateModel({ ...options, signal: controller.signal })
      } finally {
        process.off('SIGINT', interrupt)
        process.off('SIGTERM', interrupt)
      }
      const seconds = (performance.now() - started) / 1000
      const kvHeads = options.kvHeads ?? options.heads

      if (ctx.json) {
        printJson(ctx.io, {
          path: made.path,
          bytes: made.bytes,
          parameters: made.parameters,
          arch: made.arch,
          type: made.type,
          tensorTypes: made.tensorTypes,
          sha256: made.sha256,
          seed: made.seed,
          fill: made.fill,
          layers: options.layers,
          embd: options.embd,
          heads: options.heads,
          kvHeads,
          ff: options.ff,
          vocab: options.vocab,
          context: options.context,
          ...(options.headDim === undefined ? {} : { headDim: options.headDim }),
          ...(options.ropeBase === undefined ? {} : { ropeBase: options.ropeBase }),
          tensors: made.tensors,
          seconds: Number(seconds.toFixed(3)),
        })
        return
      }
      ctx.io.stdout.write(`Wrote ${made.path}\n`)
      printFields(ctx.io, [
        ['Parameters', `${formatCount(made.parameters)} (${made.parameters})`],
        ['Architecture', made.arch],
        [
          'Type',
          `${made.type} (${Object.entries(made.tensorTypes)
            .map(([type, n]) => `${n} ${type}`)
            .join(', ')} matrices)`,
        ],
        ['Size', `${formatBytes(made.bytes)} (${made.bytes} bytes)`],
        [
          'Shape',
          `${options.layers} layers, embd ${options.embd}, ${options.heads} heads (${kvHeads} KV${options.headDim === undefined ? '' : `, size ${options.headDim}`}), ff ${options.ff}, vocab ${options.vocab}, context ${options.context}`,
        ],
        ['Seed', `${made.seed}${made.fill === 'tiled' ? ' (tiled fill)' : ''}`],
        ['SHA-256', made.sha256],
        ['Took', `${seconds.toFixed(1)} s (${(made.bytes / 1024 ** 2 / seconds).toFixed(0)} MiB/s)`],
      ])
    })
}
