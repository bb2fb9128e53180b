import { join } from 'node:path'
import type { NodeIdentity } from '@meshnet/identity'
import type { RingTopology } from '@meshnet/ring'
import { afterEach, describe, expect, it } from 'vitest'
import { capabilities, makeTestPool, registerPool, startTestPlane, type TestPlane } from './helpers.ts'

type ErrorBody = { error: { code: string; message: string; details?: Record<string, unknown> } }

let t: TestPlane
afterEach(async () => {
  await t.stop()
})

const device = (node: NodeIdentity, address = '/ip4/192.168.1.20/tcp/4001') => ({
  nodeId: node.nodeId,
  name: 'laptop',
  addresses: [address],
  capabilities: capabilities(),
})

/** A pool with B in its ring (joined with B's own key) and A registered beside it. */
async function ringWithB() {
  const p = await makeTestPool(join(t.dataDir, 'admin'), 'lab')
  await registerPool(t, p)
  const a = t.identity()
  const b = t.identity()
  const certB = await p.certify(b)
  const joinB = (address: string) => ({
    nodeId: b.nodeId,
    addresses: [address],
    capabilities: capabilities(),
    certificate: certB,
  })
  expect((await t.api('POST', '/v1/devices', device(a))).status).toBe(201)
  expect((await t.api('POST', `/v1/rings/${p.pool.id}/join`, joinB('/ip4/10.0.0.2/tcp/4001'))).status).toBe(
    200,
  )
  const topology = async () => (await t.api<RingTopology>('GET', `/v1/rings/${p.pool.id}/topology`)).body
  return { p, a, b, joinB, topology }
}

describe('device signatures', () => {
  it("refuses B's certificate posted with another address when A signs the join", async () => {
    t = await startTestPlane()
    const { p, a, b, joinB, topology } = await ringWithB()
    const before = await topology()

    const asB = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, joinB('/ip4/6.6.6.6/tcp/1'), {
      as: a,
    })
    expect(asB.status).toBe(403)
    expect(asB.body.error.code).toBe('ERR_WRONG_DEVICE')
    expect(asB.body.error.message).toContain(`signed by node ${a.nodeId} but acts for node ${b.nodeId}`)
    // A naming itself with B's certificate is refused by the certificate check.
    const asA = await t.api<ErrorBody>('POST', `/v1/rings/${p.pool.id}/join`, {
      ...joinB('/ip4/6.6.6.6/tcp/1'),
      nodeId: a.nodeId,
    })
    expect(asA.status).toBe(403)
    expect(asA.body.error.code).toBe('ERR_NODE_ID_MISMATCH')
    // Registering B (the registration has no certificate) signed by A is refused too.
    const register = await t.api<ErrorBody>('POST', '/v1/devices', device(b, '/ip4/6.6.6.6/tcp/1'), { as: a })
    expect(register.status).toBe(403)
    expect(register.body.error.code).toBe('ERR_WRONG_DEVICE')

    expect(await topology()).toEqual(before)
    expect(before.members.map((m) => [m.nodeId, m.addresses])).toEqual([
      [b.nodeId, ['/ip4/10.0.0.2/tcp/4001']],
    ])
  })

  it('refuses a heartbeat, a leave, a removal and job reports for B signed by A', async () => {
    t = await startTestPlane()
    const { p, a, b, topology } = await ringWithB()
    const before = await topology()
    const job = await t.api<{ jobId: string }>('POST', '/v1/jobs', {
      poolId: p.pool.id,
      prompt: 'Hi',
      maxTokens: 4,
    })
    const forged: Array<[string, string, unknown]> = [
      ['POST', `/v1/devices/${b.nodeId}/heartbeat`, { addresses: ['/ip4/6.6.6.6/tcp/1'] }],
      ['POST', `/v1/rings/${p.pool.id}/leave`, { nodeId: b.nodeId }],
      ['DELETE', `/v1/devices/${b.nodeId}`, undefined],
      ['POST', '/v1/jobs/claim', { nodeId: b.nodeId, poolId: p.pool.id }],
    ]
    for (const [method, path, body] of forged) {
      const refused = await t.api<ErrorBody>(method, path, body, { as: a })
      expect({ method, path, status: refused.status, code: refused.body.error?.code }).toEqual({
        method,
        path,
        status: 403,
        code: 'ERR_WRONG_DEVICE',
      })
    }
    // B is still registered, in the ring, at its own address; the job still waits for a claim.
    expect((await t.api('GET', `/v1/devices/${b.nodeId}`)).body).toMatchObject({
      addresses: ['/ip4/10.0.0.2/tcp/4001'],
      rings: [p.pool.id],
    })
    expect(await topology()).toEqual(before)
    expect((await t.api('GET', `/v1/jobs/${job.body.jobId}`)).body).toMatchObject({ status: 'queued' })

    // Once B claims it, A cannot report for B either.
    expect((await t.api('POST', '/v1/jobs/claim', { nodeId: b.nodeId, poolId: p.pool.id })).status).toBe(200)
    for (const [action, extra] of [
      ['tokens', { tokens: [1], text: 'x' }],
      ['complete', {}],
      ['fail', { error: 'nope' }],
    ] as const) {
      const refused = await t.api<ErrorBody>(
        'POST',
        `/v1/jobs/${job.body.jobId}/${action}`,
        { nodeId: b.nodeId, ...extra },
        { as: a },
      )
      expect([action, refused.status, refused.body.error.code]).toEqual([action, 403, 'ERR_WRONG_DEVICE'])
    }
    expect((await t.api('GET', `/v1/jobs/${job.body.jobId}`)).body).toMatchObject({
      status: 'running',
      tokenCount: 0,
    })
  })

  it("accepts B's own signed requests, and refuses the same requests with the token alone", async () => {
    t = await startTestPlane()
    const { p, b, joinB } = await ringWithB()
    const requests: Array<[string, string, unknown]> = [
      ['POST', '/v1/devices', device(b)],
      ['POST', `/v1/devices/${b.nodeId}/heartbeat`, {}],
      ['POST', `/v1/rings/${p.pool.id}/join`, joinB('/ip4/10.0.0.3/tcp/4001')],
      ['POST', '/v1/jobs/claim', { nodeId: b.nodeId }],
      ['POST', `/v1/rings/${p.pool.id}/leave`, { nodeId: b.nodeId }],
      ['DELETE', `/v1/devices/${b.nodeId}`, undefined],
    ]
    for (const [method, path, body] of requests) {
      const unsigned = await t.api<ErrorBody>(method, path, body, { as: null })
      expect([path, unsigned.status, unsigned.body.error?.code]).toEqual([
        path,
        401,
        'ERR_SIGNATURE_REQUIRED',
      ])
      expect(unsigned.body.error.message).toContain('mesh-signature')
      const signed = await t.api(method, path, body, { as: b })
      expect([path, signed.status]).toEqual([
        path,
        method === 'POST' && path === '/v1/jobs/claim' ? 204 : 200,
      ])
    }
    expect((await t.api('GET', `/v1/devices/${b.nodeId}`)).status).toBe(404)
    // Admin reads and pool registration stay token-only.
    expect((await t.api('GET', '/v1/devices', undefined, { as: null })).status).toBe(200)
    expect((await registerPool(t, p)).status).toBe(200)
  })

  it('refuses a replayed signed request', async () => {
    t = await startTestPlane()
    const b = t.identity()
    const body = JSON.stringify(device(b))
    const headers = t.sign(b, 'POST', '/v1/devices', body)
    const first = await t.api('POST', '/v1/devices', undefined, { raw: body, as: null, headers })
    expect(first.status).toBe(201)
    const replay = await t.api<ErrorBody>('POST', '/v1/devices', undefined, { raw: body, as: null, headers })
    expect(replay.status).toBe(401)
    expect(replay.body.error.code).toBe('ERR_REPLAYED_REQUEST')
    expect(replay.body.error.message).toContain('a signed request is accepted once')
    // The same nonce on another request of B's is a replay too; a fresh nonce is fine.
    const path = `/v1/devices/${b.nodeId}/heartbeat`
    const again = await t.api<ErrorBody>('POST', path, {}, { signature: { nonce: headers['mesh-nonce'] } })
    expect(again.body.error.code).toBe('ERR_REPLAYED_REQUEST')
    expect((await t.api('POST', path, {})).status).toBe(200)
  })

  it('refuses a stale or future timestamp, naming the clock difference', async () => {
    t = await startTestPlane()
    const started = t.clock.now()
    const b = t.identity()
    expect((await t.api('POST', '/v1/devices', device(b))).status).toBe(201)
    const path = `/v1/devices/${b.nodeId}/heartbeat`
    // Nonces are kept in memory: a request signed before the control plane started is refused.
    const beforeStart = await t.api<ErrorBody>('POST', path, {}, { signature: { timestamp: started - 1000 } })
    expect(beforeStart.body.error).toMatchObject({
      code: 'ERR_STALE_REQUEST',
      message: expect.stringContaining('before this control plane started'),
    })
    const body = '{}'
    const captured = t.sign(b, 'POST', path, body)
    t.clock.advance(5 * 60_000 + 1_000)
    const stale = await t.api<ErrorBody>('POST', path, undefined, { raw: body, as: null, headers: captured })
    expect(stale.status).toBe(401)
    expect(stale.body.error.code).toBe('ERR_STALE_REQUEST')
    expect(stale.body.error.message).toContain("301 s from this control plane's clock")
    const future = await t.api<ErrorBody>(
      'POST',
      path,
      {},
      { signature: { timestamp: t.clock.now() + 6 * 60_000 } },
    )
    expect(future.body.error.code).toBe('ERR_STALE_REQUEST')
    expect((await t.api('POST', path, {})).status).toBe(200)
  })

  it('refuses a signature made for another control plane, or over another body', async () => {
    t = await startTestPlane()
    const b = t.identity()
    const other = await t.api<ErrorBody>('POST', '/v1/devices', device(b), {
      signature: { planeId: 'cp-other' },
    })
    expect(other.status).toBe(401)
    expect(other.body.error.code).toBe('ERR_BAD_SIGNATURE')
    expect(other.body.error.message).toContain(`does not verify with the key of node ${b.nodeId}`)
    const headers = t.sign(b, 'POST', '/v1/devices', JSON.stringify(device(b)))
    const changed = await t.api<ErrorBody>('POST', '/v1/devices', undefined, {
      raw: JSON.stringify(device(b, '/ip4/6.6.6.6/tcp/1')),
      as: null,
      headers,
    })
    expect(changed.body.error.code).toBe('ERR_BAD_SIGNATURE')
    const garbled = await t.api<ErrorBody>('POST', '/v1/devices', device(b), {
      headers: { 'mesh-timestamp': 'yesterday' },
    })
    expect(garbled.body.error).toMatchObject({
      code: 'ERR_BAD_SIGNATURE',
      message: expect.stringContaining('header mesh-timestamp: not milliseconds since 1970'),
    })
    expect((await t.api('GET', '/v1/devices')).body).toMatchObject({ devices: [] })
  })
})

describe('per-device rate limit', () => {
  it('answers 429 with Retry-After past the limit, to that device only', async () => {
    t = await startTestPlane({ deviceRequestsPerMinute: 5 })
    const a = t.identity()
    const b = t.identity()
    expect((await t.api('POST', '/v1/devices', device(b))).status).toBe(201)
    const beat = `/v1/devices/${b.nodeId}/heartbeat`
    // A request for B signed by A is refused before it counts against either.
    expect((await t.api('POST', beat, {}, { as: a })).status).toBe(403)
    for (let i = 0; i < 4; i++) expect((await t.api('POST', beat, {})).status).toBe(200)
    const limited = await t.api<ErrorBody>('POST', beat, {})
    expect(limited.status).toBe(429)
    expect(limited.body.error.code).toBe('ERR_RATE_LIMITED')
    expect(limited.body.error.message).toContain(`node ${b.nodeId} sent more than 5 requests within a minute`)
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
    // Other devices, and token-only requests, go on.
    expect((await t.api('POST', '/v1/devices', device(a))).status).toBe(201)
    expect((await t.api('GET', '/v1/devices')).status).toBe(200)
  })
})
