import { execFile, spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { canUseNetns, createTestLan, type TestLan } from './netns.ts'
import { BIN, type MeshResult } from './run-mesh.ts'

const node = [process.execPath, '--conditions=meshnet-source', BIN]

function runIn(prefix: string[], args: string[]): Promise<MeshResult> {
  return new Promise((resolve) => {
    const [cmd, ...rest] = [...prefix, ...node, ...args]
    execFile(
      cmd!,
      rest,
      { timeout: 60_000, env: { ...process.env, MESH_LOG: '' } },
      (error, stdout, stderr) => {
        resolve({
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        })
      },
    )
  })
}

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
    const created = await runIn([], ['pool-create', '--name', 'lan-pool', '--json', '--data-dir', dirA])
    const pool = JSON.parse(created.stdout)
    const [cmd, ...rest] = [
      ...lan.exec(0),
      ...node,
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
      const joined = await runIn(lan.exec(1), [
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
