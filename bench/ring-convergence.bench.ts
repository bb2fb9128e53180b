// From agents started to ring converged, for 2, 4, 8 and 16 agents on loopback (separate
// processes, LAN beacons on 127.0.0.1), and ring gossip bytes per node per second at rest.
// Goal: ≤ 1 s for 2 agents, ≤ 3 s for 16. The reference quick start's timeline allows 30–40 s.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makePool, startAgent, stopAgent, summary, table } from './lib.ts'

const SIZES = (process.env.BENCH_RING_SIZES ?? '2,4,8,16').split(',').map(Number)
const REST_WINDOW_MS = 6_000
const REFERENCE_MS = 30_000
const TIMEOUT_MS = Number(process.env.BENCH_RING_TIMEOUT_MS ?? 120_000)

interface RingView {
  epoch: number
  digest: string
  converged: boolean
  members: unknown[]
}

async function control<T>(dataDir: string, path: string): Promise<T> {
  const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { port: number }
  const token = (await readFile(join(dataDir, 'control.token'), 'utf8')).trim()
  const response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
    headers: { authorization: `Bearer ${token}` },
  })
  return (await response.json()) as T
}

const rows: Array<Record<string, string | number>> = []
for (const n of SIZES) {
  const root = await mkdtemp(join(tmpdir(), `meshnet-bench-ring-${n}-`))
  const port = String(45_000 + Math.floor(Math.random() * 5_000))
  const { poolId, dirs } = await makePool(root, n)
  const spawned = performance.now()
  const starting = dirs.map((dir) =>
    startAgent(dir, ['--local-only', '--beacon-port', port, '--beacon-interval', '500']),
  )
  const settled = await Promise.allSettled(starting)
  const agents = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  const allStarted = performance.now()
  try {
    const failed = settled.find((r) => r.status === 'rejected')
    if (failed) throw (failed as PromiseRejectedResult).reason
    let converged = 0
    for (;;) {
      const views = await Promise.all(
        dirs.map((dir) => control<RingView>(dir, `/rings/${poolId}`).catch(() => undefined)),
      )
      const agreed =
        views.every((v) => v?.converged && v.members.length === n) &&
        new Set(views.map((v) => `${v!.epoch}/${v!.digest}`)).size === 1
      if (agreed) {
        converged = performance.now()
        break
      }
      if (performance.now() - allStarted > TIMEOUT_MS) break
      // Every poll asks every agent; polling faster than this starves the agents being measured.
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    if (converged === 0) {
      const row = {
        agents: n,
        'started→converged ms': `not in ${TIMEOUT_MS / 1000} s`,
        'spawned→converged ms': '-',
        goal: n >= 16 ? '≤ 3000' : '-',
        'vs 30 s reference': '-',
        'gossip B/node/s at rest': '-',
      }
      rows.push(row)
      console.log(JSON.stringify(row))
      continue
    }
    const statsOf = async () =>
      Promise.all(
        dirs.map(async (dir) => {
          const status = await control<{
            rings: Record<string, { gossip: { sent: { bytes: number }; received: { bytes: number } } }>
          }>(dir, '/status')
          return status.rings[poolId]!.gossip
        }),
      )
    await new Promise((resolve) => setTimeout(resolve, 3_000)) // settle into the at-rest heartbeat
    const before = await statsOf()
    await new Promise((resolve) => setTimeout(resolve, REST_WINDOW_MS))
    const after = await statsOf()
    const perNode = after.map(
      (a, i) =>
        (a.sent.bytes - before[i]!.sent.bytes + a.received.bytes - before[i]!.received.bytes) /
        (REST_WINDOW_MS / 1000),
    )
    const fromStart = converged - allStarted
    const row = {
      agents: n,
      'started→converged ms': Math.round(fromStart),
      'spawned→converged ms': Math.round(converged - spawned),
      goal: n <= 2 ? '≤ 1000' : n >= 16 ? '≤ 3000' : '-',
      'vs 30 s reference': `${(REFERENCE_MS / fromStart).toFixed(0)}× faster`,
      'gossip B/node/s at rest': Math.round(summary(perNode).median),
    }
    rows.push(row)
    console.log(JSON.stringify(row))
  } finally {
    await Promise.all(agents.map(stopAgent))
    await rm(root, { recursive: true, force: true })
  }
}
console.log('\nring convergence on loopback (agents as separate processes)')
table(rows)
console.log(
  'gossip bytes count ring announcements sent and received by each node (gossipsub framing excluded)',
)
