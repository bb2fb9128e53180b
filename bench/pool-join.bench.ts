// Time from `mesh pool-join` to certificate stored, on loopback (LAN beacons on 127.0.0.1, TTL 0).
// Goal: under 1 s. The reference quick start's timeline allows about 15 s for the same step.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { mesh, meshJson, startAgent, stopAgent, summary, table } from './lib.ts'

const RUNS = Number(process.env.BENCH_RUNS ?? 10)
const REFERENCE_MS = 15_000
const root = await mkdtemp(join(tmpdir(), 'meshnet-bench-join-'))
const port = String(44_000 + Math.floor(Math.random() * 5_000))
try {
  const adminDir = join(root, 'admin')
  const pool = await meshJson<{ joinToken: string }>([
    'pool-create',
    '--name',
    'bench',
    '--data-dir',
    adminDir,
  ])
  const agent = await startAgent(adminDir, ['--local-only', '--beacon-port', port])
  const protocol: number[] = []
  const wall: number[] = []
  try {
    for (let i = 0; i < RUNS; i++) {
      const started = performance.now()
      const result = await mesh([
        'pool-join',
        '--token',
        pool.joinToken,
        '--local-only',
        '--beacon-port',
        port,
        '--json',
        '--data-dir',
        join(root, `member-${i}`),
      ])
      wall.push(performance.now() - started)
      if (result.code !== 0) throw new Error(result.stderr)
      protocol.push(JSON.parse(result.stdout).elapsedMs)
    }
  } finally {
    await stopAgent(agent)
  }
  console.log(`pool-join on loopback, ${RUNS} joins (ms)`)
  const p = summary(protocol)
  const w = summary(wall)
  table([
    {
      measure: 'request → certificate stored',
      ...p,
      'vs 15 s reference': `${(REFERENCE_MS / p.median).toFixed(0)}× faster`,
    },
    {
      measure: 'whole command (incl. Node start)',
      ...w,
      'vs 15 s reference': `${(REFERENCE_MS / w.median).toFixed(0)}× faster`,
    },
  ])
  console.log(
    `goal < 1000 ms: ${w.p90 < 1000 ? 'met' : 'NOT met'} (p90 of the whole command ${w.p90.toFixed(0)} ms)`,
  )
  await mesh(['--version'])
} finally {
  await rm(root, { recursive: true, force: true })
}
