import { join } from 'node:path'
import type { NodeIdentity } from '@meshnet/identity'
import { formatRootPublicKey } from '@meshnet/pool'
import type { RingTopology } from '@meshnet/ring'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  capabilities,
  makeTestPool,
  registerPool,
  startTestPlane,
  type TestPlane,
  type TestPool,
} from './helpers.ts'

const DAY = 24 * 60 * 60_000

let t: TestPlane
beforeEach(async () => {
  t = await startTestPlane({ onlineWindowMs: 15_000 })
})
afterEach(async () => {
  await t.stop()
})

type ErrorBody = { error: { code: string; message: string; details?: Record<string, unknown> } }

const makePool = (name: string) => makeTestPool(join(t.dataDir, `admin-${name}`), name)
const register = (p: TestPool) => registerPool(t, p)

function joinBody(device: NodeIdentity, certificate: string, capacityBytes?: number) {
  return {
    nodeId: device.nodeId,
    addresses: [`/ip4/127.0.0.1/tcp/4001/p2p/${device.nodeId}`],
    capabilities: capabilities(capacityBytes),
    certificate,
  }
}

const topology = async (poolId: string, query = '') =>
  (await t.api<RingTopology>('GET', `/v1/rings/${poolId}/topology${query}`)).body

describe('pools', () => {
  it('registers a pool whose id matches its root key, once', async () => {
    const p = await makePool('lab')
    const first = await register(p)
    expect(first.status).toBe(201)
    expect(first.body).toMatchObject({ poolId: p.pool.id, created: true, epoch: 0, members: 0 })
    const again = await register(p)
    expect(again.status).toBe(200)
    expect(again.body).toMatchObject({ created: false })
    const list = await t.api<{ pools: Array<{ poolId: string }> }>('GET', '/v1/pools')
    expect(list.body.pools.map((x) => x.poolId)).toEqual([p.pool.id])
  })

  it('refuses a root key that belongs to another pool', async () => {
    const a = await makePool('a')
    const b = await makePool('b')
    const mismatch = await t.api<ErrorBody>('POST', '/v1/pools', {
      poolId: a.pool.id,
      rootPublicKey: formatRootPublicKey(b.pool.rootPublicKey),
    })
    expect(mismatch.status).toBe(400)
    expect(mismatch.body.error.code).toBe('ERR_POOL_KEY_MISMATCH')
    expect(mismatch.body.error.message).toContain(`belongs to pool ${b.pool.id}, not ${a.pool.id}`)
    const garbage = await t.api<ErrorBody>('POST', '/v1/pools', { poolId: a.pool.id, rootPublicKey: 'xyz' })
    expect(garbage.status).toBe(400)
    expect(garbage.body.error.message).toContain('rootPublicKey: not a pool root public key')
    expect((await t.api('GET', '/v1/stats')).body).toMatchObject({ pools: 0 })
  })
})

describe('HTTP ring join', () => {
  it('admits a node with a real certificate and orders members by node id with positions', async () => {
    const p = await makePool('lab')
    await register(p)
    const devices = [t.identity(), t.identity(), t.identity()]
    for (const [i, device] of devices.entries()) {
      const joined = await t.api<{ role: string; topology: RingTopology }>(
        'POST',
        `/v1/rings/${p.pool.id}/join`,
        joinBody(device, await p.certify(device)),
      )
      expect(joined.status).toBe(200)
      expect(joined.body.role).toBe('member')
      expect(joined.body.topology.epoch).toBe(i + 1)
    }
    const ring = await topology(p.pool.id)
    const sorted = devices.map((d) => d.nodeId).sort()
    expect(ring).toMatchObject({ poolId: p.pool.id, epoch: 3, converged: true })
    expect(ring.digest).toMatch(/^[0-9a-f]{32}$/)
    expect(ring.members.map((m) => [m.nodeId, m.peerId, m.position])).toEqual(
      sorted.map((id, i) => [id, id, i]),
    )
    expect(ring.members[0]!.addresses).toEqual([`/ip4/127.0.0.1/tcp/4001/p2p/${sorted[0]}`])
    // The join registered each device, so heartbeats work and list the ring.
    const beat = await t.api('POST', `/v1/devices/${devices[0]!.nodeId}/heartbeat`, {})
    expect(beat.body).toMatchObject({ rings: [p.pool.id] })
  })

  it('refuses a certificate of another pool', async () => {
    const p = await makePool('lab')
    const other = await makePool('other')
    await register(p)
    const device = t.identity()
    const refused = await t.api<ErrorBody>(
      'POST',
      `/v1/rings/${p.pool.id}/join`,
      joinBody(device, await other.certify(device)),
    )
    expect(refused.status).toBe(403)
    expect(refused.body.error).toMatchObject({
      code: 'ERR_POOL_CERTIFICATE',
      details: { reason: 'wrong-pool' },
    })
    expect((await topology(p.pool.id)).members).toEqual([])
  })

  it('refuses a revoked certificate, and drops a member when its certificate is revoked', async () => {
    const p = await makePool('lab')
    await register(p)
    const a = t.identity()
    const b = t.identity()
    const certA = await p.certify(a)
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinBody(a, certA))
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinBody(b, await p.certify(b)))
    expect((await topology(p.pool.id)).epoch).toBe(2)

    const list = await p.revoke({ nodeIds: [a.nodeId] })
    const posted = await t.api('POST', `/v1/rings/${p.pool.id}/revocations`, { list })
    expect(posted.body).toEqual({ accepted: true, version: 1, removed: [a.nodeId] })
    const ring = await topology(p.pool.id)
    expect(ring.epoch).toBe(3)
    expect(ring.members.map((m) => m.nodeId)).toEqual([b.nodeId])

    const again = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, joinBody(a, certA))
    expect(again.status).toBe(403)
    expect(again.body.error.details).toMatchObject({ reason: 'revoked' })
    // The same list again is not newer: kept, nothing removed.
    expect((await t.api('POST', `/v1/rings/${p.pool.id}/revocations`, { list })).body).toMatchObject({
      accepted: false,
    })
  })

  it('refuses a revocation list not signed by the pool root', async () => {
    const p = await makePool('lab')
    const other = await makePool('other')
    await register(p)
    const forged = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/revocations`, {
      list: await other.revoke({ nodeIds: [t.identity().nodeId] }),
    })
    expect(forged.status).toBe(400)
    expect(forged.body.error).toMatchObject({
      code: 'ERR_POOL_REVOCATION_LIST',
      details: { reason: 'wrong-pool' },
    })
  })

  it('refuses an expired certificate', async () => {
    const p = await makePool('lab')
    await register(p)
    const device = t.identity()
    const expired = await p.certify(device, { now: Date.now() - 2 * DAY, ttlMs: DAY })
    const refused = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, joinBody(device, expired))
    expect(refused.status).toBe(403)
    expect(refused.body.error.details).toMatchObject({ reason: 'expired' })
    expect(refused.body.error.message).toContain('expired at')
  })

  it('refuses a certificate whose node id is not the one joining', async () => {
    const p = await makePool('lab')
    await register(p)
    const owner = t.identity()
    const impostor = t.identity()
    const refused = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, {
      ...joinBody(owner, await p.certify(owner)),
      nodeId: impostor.nodeId,
    })
    expect(refused.status).toBe(403)
    expect(refused.body.error.code).toBe('ERR_NODE_ID_MISMATCH')
    expect((await t.api('GET', `/v1/devices/${impostor.nodeId}`)).status).toBe(404)
  })

  it('refuses a client certificate, bytes that are no certificate, and an unregistered pool', async () => {
    const p = await makePool('lab')
    const device = t.identity()
    const cert = await p.certify(device, { role: 'client' })
    expect(
      (await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, joinBody(device, cert))).status,
    ).toBe(404)
    await register(p)
    const client = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, joinBody(device, cert))
    expect(client.status).toBe(403)
    expect(client.body.error.code).toBe('ERR_CLIENT_CERTIFICATE')
    const junk = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, joinBody(device, 'AAAA'))
    expect(junk.status).toBe(403)
    expect(junk.body.error.details).toMatchObject({ reason: 'malformed' })
  })
})

describe('topology epochs', () => {
  it('starts a new epoch on join, leave, changed addresses and a silent member, and not otherwise', async () => {
    const p = await makePool('lab')
    await register(p)
    const a = t.identity()
    const b = t.identity()
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinBody(a, await p.certify(a)))
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinBody(b, await p.certify(b)))
    const two = await topology(p.pool.id)
    expect(two.epoch).toBe(2)

    // Heartbeats with the same addresses keep the epoch; the document is stable.
    t.clock.advance(10_000)
    await t.api('POST', `/v1/devices/${a.nodeId}/heartbeat`, {})
    await t.api('POST', `/v1/devices/${b.nodeId}/heartbeat`, {})
    expect(await topology(p.pool.id)).toEqual(two)

    await t.api('POST', `/v1/devices/${a.nodeId}/heartbeat`, { addresses: ['/ip4/10.0.0.9/tcp/4001'] })
    expect((await topology(p.pool.id)).epoch).toBe(3)

    // b stops sending heartbeats: after the online window it is dropped, once.
    t.clock.advance(10_000)
    await t.api('POST', `/v1/devices/${a.nodeId}/heartbeat`, {})
    t.clock.advance(6_000)
    const dropped = await topology(p.pool.id)
    expect(dropped.epoch).toBe(4)
    expect(dropped.members.map((m) => m.nodeId)).toEqual([a.nodeId])
    expect(dropped.updatedAt).toBe(new Date(t.clock.now()).toISOString())
    expect((await topology(p.pool.id)).epoch).toBe(4)

    const left = await t.api('POST', `/v1/rings/${p.pool.id}/leave`, { nodeId: a.nodeId })
    expect(left.body).toEqual({ left: true, epoch: 5 })
    expect(await t.api('POST', `/v1/rings/${p.pool.id}/leave`, { nodeId: a.nodeId })).toMatchObject({
      body: { left: false, epoch: 5 },
    })
    expect((await topology(p.pool.id)).members).toEqual([])
  })

  it('adds a pipeline shard plan sized by capacity when asked, and 422 when the model does not fit', async () => {
    const p = await makePool('lab')
    await register(p)
    const small = t.identity()
    const large = t.identity()
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinBody(small, await p.certify(small), 1000))
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinBody(large, await p.certify(large), 4000))
    const planned = await topology(p.pool.id, '?layers=9&bytesPerLayer=100')
    const layers = Object.fromEntries(planned.members.map((m) => [m.nodeId, m.shard?.layers]))
    const smallLayers = layers[small.nodeId]!
    const largeLayers = layers[large.nodeId]!
    expect(smallLayers[1] - smallLayers[0]).toBe(2)
    expect(largeLayers[1] - largeLayers[0]).toBe(7)
    const tooBig = await t.api<ErrorBody>(
      'GET',
      `/v1/rings/${p.pool.id}/topology?layers=8&bytesPerLayer=10000`,
    )
    expect(tooBig.status).toBe(422)
    expect(tooBig.body.error.code).toBe('ERR_SHARD_PLAN')
    const half = await t.api<ErrorBody>('GET', `/v1/rings/${p.pool.id}/topology?layers=8`)
    expect(half.status).toBe(400)
    expect(half.body.error.message).toContain('give layers and bytesPerLayer together')
  })
})
