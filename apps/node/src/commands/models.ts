import { stat } from 'node:fs/promises'
import { basename, resolve } from 'node:path'
import {
  FileAccessError,
  InvalidArgumentError,
  isMeshError,
  MeshError,
  printFields,
  printJson,
} from '@meshnet/core'
import { dataDirLayout, ensureDataDir } from '@meshnet/identity'
import {
  buildUrlManifest,
  FetchError,
  layerCount,
  ModelStore,
  type ModelSummary,
  type StoredModel,
} from '@meshnet/weights'
import type { Command } from 'commander'
import { z } from 'zod'
import { connectAgent } from '../agent/control-api.ts'
import { parseFlag } from '../config.ts'
import type { CommandContext } from '../context.ts'
import { formatBytes, formatDuration, type Progress, startProgress } from './progress.ts'

// `mesh model-add|model-ls|model-rm` work on the data dir's model store (`<data dir>/models`)
// directly, with or without a running agent (`mesh model-pull`, in model-pull.ts, asks the agent).

/** `--chunk-mib`: a power of two from 1/16 to 16 MiB, as bytes. */
const chunkMibSchema = z
  .string()
  .regex(/^\d+(\.\d+)?$/, 'must be a number of MiB')
  .transform(Number)
  .refine(
    (mib) => mib >= 1 / 16 && mib <= 16 && Number.isInteger(Math.log2(mib)),
    'must be a power of two from 0.0625 to 16 (MiB)',
  )
  .transform((mib) => mib * 2 ** 20)

const modelNameSchema = z
  .string()
  .min(1, 'must not be empty')
  .max(256, 'at most 256 characters')
  .regex(/^[^\p{Cc}]+$/u, 'no control characters')

const isUrl = (source: string) => /^https?:\/\//i.test(source)

/**
 * Runs `work` until it ends or Ctrl-C (SIGINT/SIGTERM) aborts its signal; on an abort the error is
 * `interrupted()`, whatever the work threw as it stopped. A second Ctrl-C kills the process.
 */
export async function untilInterrupted<T>(
  interrupted: () => MeshError,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController()
  const interrupt = () => controller.abort(interrupted())
  process.once('SIGINT', interrupt)
  process.once('SIGTERM', interrupt)
  try {
    return await work(controller.signal)
  } catch (err) {
    throw controller.signal.aborted ? controller.signal.reason : err
  } finally {
    process.off('SIGINT', interrupt)
    process.off('SIGTERM', interrupt)
  }
}

/** A local model file given to model-add: FileAccessError naming the path when it is not there. */
async function checkModelFile(path: string): Promise<void> {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(path)
  if (scheme !== null) {
    throw new InvalidArgumentError(`${path}: ${scheme[1]}:// URLs are not supported`, {
      hint: 'give the path of a .gguf file, or an http:// or https:// URL',
    })
  }
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    throw new FileAccessError(
      err.code === 'ENOENT'
        ? `model file ${resolve(path)} does not exist`
        : `cannot read ${resolve(path)}: ${err.message}`,
      { cause: err, hint: 'give the path of a .gguf file, or an http:// or https:// URL' },
    )
  })
  if (!info.isFile()) throw new InvalidArgumentError(`${resolve(path)} is not a file`)
}

/** The file name at the end of a URL (`…/Llama-3.2-1B-Q4_K_M.gguf`), if it has one. */
function urlFileName(url: string): string | undefined {
  try {
    const last = decodeURIComponent(new URL(url).pathname.split('/').at(-1) ?? '')
    return modelNameSchema.safeParse(last).success ? last : undefined
  } catch {
    return undefined
  }
}

/** `0-11, 20-23`, `all`, `none` (`-` for a model without layers). */
function describeLayers(summary: ModelSummary): string {
  if (summary.layers === 0) return '-'
  const ranges = summary.completeLayers
  if (ranges.length === 1 && ranges[0]![0] === 0 && ranges[0]![1] === summary.layers) return 'all'
  if (ranges.length === 0) return 'none'
  return ranges.map(([first, end]) => (end - first === 1 ? `${first}` : `${first}-${end - 1}`)).join(', ')
}

/** `4.1 MiB (40%)`; a complete model holds all of it (alignment padding is not a chunk). */
function describeHeld(summary: ModelSummary): string {
  if (summary.complete) return `${formatBytes(summary.fileBytes)} (100%)`
  const percent =
    summary.fileBytes === 0 ? 0 : Math.min(99, Math.floor((100 * summary.heldBytes) / summary.fileBytes))
  return `${formatBytes(summary.heldBytes)} (${percent}%)`
}

function printTable(ctx: CommandContext, rows: string[][]): void {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
  for (const row of rows) {
    ctx.io.stdout.write(
      `${row
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join('  ')
        .trimEnd()}\n`,
    )
  }
}

async function openStore(ctx: CommandContext): Promise<ModelStore> {
  const layout = await ensureDataDir(ctx.dataDir)
  return ModelStore.open(layout.modelsDir, { logger: ctx.logger })
}

/** Progress shown once work turns out to be long, created at its first report. */
function lazyProgress(
  ctx: CommandContext,
  label: string,
): { report(done: number, total: number): void; stop(): void } {
  let progress: Progress | undefined
  return {
    report(done, total) {
      progress ??= startProgress(total, { label, out: ctx.io.stderr, silent: ctx.json })
      progress.update(done)
    },
    stop: () => progress?.stop(),
  }
}

export function registerModels(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('model-add')
    .description(
      'record a GGUF model in this node’s model store: a local file (read once to hash it, not copied) or an http(s) URL (read once with range requests; only its manifest is kept)',
    )
    .argument('<file.gguf|url>', 'a local GGUF file, or an http:// or https:// URL of one')
    .option(
      '--chunk-mib <n>',
      'chunk size of the manifest, a power of two from 0.0625 to 16 (members of a pool must agree: another size is another model id)',
      '4',
    )
    .option('--name <name>', 'the name to show and to refer to the model by (default: the file name)')
    .addHelpText(
      'after',
      `
Examples:
  $ mesh model-add ./Llama-3.2-1B-Instruct-Q4_K_M.gguf
  $ mesh model-add https://huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF/resolve/main/Llama-3.2-1B-Instruct-Q4_K_M.gguf
`,
    )
    .action(async (source: string, flags: { chunkMib: string; name?: string }, cmd: Command) => {
      const ctx = context(cmd)
      const chunkBytes = parseFlag('--chunk-mib', chunkMibSchema, flags.chunkMib)
      const name = flags.name === undefined ? undefined : parseFlag('--name', modelNameSchema, flags.name)
      const url = isUrl(source) ? source : undefined
      if (url === undefined) await checkModelFile(source)
      const store = await openStore(ctx)
      const progress = lazyProgress(
        ctx,
        url === undefined ? `hashing ${basename(source)}` : `reading ${urlFileName(url) ?? url}`,
      )
      try {
        const known = new Set((await store.list()).map((m) => m.id))
        const started = performance.now()
        const onProgress = (done: number, total: number) => progress.report(done, total)
        const stored = await untilInterrupted(
          () => new MeshError('ERR_INTERRUPTED', `interrupted; ${source} was not recorded`),
          async (signal): Promise<StoredModel> => {
            if (url === undefined) return store.addFile(source, { chunkBytes, signal, onProgress, name })
            const { model, header } = await readUrl(url, { chunkBytes, signal, onProgress })
            return store.addPartial(model.bytes, {
              id: model.id,
              name: name ?? urlFileName(url),
              headerSha: header.headerSha,
              sourceUrl: url,
            })
          },
        )
        progress.stop()
        const seconds = (performance.now() - started) / 1000
        // The record as stored (addPartial's answer leaves out the source URL).
        const summary = store.summary((await store.get(stored.id)) ?? stored)
        const { manifest } = stored.model
        const alreadyRecorded = known.has(stored.id)
        if (ctx.json) {
          return printJson(ctx.io, {
            ...summary,
            chunkBytes: manifest.chunkBytes,
            pieces: manifest.pieces.length,
            chunks: stored.model.chunks.count,
            alreadyRecorded,
            seconds: Number(seconds.toFixed(3)),
          })
        }
        if (
          alreadyRecorded &&
          manifest.chunkBytes !== chunkBytes &&
          cmd.getOptionValueSource('chunkMib') === 'cli'
        ) {
          ctx.io.stderr.write(
            `note: model ${stored.id.slice(0, 12)} was recorded with ${formatBytes(manifest.chunkBytes)} chunks before; --chunk-mib was not applied (mesh model-rm ${stored.id.slice(0, 12)} first to cut it again)\n`,
          )
        }
        ctx.io.stdout.write(`${alreadyRecorded ? 'Already recorded' : 'Recorded'}: model ${stored.id}\n`)
        printFields(ctx.io, [
          ['Name', summary.name],
          [
            'Kind',
            summary.kind === 'file'
              ? `file, read in place (not copied): keep ${summary.path} where it is`
              : `partial: ${describeHeld(summary)} held; the agent fetches the chunks it needs (mesh model-pull ${stored.id.slice(0, 12)})`,
          ],
          ['Source', summary.sourceUrl],
          ['Size', `${formatBytes(summary.fileBytes)} (${summary.fileBytes} bytes)`],
          [
            'Pieces',
            `${manifest.pieces.length} (the header and ${manifest.pieces.length - 1} tensors), ${stored.model.chunks.count} chunks of ${formatBytes(manifest.chunkBytes)}`,
          ],
          ['Layers', layerCount(manifest)],
          [
            'Took',
            alreadyRecorded
              ? undefined
              : `${formatDuration(seconds)} (${formatBytes(summary.fileBytes / Math.max(seconds, 1e-3))}/s)`,
          ],
        ])
      } finally {
        progress.stop()
        store.close()
      }
    })

  program
    .command('model-ls')
    .description('list the models in this node’s model store: size, bytes held, complete layers, source')
    .addHelpText(
      'after',
      `
Example:
  $ mesh model-ls
  ID            NAME                               KIND     SIZE       HELD              LAYERS  SOURCE
  5d0c2f9a1b3c  Llama-3.2-1B-Instruct-Q4_K_M.gguf  file     770.3 MiB  770.3 MiB (100%)  all
  9e41b07c22d8  Qwen3-8B-Q4_K_M.gguf               partial  4.68 GiB   1.21 GiB (25%)    0-8     https://huggingface.co/Qwen/Qwen3-8B-GGUF/resolve/main/Qwen3-8B-Q4_K_M.gguf
`,
    )
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const store = await openStore(ctx)
      try {
        const models = await store.list()
        if (ctx.json) return printJson(ctx.io, { models })
        if (models.length === 0) {
          ctx.io.stdout.write(
            `No models in ${store.dir}. Add one with \`mesh model-add <file.gguf|url>\`, or fetch one from the pool with \`mesh model-pull <model-id|url>\`.\n`,
          )
          return
        }
        const rows = [['ID', 'NAME', 'KIND', 'SIZE', 'HELD', 'LAYERS', 'SOURCE']]
        for (const m of models) {
          const missing =
            m.kind === 'file' && !m.complete ? ' (file changed or missing: mesh model-add it again)' : ''
          rows.push([
            m.id.slice(0, 12),
            m.name,
            m.kind,
            formatBytes(m.fileBytes),
            describeHeld(m),
            describeLayers(m),
            `${m.sourceUrl ?? ''}${missing}`,
          ])
        }
        printTable(ctx, rows)
      } finally {
        store.close()
      }
    })

  program
    .command('model-rm')
    .description(
      'remove a model from this node’s model store: a partial model’s file is deleted, a whole file of yours is only forgotten (left in place)',
    )
    .argument('<model>', 'model id, id prefix (8+ hex digits) or name, as mesh model-ls shows')
    .addHelpText(
      'after',
      `
Example:
  $ mesh model-rm 5d0c2f9a1b3c
`,
    )
    .action(async (ref: string, _flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      // A running agent may be serving or fetching the model, with its file open.
      const running = await connectAgent(dataDirLayout(ctx.dataDir)).then(
        () => true,
        () => false,
      )
      if (running) {
        throw new InvalidArgumentError('an agent is running on this data dir and may be using the model', {
          hint: 'stop it (Ctrl+C in its terminal) and run mesh model-rm again',
        })
      }
      const store = await openStore(ctx)
      try {
        const summary = store.summary(await store.resolve(ref))
        await store.remove(summary.id)
        const deleted = summary.kind === 'partial'
        if (ctx.json) {
          return printJson(ctx.io, {
            id: summary.id,
            name: summary.name,
            kind: summary.kind,
            path: summary.path,
            fileDeleted: deleted,
            freedBytes: summary.diskBytes,
          })
        }
        ctx.io.stdout.write(
          deleted
            ? `Removed model ${summary.id.slice(0, 12)} (${summary.name}): deleted ${summary.path}, freeing ${formatBytes(summary.diskBytes)}\n`
            : `Forgot model ${summary.id.slice(0, 12)} (${summary.name}); the file ${summary.path} is yours and was left in place\n`,
        )
      } finally {
        store.close()
      }
    })
}

/** Builds a URL's manifest; a network failure becomes a FetchError naming the URL. */
async function readUrl(
  url: string,
  options: Parameters<typeof buildUrlManifest>[1],
): ReturnType<typeof buildUrlManifest> {
  try {
    return await buildUrlManifest(url, options)
  } catch (err) {
    if (isMeshError(err) || options?.signal?.aborted) throw err
    const cause = (err as Error).cause as Error | undefined
    throw new FetchError(`cannot read ${url}: ${cause?.message ?? (err as Error).message}`, {
      cause: err,
      hint: 'check the URL and the network; the server must answer HTTP range requests',
    })
  }
}
