import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beaconPort, eventually } from '@meshnet/test-harness'
import { afterAll, describe, expect, it } from 'vitest'
import { converged } from './mesh-fixture.ts'

// examples/lan-pool/device1.sh and device2.sh, both on this machine with LOCAL_ONLY=1 (every packet
// on loopback): the relay, the control plane, the pool, the join over beacons and the ring.

const EXAMPLE = join(import.meta.dirname, '..', '..', '..', 'examples', 'lan-pool')
const running: ChildProcess[] = []
let root: string

afterAll(async () => {
  for (const child of running) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await new Promise((resolve) => child.once('exit', resolve))
    }
  }
  if (root) await rm(root, { recursive: true, force: true })
})

function device(script: string, env: Record<string, string>) {
  const child = spawn('bash', [join(EXAMPLE, script)], {
    env: { ...process.env, MESH_LOG: 'warn', LOCAL_ONLY: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout!.on('data', (chunk) => (output += chunk))
  child.stderr!.on('data', (chunk) => (output += chunk))
  running.push(child)
  return { child, output: () => output }
}

describe('examples/lan-pool', () => {
  it('device1.sh and device2.sh form a pool and a two-member ring', async () => {
    root = await mkdtemp(join(tmpdir(), 'meshnet-lan-pool-'))
    const shared = {
      BEACON_PORT: beaconPort(),
      POOL_INFO: join(root, 'pool-info.json'),
      RELAY_PORT: '0',
      CONTROL_PLANE_PORT: String(18_080 + Math.floor(Math.random() * 1000)),
    }
    const one = device('device1.sh', { ...shared, MESH_DATA_DIR: join(root, 'device1'), DEVICE_NAME: 'one' })
    const info = await eventually(
      'device1.sh to write the pool info',
      async () => JSON.parse(await readFile(shared.POOL_INFO, 'utf8')) as { poolId: string },
      60_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${one.output()}`)
    })
    await eventually('device 1’s agent', async () =>
      (await readFile(join(root, 'device1', 'agent.json'), 'utf8').catch(() => '')) ? true : undefined,
    )
    const two = device('device2.sh', { ...shared, MESH_DATA_DIR: join(root, 'device2'), DEVICE_NAME: 'two' })
    await converged([join(root, 'device1'), join(root, 'device2')], info.poolId, 2, 60_000).catch(
      (err: Error) => {
        throw new Error(`${err.message}\ndevice1:\n${one.output()}\ndevice2:\n${two.output()}`)
      },
    )
    expect(one.output()).toMatch(/T\+\d+s: pool created/)
    expect(one.output()).toMatch(/control plane at http:\/\/127\.0\.0\.1:\d+/)
    expect(two.output()).toMatch(/T\+\d+s: joined; starting the agent/)
  }, 120_000)
})
