// `pnpm bench ring`: how fast a ring agrees and what its gossip costs as it grows.
//
// 1. Agents as separate processes on loopback (LAN beacons on 127.0.0.1, default intervals), 2, 4,
//    8 and 16 of them, all spawned at once: from the last of them joining the ring to every agent
//    reporting the same converged ring (each agent stamps both moments itself; the bench polls only
//    every 0.5 s so as not to load them), how long they took to come up (16 Node processes on two
//    cores queue for the CPU), the CPU time each agent spent until the ring converged (what the two
//    cores have to get through; one agent alone only starts up), and ring gossip bytes and CPU per
//    agent per second at rest.
//    Bar: 16 agents ≤ 5 s on this machine (a fixed bar: the wait a user sees after `mesh start`).
// 2. The real ring gossip of 64 and 256 members in this process over a simulated network
//    (packages/ring/test/simulation.ts: gossipsub flood publish and a mesh of degree 6, 2 ms hops):
//    simulated time, rounds and bytes to agree when all start at once, when they come up within a
//    second, when one joins a ring at rest and when one crashes; bytes per member per second at
//    rest. Rounds are the longest causal chain of messages (publish or sync → delivery → …).
import { readFileSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MEMBERS_PER_INTERVAL } from '../packages/ring/src/gossip.ts'
import { type Convergence, RingSimulation } from '../packages/ring/test/simulation.ts'
import { makePool, startAgent, stopAgent, summary, table } from './lib.ts'

const SIZES = (process.env.BENCH_RING_SIZES ?? '2,4,8,16').split(',').filter(Boolean).map(Number)
const SIM_SIZES = (process.env.BENCH_RING_SIM_SIZES ?? '64,256').split(',').filter(Boolean).map(Number)
const REST_WINDOW_MS = 6_000
const TIMEOUT_MS = Number(process.env.BENCH_RING_TIMEOUT_MS ?? 120_000)
const BAR = { agents: 16, ms: 5_000 }

/** `GET /rings/:poolId`, the part of it read here (lighter for the agent than `/status`). */
interface RingStatus {
  epoch: number
  converged: boolean
  /** When this agent joined the ring (ms since the epoch). */
  joinedAt: number
  /** When this agent saw the ring converge on its current membership (ms since the epoch). */
  convergedAt?: number
  members: unknown[]
}

interface AgentStatus {
  rings: Record<string, { gossip: { sent: { bytes: number }; received: { bytes: number } } }>
}

async function control<T>(dataDir: string, path: string): Promise<T> {
  const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { port: number }
  const token = (await readFile(join(dataDir, 'control.token'), 'utf8')).trim()
  const response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
    headers: { authorization: `Bearer ${token}` },
  })
  return (await response.json()) as T
}

/**
 * CPU seconds a process has used, from /proc (user + system, in USER_HZ = 100 ticks a second);
 * undefined where there is no /proc.
 */
function cpuSeconds(pid: number | undefined): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return undefined
  }
}

const processRows: Array<Record<string, string | number>> = []
let barMet: boolean | undefined
for (const n of SIZES) {
  const root = await mkdtemp(join(tmpdir(), `meshnet-bench-ring-${n}-`))
  const port = String(45_000 + Math.floor(Math.random() * 5_000))
  const { poolId, dirs } = await makePool(root, n)
  const spawned = Date.now()
  const settled = await Promise.allSettled(
    dirs.map((dir) => startAgent(dir, ['--local-only', '--beacon-port', port])),
  )
  const agents = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  const allReady = Date.now()
  try {
    const failed = settled.find((r) => r.status === 'rejected')
    if (failed) throw (failed as PromiseRejectedResult).reason
    const statusOf = () =>
      Promise.all(dirs.map((dir) => control<AgentStatus>(dir, '/status').then((s) => s.rings[poolId])))
    const ringsOf = () => Promise.all(dirs.map((dir) => control<RingStatus>(dir, `/rings/${poolId}`)))
    let converged: RingStatus[] | undefined
    let cpuToConverge: Array<number | undefined> = []
    for (const deadline = Date.now() + TIMEOUT_MS; Date.now() < deadline; ) {
      const rings = await ringsOf().catch(() => [])
      if (
        rings.length === n &&
        rings.every((r) => r.members?.length === n && r.converged && r.convergedAt !== undefined) &&
        new Set(rings.map((r) => r.epoch)).size === 1
      ) {
        converged = rings
        cpuToConverge = agents.map((agent) => cpuSeconds(agent.process.pid))
        break
      }
      // Polls are sparse so that they cost the agents being measured little; the agents' own
      // timestamps, not the poll, say when the ring converged.
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
    // Each agent stamps when it joined the ring and when it saw the ring converge: the ring agreed
    // at the last convergence stamp, and could not before the last member joined.
    const lastJoined = converged ? Math.max(...converged.map((r) => r.joinedAt)) : 0
    const agreed = converged ? Math.max(...converged.map((r) => r.convergedAt!)) : 0
    const ms = agreed - lastJoined
    const bar = n === BAR.agents ? (converged && ms <= BAR.ms ? 'PASS' : 'FAIL') : '-'
    if (n === BAR.agents) barMet = bar === 'PASS'
    let atRest: number | string = '-'
    let cpuAtRest: number | string = '-'
    if (converged) {
      const cpuOf = () => agents.map((agent) => cpuSeconds(agent.process.pid))
      const bytesOf = async () =>
        (await statusOf()).map((r) => r!.gossip.sent.bytes + r!.gossip.received.bytes)
      await new Promise((resolve) => setTimeout(resolve, 5_000)) // back off into the at-rest beat
      const before = await bytesOf()
      const cpuBefore = cpuOf()
      await new Promise((resolve) => setTimeout(resolve, REST_WINDOW_MS))
      const cpuAfter = cpuOf()
      const after = await bytesOf()
      atRest = Math.round(summary(after.map((a, i) => (a - before[i]!) / (REST_WINDOW_MS / 1000))).median)
      if (cpuAfter.every((c) => c !== undefined) && cpuBefore.every((c) => c !== undefined)) {
        const shares = cpuAfter.map((c, i) => ((c! - cpuBefore[i]!) / (REST_WINDOW_MS / 1000)) * 100)
        cpuAtRest = Number(summary(shares).median.toFixed(1))
      }
    }
    const row = {
      agents: n,
      'spawned→last joined ms': converged ? Math.round(lastJoined - spawned) : '-',
      'last joined→converged ms': converged ? Math.round(ms) : `not in ${TIMEOUT_MS / 1000} s`,
      // Negative: the ring agreed before the last `mesh start` finished starting its other parts.
      'all ready→converged ms': converged ? Math.round(agreed - allReady) : '-',
      [`bar ≤ ${BAR.ms} ms`]: bar,
      // CPU seconds each agent used from its spawn to the poll that saw the ring converged (median):
      // starting up and forming the ring; one agent alone only starts.
      'CPU s/agent to converge': cpuToConverge.every((c) => c !== undefined)
        ? Number(summary(cpuToConverge as number[]).median.toFixed(2))
        : '-',
      'gossip B/agent/s at rest': atRest,
      // Of one core, median over the agents (Linux: from /proc).
      'CPU %/agent at rest': cpuAtRest,
    }
    processRows.push(row)
    console.log(JSON.stringify(row))
  } finally {
    await Promise.all(agents.map(stopAgent))
    await rm(root, { recursive: true, force: true })
  }
}

const simRows: Array<Record<string, string | number>> = []
const kb = (bytes: number, n: number) => (bytes / n / 1000).toFixed(1)
const simRow = (n: number, scenario: string, c: Convergence, note = '') => {
  const row = {
    members: n,
    scenario,
    'simulated ms': Math.round(c.ms),
    rounds: Number.isNaN(c.rounds) ? '-' : c.rounds,
    'messages/member': (c.traffic.published / n).toFixed(1),
    'full/member': (c.traffic.full / n).toFixed(1),
    'syncs/member': (c.traffic.syncs / n).toFixed(1),
    'KB/member ring': kb(c.traffic.payloadBytes + c.traffic.syncBytes, n),
    'KB/member wire': kb(c.traffic.wireBytes + c.traffic.syncBytes, n),
    note,
  }
  simRows.push(row)
  console.log(JSON.stringify(row))
}
const restRows: Array<Record<string, string | number>> = []
for (const n of SIM_SIZES) {
  const wall = performance.now()
  const together = new RingSimulation({ members: n })
  simRow(n, 'all start at once', await together.converge(600_000, () => together.start()))
  await together.stop()

  const sim = new RingSimulation({ members: n, seed: 2 })
  const spread = await sim.converge(600_000, () => sim.start(1_000))
  // Rounds through members coming up one by one measure the order they came up in, not the ring.
  simRow(n, 'start within 1 s', { ...spread, rounds: Number.NaN }, 'ms from the last start')
  const heartbeatMs = 2_000 * Math.max(1, n / MEMBERS_PER_INTERVAL) // the at-rest interval at n
  await sim.run(3 * heartbeatMs) // back off into the at-rest beat
  const restMs = 2 * heartbeatMs
  const rest = await sim.run(restMs)
  const perSecond = (bytes: number) => Math.round(bytes / n / (restMs / 1000))
  const restRow = {
    members: n,
    'beat interval s': heartbeatMs / 1000,
    'beats heard/member/s': (rest.delivered / n / (restMs / 1000)).toFixed(1),
    'ring B/member/s': perSecond(rest.payloadBytes + rest.syncBytes),
    'wire B/member/s': perSecond(rest.wireBytes + rest.syncBytes),
    'full announcements': rest.full,
    syncs: rest.syncs,
  }
  restRows.push(restRow)
  console.log(JSON.stringify(restRow))
  simRow(n, 'one joins', await sim.converge(600_000, () => sim.join()))
  await sim.run(3 * heartbeatMs)
  simRow(
    n,
    'one crashes',
    await sim.converge(600_000, () => sim.crash(sim.members[1]!)),
    'includes the 1 s suspicion',
  )
  await sim.stop()
  console.log(`(${n} simulated members: ${((performance.now() - wall) / 1000).toFixed(0)} s of wall time)`)
}

if (processRows.length > 0) {
  console.log('\nring convergence on loopback (agents as separate processes)')
  table(processRows)
  console.log(
    'gossip bytes: ring messages sent and received by each agent (gossipsub framing and duplicates excluded); CPU: of one core, the median agent, over 6 s at rest',
  )
  if (barMet !== undefined) {
    console.log(
      `bar: ${BAR.agents} agents converge ≤ ${BAR.ms / 1000} s after the last joined: ${barMet ? 'met' : 'NOT met'}`,
    )
    if (!barMet) process.exitCode = 1
  }
}
if (simRows.length > 0) {
  console.log('\nthe ring of many members, in process over a simulated network: to agree')
  table(simRows)
  console.log('\nat rest')
  table(restRows)
  console.log(
    'ring: ring messages delivered to members (first copies) and direct syncs; wire: every copy on every link, ~180 B of gossipsub framing each',
  )
}
