import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { canUseNetns, createTestLan, MESH, meshIn, type TestLan } from './netns.ts'

describe.skipIf(!canUseNetns)('joining a pool across two network namespaces joined by a bridge', () => {
  let lan: TestLan
  let root: string
  beforeAll(async () => {
    lan = createTestLan(2)
    root = await mkdtemp(join(tmpdir(), 'meshnet-netns-'))
  })
  afterAll(async () => {
    lan?.destroy()
    await rm(root, { recursive: true, force: true })
  })

  it('B in its own namespace joins the pool of A over real multicast on the bridge', async () => {
    const [a, b] = lan.hosts
    const dirA = join(root, 'A')
    const dirB = join(root, 'B')
    const created = await meshIn([], ['pool-create', '--name', 'lan-pool', '--json', '--data-dir', dirA])
    const pool = JSON.parse(created.stdout)
    const [cmd, ...rest] = [
      ...lan.exec(0),
      ...MESH,
      'start',
      '--data-dir',
      dirA,
      '--beacon-interface',
      a!.address,
    ]
    const agent = spawn(cmd!, rest, { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    agent.stdout.on('data', (c) => (output += c))
    agent.stderr.on('data', (c) => (output += c))
    try {
      for (let i = 0; i < 200 && !output.includes('Control API'); i++)
        await new Promise((r) => setTimeout(r, 50))
      const joined = await meshIn(lan.exec(1), [
        'pool-join',
        '--token',
        pool.joinToken,
        '--pool-root-pubkey',
        pool.rootPublicKey,
        '--beacon-interface',
        b!.address,
        '--timeout',
        '20',
        '--json',
        '--data-dir',
        dirB,
      ])
      expect(joined.code, joined.stderr + output).toBe(0)
      expect(JSON.parse(joined.stdout)).toMatchObject({ poolId: pool.poolId, role: 'member' })
      expect(output).toContain(`"interface":"${a!.address}"`)
    } finally {
      agent.kill('SIGTERM')
      await new Promise((r) => agent.once('exit', r))
    }
  })
})
