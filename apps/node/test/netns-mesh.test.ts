import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { eventually } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readTopology } from './mesh-fixture.ts'
import { canUseNetns, createTestLan, MESH, meshIn, type TestLan } from './netns.ts'

describe.skipIf(!canUseNetns)('three agents across network namespaces joined by a bridge', () => {
  let lan: TestLan
  let root: string
  const agents: ChildProcess[] = []
  beforeAll(async () => {
    lan = createTestLan(3)
    root = await mkdtemp(join(tmpdir(), 'meshnet-netns-mesh-'))
  })
  afterAll(async () => {
    for (const agent of agents) agent.kill('SIGTERM')
    await Promise.all(
      agents.map((a) => (a.exitCode === null ? new Promise((r) => a.once('exit', r)) : undefined)),
    )
    lan?.destroy()
    await rm(root, { recursive: true, force: true })
  })

  const start = (i: number, dataDir: string) => {
    const address = lan.hosts[i]!.address
    const [cmd, ...rest] = [
      ...lan.exec(i),
      ...MESH,
      'start',
      '--data-dir',
      dataDir,
      '--beacon-interface',
      address,
      '--beacon-interval',
      '500',
      '--listen',
      `/ip4/${address}/tcp/0`,
    ]
    const child = spawn(cmd!, rest, { stdio: 'ignore' })
    agents.push(child)
    return child
  }

  it('converge on one ring with mDNS and LAN beacons on the namespaces’ own interfaces', async () => {
    const dirs = ['A', 'B', 'C'].map((n) => join(root, n))
    const created = await meshIn([], ['pool-create', '--name', 'lan', '--json', '--data-dir', dirs[0]!])
    const pool = JSON.parse(created.stdout) as { poolId: string; joinToken: string }
    start(0, dirs[0]!)
    for (const i of [1, 2]) {
      const joined = await eventually(`host ${i} to join`, async () => {
        const r = await meshIn(lan.exec(i), [
          'pool-join',
          '--token',
          pool.joinToken,
          '--beacon-interface',
          lan.hosts[i]!.address,
          '--timeout',
          '5',
          '--data-dir',
          dirs[i]!,
        ])
        return r.code === 0 ? r : undefined
      })
      expect(joined.code).toBe(0)
      start(i, dirs[i]!)
    }
    const topologies = await eventually(
      'three topology files on one converged epoch',
      async () => {
        const files = await Promise.all(dirs.map((d) => readTopology(d, pool.poolId)))
        const same = new Set(files.map((f) => `${f.epoch}/${f.digest}`)).size === 1
        return same && files.every((f) => f.converged && f.members.length === 3) ? files : undefined
      },
      60_000,
    )
    // Every member is known by an address on the bridge, not on loopback.
    for (const member of topologies[0]!.members) {
      expect(member.addresses.some((a) => a.startsWith('/ip4/10.77.'))).toBe(true)
    }
  })
})
