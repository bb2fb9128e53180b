// Self-check of llama-tools.ts: builds (or finds in the cache) llama.cpp's tools, measures a small
// generated model on the whole file and split over 2 RPC servers, and checks that no RPC server
// outlives a failed or aborted measurement.
//   cd bench && node --conditions=meshnet-source llama-tools.check.ts
import { mkdtemp, readdir, readlink, rm, writeFile } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateModel } from '@meshnet/gguf'
import { table } from './lib.ts'
import {
  type LlamaCppFigures,
  type LlamaTools,
  llamaTools,
  measureLlamaCpp,
  measureLlamaRpc,
} from './llama-tools.ts'

const MODEL = { layers: 8, embd: 512, heads: 8, kvHeads: 4, ff: 1536, vocab: 8000, type: 'Q8_0' } as const
// poll 0: llama.cpp's threads sleep instead of spinning, so other work on the machine does not swamp them.
const SIZES = { promptTokens: 128, genTokens: 32, repetitions: 3, poll: 0 }

function log(line: string): void {
  console.log(`${new Date().toISOString().slice(11, 19)} ${line}`)
}

function assert(condition: boolean, message: string): void {
  if (!condition) throw new Error(`check failed: ${message}`)
}

/** Pids of running processes whose executable is `binary` (Linux /proc). */
async function processesOf(binary: string): Promise<number[]> {
  const pids = (await readdir('/proc')).filter((name) => /^\d+$/.test(name)).map(Number)
  const exes = await Promise.all(pids.map((pid) => readlink(`/proc/${pid}/exe`).catch(() => '')))
  return pids.filter((_, i) => exes[i] === binary)
}

/** Builds (first call) and finds (second call, which must be quick) the tools. */
async function tools(): Promise<LlamaTools | undefined> {
  const started = performance.now()
  const first = await llamaTools({ log })
  if ('skip' in first) {
    log(`skipped: ${first.skip}`)
    return undefined
  }
  log(`tools ready in ${((performance.now() - started) / 1000).toFixed(1)} s: ${first.dir} (${first.commit})`)
  const again = performance.now()
  const second = await llamaTools({ log })
  const secondMs = performance.now() - again
  assert(!('skip' in second) && second.dir === first.dir, 'a second call returns the same cache entry')
  assert(secondMs < 2000, `a second call returns at once (took ${secondMs.toFixed(0)} ms)`)
  log(`second call: ${secondMs.toFixed(0)} ms`)
  return first
}

/** A missing bundle is a skip; a failed build throws and leaves nothing in the cache. */
async function checkFailures(): Promise<void> {
  const cacheRoot = await mkdtemp(join(tmpdir(), 'meshnet-llama-tools-cache-'))
  try {
    const missing = await llamaTools({ bundle: join(cacheRoot, 'none.bundle'), cacheRoot })
    assert('skip' in missing, 'a missing bundle is a skip')
    const bogus = join(cacheRoot, 'bogus.bundle')
    await writeFile(bogus, 'not a git bundle\n')
    const failed = await llamaTools({ bundle: bogus, cacheRoot }).then(
      () => undefined,
      (error: unknown) => error,
    )
    assert(failed instanceof Error, 'a build from a broken bundle fails')
    const left = (await readdir(cacheRoot)).filter((name) => name !== 'bogus.bundle')
    assert(left.length === 0, `a failed build leaves nothing in the cache (found ${left.join(', ')})`)
    log('a missing bundle skips; a failed build throws and leaves no cache entry')
  } finally {
    await rm(cacheRoot, { recursive: true, force: true })
  }
}

/** A failed and an aborted RPC measurement both leave no ggml-rpc-server running. */
async function checkNoOrphans(t: LlamaTools, model: string): Promise<void> {
  const before = await processesOf(t.rpcServer)
  const missing = await measureLlamaRpc(t, join(tmpdir(), 'no-such-model.gguf'), {
    servers: 2,
    threads: 1,
    ...SIZES,
  }).then(
    () => undefined,
    (error: unknown) => error,
  )
  assert(missing instanceof Error, 'measuring a missing model fails')
  assert((await processesOf(t.rpcServer)).length === before.length, 'no RPC server outlives a failed run')
  const aborted = await measureLlamaRpc(t, model, {
    servers: 2,
    threads: 1,
    ...SIZES,
    repetitions: 50,
    signal: AbortSignal.timeout(1500),
  }).then(
    () => undefined,
    (error: unknown) => error,
  )
  assert(aborted instanceof Error, 'an aborted run fails')
  assert((await processesOf(t.rpcServer)).length === before.length, 'no RPC server outlives an aborted run')
  log('no orphan RPC servers after a failed and an aborted run')
}

async function main(): Promise<void> {
  await checkFailures()
  const t = await tools()
  if (t === undefined) return
  const dir = await mkdtemp(join(tmpdir(), 'meshnet-llama-tools-'))
  try {
    const model = join(dir, 'check.gguf')
    const generated = await generateModel({ out: model, ...MODEL })
    log(`model: ${(generated.bytes / 2 ** 20).toFixed(1)} MiB, ${generated.parameters} weights`)
    const whole1 = await measureLlamaCpp(t, model, { threads: 1, ...SIZES })
    const whole2 = await measureLlamaCpp(t, model, { threads: 2, ...SIZES })
    const rpc1 = await measureLlamaRpc(t, model, { servers: 2, threads: 1, ...SIZES })
    const rpc2 = await measureLlamaRpc(t, model, { servers: 2, threads: 2, ...SIZES })
    const row = (name: string, f: LlamaCppFigures) => ({
      run: name,
      'prompt tok/s': f.promptTokPerS,
      'decode tok/s': f.decodeTokPerS,
      'load ms': f.loadMs,
      'cold prompt ms': f.coldPromptMs,
      'ttft ms': f.ttftMs,
    })
    log(
      `load average ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')} on ${availableParallelism()} cores`,
    )
    table([
      row('whole file, 1 thread', whole1),
      row('whole file, 2 threads', whole2),
      row('RPC over 2 servers, 1 thread each', rpc1),
      row('RPC over 2 servers, 2 threads each', rpc2),
    ])
    for (const f of [whole1, whole2, rpc1, rpc2]) {
      assert(f.promptTokPerS > 0 && f.decodeTokPerS > 0 && f.ttftMs > f.loadMs, 'figures are positive')
    }
    await checkNoOrphans(t, model)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
