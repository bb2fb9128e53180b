// Shared helpers for benchmarks: run the real `mesh` CLI and agents from source (through
// @meshnet/test-harness), summarise samples, print tables.

import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, rename } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateModel, type ModelWeightType } from '@meshnet/gguf'
import { ensureDataDir, loadOrCreateIdentity } from '@meshnet/identity'
import { createJoinRequest, createPool, openPoolAdmin, saveJoinedPool } from '@meshnet/pool'
import { type AgentProcess, type MeshResult, runMesh, startAgentProcess } from '@meshnet/test-harness'

/** `mesh <args>` from source, without a time limit. */
export function mesh(args: string[]): Promise<MeshResult> {
  return runMesh(args, {}, 0)
}

export async function meshJson<T>(args: string[]): Promise<T> {
  const result = await mesh([...args, '--json'])
  if (result.code !== 0) throw new Error(`mesh ${args.join(' ')}: ${result.stderr}`)
  return JSON.parse(result.stdout) as T
}

/** Starts `mesh start` (logging as the bench's own MESH_LOG says) and resolves once its control API is up. */
export function startAgent(dataDir: string, args: string[]): Promise<AgentProcess> {
  return startAgentProcess(dataDir, args, { env: {}, timeoutMs: 60_000 })
}

export async function stopAgent(agent: AgentProcess): Promise<void> {
  await agent.stop()
}

export function summary(samples: number[]): {
  n: number
  min: number
  median: number
  p90: number
  max: number
} {
  const sorted = [...samples].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return { n: sorted.length, min: sorted[0]!, median: at(0.5), p90: at(0.9), max: sorted[sorted.length - 1]! }
}

/** Prints rows as an aligned text table. */
export function table(rows: Array<Record<string, string | number>>): void {
  const columns = Object.keys(rows[0] ?? {})
  const cell = (v: string | number) =>
    typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : v
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]!).length)))
  const line = (values: string[]) => values.map((v, i) => v.padStart(widths[i]!)).join('  ')
  console.log(line(columns))
  console.log(line(widths.map((w) => '-'.repeat(w))))
  for (const row of rows) console.log(line(columns.map((c) => cell(row[c]!))))
}

/**
 * A pool of `n` data dirs under `root`, set up on disk directly: the first holds the pool root, the
 * others are certified members (joins over beacons are measured in pool-join.bench.ts).
 */
export async function makePool(root: string, n: number): Promise<{ poolId: string; dirs: string[] }> {
  const dirs = Array.from({ length: n }, (_, i) => join(root, `node-${i}`))
  const adminLayout = await ensureDataDir(dirs[0]!)
  const { identity: admin } = await loadOrCreateIdentity(adminLayout.identityKey)
  const { pool } = await createPool(adminLayout.root, { name: 'bench' }, admin)
  const pools = await openPoolAdmin(adminLayout.root, pool.id, admin)
  const token = await pools.createJoinToken({ singleUse: false })
  for (const dir of dirs.slice(1)) {
    const layout = await ensureDataDir(dir)
    const { identity } = await loadOrCreateIdentity(layout.identityKey)
    const { bytes } = createJoinRequest(identity, { token: token.token, deviceName: 'bench' })
    const decision = await pools.handleJoinRequest(bytes)
    if (decision.outcome !== 'accepted') throw new Error(`join refused: ${decision.outcome}`)
    await saveJoinedPool(layout.root, decision.response)
  }
  return { poolId: pool.id, dirs }
}

/** The 507M-parameter llama the sharded and batching benches run (embd 1280, 24 layers, vocab 32000). */
export const BENCH_507M = { layers: 24, embd: 1280, heads: 20, kvHeads: 4, ff: 3584, vocab: 32000 } as const

/**
 * A generated model of `shape` and weight `type`, kept in `MESHNET_BENCH_CACHE` (default
 * `<tmpdir>/meshnet-bench-cache`) between runs: generated once, renamed into place when complete.
 */
export async function cachedModel(
  shape: Readonly<{
    layers: number
    embd: number
    heads: number
    kvHeads: number
    ff: number
    vocab: number
  }>,
  type: ModelWeightType,
  options: { seed?: number; fill?: 'random' | 'tiled'; suffix?: string } = {},
): Promise<string> {
  const seed = options.seed ?? 5
  const fill = options.fill ?? 'random'
  const cacheDir = process.env.MESHNET_BENCH_CACHE ?? join(tmpdir(), 'meshnet-bench-cache')
  const tag =
    type === 'Q8_0' && fill === 'random' ? 'q8' : `${type.toLowerCase()}${fill === 'tiled' ? '-tiled' : ''}`
  const path = join(
    cacheDir,
    `${options.suffix ?? 'sharded'}-e${shape.embd}-l${shape.layers}-h${shape.heads}-kv${shape.kvHeads}-ff${shape.ff}-v${shape.vocab}-${tag}-s${seed}.gguf`,
  )
  await mkdir(cacheDir, { recursive: true })
  if (existsSync(path)) return path
  const started = performance.now()
  const partial = `${path}.${process.pid}.partial`
  const made = await generateModel({ out: partial, ...shape, type, seed, fill, context: 2048 })
  await rename(partial, path)
  console.log(
    `generated a ${(made.parameters / 1e6).toFixed(0)}M-parameter ${type} model in ${((performance.now() - started) / 1000).toFixed(0)} s`,
  )
  return path
}

/**
 * A plain loopback round trip, the floor of any exchange between two processes on one machine: a
 * child process echoes `bytes`-byte messages over TCP on 127.0.0.1 (Nagle off), and this process
 * times `count` round trips one after the other. Returns the median in ms.
 */
export async function loopbackRoundTrip(bytes: number, count = 2000): Promise<number> {
  const echo = `const s = require('node:net').createServer((c) => { c.setNoDelay(true); c.pipe(c) })
s.listen(0, '127.0.0.1', () => console.log(s.address().port))
process.stdin.on('end', () => process.exit(0)); process.stdin.resume()`
  const child = spawn(process.execPath, ['-e', echo], { stdio: ['pipe', 'pipe', 'inherit'] })
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim())))
      child.once('exit', (code) => reject(new Error(`the echo process exited with ${code}`)))
    })
    const socket = connect(port, '127.0.0.1')
    socket.setNoDelay(true)
    await once(socket, 'connect')
    const payload = Buffer.alloc(bytes, 7)
    const times: number[] = []
    let pending: { need: number; done: () => void } | undefined
    socket.on('data', (chunk: Buffer) => {
      if (pending === undefined) return
      pending.need -= chunk.length
      if (pending.need <= 0) pending.done()
    })
    for (let i = 0; i < count; i++) {
      const started = performance.now()
      await new Promise<void>((resolve) => {
        pending = { need: bytes, done: resolve }
        socket.write(payload)
      })
      times.push(performance.now() - started)
    }
    socket.destroy()
    return summary(times).median
  } finally {
    child.stdin.end()
    child.kill()
  }
}
