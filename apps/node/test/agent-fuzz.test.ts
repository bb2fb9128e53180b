import { randomBytes } from 'node:crypto'
import { createSocket } from 'node:dgram'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { encodeBeacon } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import {
  type AgentProcess,
  agentRequest,
  beaconPort,
  runMesh,
  startAgentProcess,
} from '@meshnet/test-harness'
import { afterAll, beforeAll, expect, it } from 'vitest'

let root: string
let agent: AgentProcess | undefined
const port = beaconPort()
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-fuzz-'))
})
afterAll(async () => {
  await agent?.stop()
  await rm(root, { recursive: true, force: true })
})

interface BeaconStats {
  received: number
  accepted: number
  dropped: Record<string, number>
}

async function beaconStats(dataDir: string): Promise<BeaconStats> {
  return (await agentRequest<{ beacons: BeaconStats }>(dataDir, '/status')).beacons
}

it('a running agent survives thousands of random and mutated beacons and counts every one', async () => {
  const adminDir = join(root, 'A')
  const pool = JSON.parse(
    (await runMesh(['pool-create', '--name', 'fuzz', '--json', '--data-dir', adminDir])).stdout,
  )
  agent = await startAgentProcess(adminDir, ['--local-only', '--beacon-port', port])

  const socket = createSocket({ type: 'udp4', reuseAddr: true })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  socket.setMulticastInterface('127.0.0.1')
  socket.setMulticastTTL(0)
  const send = (data: Uint8Array) =>
    new Promise<void>((resolve, reject) =>
      socket.send(data, Number(port), '239.192.0.1', (err) => (err ? reject(err) : resolve())),
    )

  const sender = generateIdentity()
  const valid = () =>
    encodeBeacon(sender, {
      type: 'presence',
      body: { pools: [] },
      timestamp: Date.now(),
      nonce: randomBytes(16),
    })
  const replayed = valid()
  const datagrams: Uint8Array[] = [
    ...Array.from({ length: 1500 }, () => randomBytes(1 + Math.floor(Math.random() * 1500))),
    ...Array.from({ length: 1500 }, () => {
      const bytes = Uint8Array.from(valid())
      const flips = 1 + Math.floor(Math.random() * 4)
      for (let f = 0; f < flips; f++)
        bytes[Math.floor(Math.random() * bytes.length)]! ^= 1 << Math.floor(Math.random() * 8)
      return bytes
    }),
    ...Array.from({ length: 200 }, () => replayed),
    new Uint8Array(65_507),
  ]
  const before = await beaconStats(adminDir)
  // Flow control: a batch at a time, waiting until the agent has read it, so that the kernel never
  // drops datagrams from a full socket buffer (those would never reach the agent's counters).
  let stats = before
  const BATCH = 50
  for (let start = 0; start < datagrams.length; start += BATCH) {
    const batch = datagrams.slice(start, start + BATCH)
    for (const datagram of batch) await send(datagram)
    const target = Math.min(start + BATCH, datagrams.length)
    for (let i = 0; i < 200 && stats.received - before.received < target; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5))
      stats = await beaconStats(adminDir)
    }
  }
  socket.close()
  const received = stats.received - before.received
  const dropped =
    Object.values(stats.dropped).reduce((a, b) => a + b, 0) -
    Object.values(before.dropped).reduce((a, b) => a + b, 0)
  const accepted = stats.accepted - before.accepted
  expect(received).toBe(datagrams.length)
  expect(accepted + dropped).toBe(received)
  expect(stats.dropped.oversized).toBeGreaterThanOrEqual(1)
  expect(stats.dropped.replayed).toBeGreaterThanOrEqual(199)
  expect(stats.dropped.malformed).toBeGreaterThan(1000)

  // Still serving: a real join works afterwards.
  const joined = await runMesh([
    'pool-join',
    '--token',
    pool.joinToken,
    '--local-only',
    '--beacon-port',
    port,
    '--timeout',
    '20',
    '--json',
    '--data-dir',
    join(root, 'B'),
  ])
  expect(joined.code, joined.stderr).toBe(0)
  expect(agent.process.exitCode).toBeNull()
})
