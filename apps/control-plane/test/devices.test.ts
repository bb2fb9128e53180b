import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { capabilities, startTestPlane, type TestPlane } from './helpers.ts'

let t: TestPlane
beforeEach(async () => {
  t = await startTestPlane({ onlineWindowMs: 15_000 })
})
afterEach(async () => {
  await t.stop()
})

const device = (name = 'laptop') => {
  const { nodeId } = t.identity()
  return { nodeId, name, addresses: ['/ip4/192.168.1.20/tcp/4001'], capabilities: capabilities() }
}

describe('devices', () => {
  it('registers a device (201), then updates it on re-registration (200) keeping registeredAt', async () => {
    const d = device()
    const first = await t.api('POST', '/v1/devices', d)
    expect(first.status).toBe(201)
    expect(first.body).toMatchObject({ ...d, online: true, rings: [], registeredAt: t.clock.now() })
    t.clock.advance(1000)
    const again = await t.api('POST', '/v1/devices', { ...d, name: 'renamed' })
    expect(again.status).toBe(200)
    expect(again.body).toMatchObject({
      name: 'renamed',
      registeredAt: t.clock.now() - 1000,
      lastSeen: t.clock.now(),
    })
    const one = await t.api('GET', `/v1/devices/${d.nodeId}`)
    expect(one.body).toMatchObject({ nodeId: d.nodeId, name: 'renamed' })
  })

  it('shows a device offline once its last heartbeat is older than the window, online again after one', async () => {
    const d = device()
    await t.api('POST', '/v1/devices', d)
    t.clock.advance(14_000)
    let list = await t.api<{ devices: Array<{ online: boolean }>; onlineWindowMs: number }>(
      'GET',
      '/v1/devices',
    )
    expect(list.body.onlineWindowMs).toBe(15_000)
    expect(list.body.devices[0]!.online).toBe(true)
    t.clock.advance(2000)
    list = await t.api('GET', '/v1/devices')
    expect(list.body.devices[0]!.online).toBe(false)

    const beat = await t.api('POST', `/v1/devices/${d.nodeId}/heartbeat`, {
      addresses: ['/ip4/10.0.0.2/tcp/4001'],
    })
    expect(beat.status).toBe(200)
    expect(beat.body).toMatchObject({
      online: true,
      addresses: ['/ip4/10.0.0.2/tcp/4001'],
      lastSeen: t.clock.now(),
    })
    list = await t.api('GET', '/v1/devices')
    expect(list.body.devices[0]!.online).toBe(true)
    const stats = await t.api('GET', '/v1/stats')
    expect(stats.body).toMatchObject({ devices: { total: 1, online: 1 } })
  })

  it('accepts an empty heartbeat and refuses one for an unknown device with 404', async () => {
    const d = device()
    await t.api('POST', '/v1/devices', d)
    expect((await t.api('POST', `/v1/devices/${d.nodeId}/heartbeat`)).status).toBe(200)
    const unknown = await t.api('POST', `/v1/devices/${t.identity().nodeId}/heartbeat`, {})
    expect(unknown.status).toBe(404)
    expect(unknown.body).toMatchObject({ error: { code: 'ERR_DEVICE_NOT_FOUND' } })
  })

  it('deletes a device, and answers 404 for one that is gone', async () => {
    const a = device('a')
    const b = device('b')
    await t.api('POST', '/v1/devices', a)
    await t.api('POST', '/v1/devices', b)
    expect((await t.api('DELETE', `/v1/devices/${a.nodeId}`)).body).toMatchObject({ deleted: true })
    const list = await t.api<{ devices: Array<{ nodeId: string }> }>('GET', '/v1/devices')
    expect(list.body.devices.map((x) => x.nodeId)).toEqual([b.nodeId])
    expect((await t.api('DELETE', `/v1/devices/${a.nodeId}`)).status).toBe(404)
  })

  it('refuses a registration with a 400 that names each bad field', async () => {
    const d = device()
    const bad = await t.api<{ error: { code: string; message: string; details: { issues: unknown[] } } }>(
      'POST',
      '/v1/devices',
      { ...d, nodeId: 'nope', capabilities: { ...d.capabilities, capacityBytes: 'lots' } },
    )
    expect(bad.status).toBe(400)
    expect(bad.body.error.code).toBe('ERR_INVALID_REQUEST')
    expect(bad.body.error.message).toContain('nodeId: not a node id')
    expect(bad.body.error.message).toContain('capabilities.capacityBytes')
    const extra = await t.api<{ error: { message: string } }>('POST', '/v1/devices', { ...d, colour: 'red' })
    expect(extra.status).toBe(400)
    expect(extra.body.error.message).toContain('colour')
  })
})
