import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type BeaconMessage, type LanBeacons, lanBeacons } from '@meshnet/discovery'
import { generateIdentity } from '@meshnet/identity'
import { createJoinRequest, decodeJoinResponse, type JoinRequest } from '@meshnet/pool'
import { type AgentProcess, beaconPort, runMesh, startAgentProcess } from '@meshnet/test-harness'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

let root: string
let port: string
const agents: AgentProcess[] = []
const sockets: LanBeacons[] = []
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'meshnet-pool-'))
  port = beaconPort()
})
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.stop()))
  await Promise.all(sockets.splice(0).map((s) => s.stop()))
  await rm(root, { recursive: true, force: true })
})

const dir = (name: string) => join(root, name)
const mesh = async (name: string, ...args: string[]) => runMesh([...args, '--data-dir', dir(name)])
const json = async (name: string, ...args: string[]) => {
  const result = await mesh(name, ...args, '--json')
  if (result.code !== 0) throw new Error(`mesh ${args.join(' ')} failed: ${result.stdout}${result.stderr}`)
  return JSON.parse(result.stdout)
}

/** Admin A with a pool and its agent running on loopback beacons. */
async function adminWithPool(extra: string[] = []) {
  await mesh('A', 'init', '--name', 'DeviceA')
  const pool = await json('A', 'pool-create', '--name', 'test-pool')
  agents.push(await startAgentProcess(dir('A'), ['--local-only', '--beacon-port', port, ...extra]))
  return pool as { poolId: string; rootPublicKey: string; joinToken: string }
}

const join_ = (name: string, ...args: string[]) =>
  mesh(name, 'pool-join', '--local-only', '--beacon-port', port, '--timeout', '20', ...args)

describe('joining a pool over LAN beacons (real processes, loopback multicast)', () => {
  it('B joins with the token, holds a valid certificate, and lists the pool', async () => {
    const pool = await adminWithPool()
    await mesh('B', 'init', '--name', 'DeviceB')
    const joined = await join_(
      'B',
      '--pool-id',
      pool.poolId,
      '--pool-root-pubkey',
      pool.rootPublicKey,
      '--token',
      pool.joinToken,
      '--json',
    )
    expect(joined.code, joined.stderr).toBe(0)
    expect(JSON.parse(joined.stdout)).toMatchObject({
      poolId: pool.poolId,
      name: 'test-pool',
      role: 'member',
    })
    const list = await json('B', 'pool-list')
    expect(list.pools).toEqual([
      expect.objectContaining({
        poolId: pool.poolId,
        name: 'test-pool',
        role: 'member',
        certificateStatus: 'valid',
      }),
    ])
    expect(agents[0]!.output()).toContain('signed a certificate for a joining device')
  })

  it('without a token the request waits for pool-approve, then B gets its certificate', async () => {
    const pool = await adminWithPool()
    const b = await json('B', 'init', '--name', 'DeviceB')
    const joining = join_('B', '--pool-id', pool.poolId, '--json')
    let requests: Array<{ nodeId: string; deviceName: string }> = []
    for (let i = 0; i < 100 && requests.length === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      requests = (await json('A', 'pool-requests', '--pool-id', pool.poolId)).requests
    }
    expect(requests).toEqual([expect.objectContaining({ nodeId: b.nodeId, deviceName: 'DeviceB' })])
    await json('A', 'pool-approve', b.nodeId, '--pool-id', pool.poolId)
    const joined = await joining
    expect(joined.code, joined.stderr).toBe(0)
    expect(JSON.parse(joined.stdout).role).toBe('member')
  })

  it('refuses a wrong token with a reason the member sees', async () => {
    const pool = await adminWithPool()
    const other = await json('C', 'pool-create', '--name', 'other')
    const forgedToken = other.joinToken.replace(other.poolId, pool.poolId)
    const joined = await join_('B', '--token', forgedToken)
    expect(joined.code).toBe(1)
    expect(joined.stderr).toMatch(/token/i)
    expect((await json('B', 'pool-list')).pools).toEqual([])
  })

  it('ends at its timeout with what to check when no admin answers', async () => {
    const pool = await json('A', 'pool-create', '--name', 'lonely')
    const joined = await mesh(
      'B',
      'pool-join',
      '--pool-id',
      pool.poolId,
      '--local-only',
      '--beacon-port',
      port,
      '--timeout',
      '1',
    )
    expect(joined.code).toBe(1)
    expect(joined.stderr).toContain(`no admin of pool ${pool.poolId} answered within 1 s`)
    expect(joined.stderr).toContain('multicast')
  })

  it('a revoked member asking again is refused as revoked, and its revocation list says so', async () => {
    const pool = await adminWithPool()
    const b = await json('B', 'init', '--name', 'DeviceB')
    await join_('B', '--token', pool.joinToken)
    const revoked = await json('A', 'pool-revoke', b.nodeId, '--pool-id', pool.poolId)
    expect(revoked.nodeIds).toEqual([b.nodeId])
    // B's own agent takes the revocation list from the admin's beacons.
    agents.push(
      await startAgentProcess(dir('B'), ['--local-only', '--beacon-port', port, '--beacon-interval', '200']),
    )
    let status = 'valid'
    for (let i = 0; i < 100 && status === 'valid'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      status = (await json('B', 'pool-list')).pools[0].certificateStatus
    }
    expect(status).toBe('revoked')
    const again = await join_('B', '--token', pool.joinToken)
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/revoked/)
  })
})

describe('the admin agent answers hostile join requests with signed refusals', () => {
  async function probe() {
    const identity = generateIdentity()
    const beacons = lanBeacons({ identity, localOnly: true, port: Number(port) })
    sockets.push(beacons)
    await beacons.start()
    const responses: BeaconMessage[] = []
    beacons.onMessage((m) => {
      if (m.type === 'pool-join-response') responses.push(m)
    })
    const ask = async (bytes: Uint8Array, request: JoinRequest) => {
      const before = responses.length
      await beacons.send('pool-join-request', bytes)
      for (let i = 0; i < 100 && responses.length === before; i++) await new Promise((r) => setTimeout(r, 20))
      const message = responses[before]
      if (message === undefined) throw new Error('no answer')
      return decodeJoinResponse(message.body as Uint8Array, { request })
    }
    return { identity, ask }
  }

  it('names the reason: forged signature, stale request, replayed request', async () => {
    const pool = await adminWithPool()
    const { identity, ask } = await probe()

    const forged = createJoinRequest(identity, { token: pool.joinToken, deviceName: 'mallory' })
    const bytes = Uint8Array.from(forged.bytes)
    bytes[bytes.length - 5]! ^= 0x01 // inside the device signature
    expect(await ask(bytes, forged.request)).toMatchObject({ outcome: 'refused', reason: 'bad-signature' })

    const stale = createJoinRequest(identity, {
      token: pool.joinToken,
      deviceName: 'late',
      now: Date.now() - 6 * 60_000,
    })
    expect(await ask(stale.bytes, stale.request)).toMatchObject({
      outcome: 'refused',
      reason: 'stale-request',
    })

    const fresh = createJoinRequest(identity, { token: pool.joinToken, deviceName: 'ok' })
    expect(await ask(fresh.bytes, fresh.request)).toMatchObject({ outcome: 'accepted' })
    expect(await ask(fresh.bytes, fresh.request)).toMatchObject({ outcome: 'refused', reason: 'replayed' })
  })
})
