import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import {
  capabilities,
  makeTestPool,
  openStream,
  registerPool,
  startTestPlane,
  type TestPlane,
} from './helpers.ts'

let t: TestPlane
afterEach(async () => {
  await t.stop()
})

type ErrorBody = { error: { code: string; message: string } }
interface JobBody {
  id: string
  status: string
  nodeId: string | null
  attempts: number
  tokens: number[]
  text: string
  tokenCount: number
  stats: Record<string, unknown> | null
  error: string | null
  createdAt: number
  startedAt: number | null
  finishedAt: number | null
}

/** Registers a device and returns its node id. */
async function node(name: string): Promise<string> {
  const { nodeId } = t.identity()
  await t.api('POST', '/v1/devices', { nodeId, name, addresses: [], capabilities: capabilities() })
  return nodeId
}

const submit = async (body: Record<string, unknown> = {}) =>
  (
    await t.api<{ jobId: string; status: string }>('POST', '/v1/jobs', {
      prompt: 'Hello',
      maxTokens: 8,
      ...body,
    })
  ).body.jobId

describe('the job queue', () => {
  it('runs a job from queue to completion and streams every chunk, early ones included, then end', async () => {
    t = await startTestPlane()
    const worker = await node('worker')
    const queued = await t.api('POST', '/v1/jobs', { prompt: 'Hello', maxTokens: 8, temperature: 0, seed: 7 })
    expect(queued.status).toBe(201)
    expect(queued.body).toMatchObject({ status: 'queued' })
    const jobId = (queued.body as { jobId: string }).jobId

    const claimed = await t.api('POST', '/v1/jobs/claim', { nodeId: worker })
    expect(claimed.status).toBe(200)
    expect(claimed.body).toMatchObject({
      id: jobId,
      status: 'running',
      nodeId: worker,
      prompt: 'Hello',
      maxTokens: 8,
      temperature: 0,
      seed: 7,
      mode: 'auto',
      attempts: 1,
      leaseMs: 60_000,
    })
    expect((await t.api('POST', '/v1/jobs/claim', { nodeId: worker })).status).toBe(204)

    expect(
      (await t.api('POST', `/v1/jobs/${jobId}/tokens`, { nodeId: worker, tokens: [15043], text: ' Hi' }))
        .body,
    ).toEqual({ tokenCount: 1 })
    const stream = await openStream(t, jobId)
    expect(stream.status).toBe(200)
    expect(stream.contentType).toMatch(/^text\/event-stream/)
    await t.api('POST', `/v1/jobs/${jobId}/tokens`, { nodeId: worker, tokens: [727, 29991], text: ' there!' })
    const done = await t.api('POST', `/v1/jobs/${jobId}/complete`, {
      nodeId: worker,
      stats: { tokensPerSecond: 12.5 },
    })
    expect(done.body).toMatchObject({ status: 'completed' })

    const events = await stream.events
    expect(events.map((e) => [e.event, e.data])).toEqual([
      ['token', { tokens: [15043], text: ' Hi' }],
      ['token', { tokens: [727, 29991], text: ' there!' }],
      ['end', { status: 'completed', tokenCount: 3, stats: { tokensPerSecond: 12.5 } }],
    ])
    const job = (await t.api<JobBody>('GET', `/v1/jobs/${jobId}`)).body
    expect(job).toMatchObject({
      status: 'completed',
      nodeId: worker,
      tokens: [15043, 727, 29991],
      text: ' Hi there!',
      tokenCount: 3,
      stats: { tokensPerSecond: 12.5 },
      error: null,
    })
    expect(job.finishedAt).toBeGreaterThanOrEqual(job.startedAt!)

    // A stream opened after the end replays everything, then ends; Last-Event-ID skips what was seen.
    const late = await openStream(t, jobId, { 'last-event-id': events[0]!.id! })
    expect((await late.events).map((e) => e.event)).toEqual(['token', 'end'])
    expect((await t.api('GET', '/v1/stats')).body).toMatchObject({
      jobs: { queued: 0, running: 0, completed: 1, failed: 0, cancelled: 0 },
      tokensGenerated: 3,
    })
  })

  it('hands out the oldest queued job first, and each job to one node only', async () => {
    t = await startTestPlane()
    const nodes = await Promise.all(['a', 'b', 'c', 'd'].map(node))
    const first = await submit({ prompt: 'first' })
    t.clock.advance(1)
    const second = await submit({ prompt: 'second' })
    expect((await t.api<JobBody>('POST', '/v1/jobs/claim', { nodeId: nodes[0] })).body.id).toBe(first)
    const racing = await Promise.all(
      nodes.map((nodeId) => t.api<JobBody>('POST', '/v1/jobs/claim', { nodeId })),
    )
    expect(racing.map((r) => r.status).sort()).toEqual([200, 204, 204, 204])
    expect(racing.find((r) => r.status === 200)!.body.id).toBe(second)
  })

  it('takes tokens only from the node that holds the job, and no more than maxTokens', async () => {
    t = await startTestPlane()
    const a = await node('a')
    const b = await node('b')
    const jobId = await submit({ maxTokens: 2 })
    await t.api('POST', '/v1/jobs/claim', { nodeId: a })
    const other = await t.api<ErrorBody>('POST', `/v1/jobs/${jobId}/tokens`, {
      nodeId: b,
      tokens: [1],
      text: 'x',
    })
    expect(other.status).toBe(409)
    expect(other.body.error.code).toBe('ERR_NOT_ASSIGNED')
    const over = await t.api<ErrorBody>('POST', `/v1/jobs/${jobId}/tokens`, {
      nodeId: a,
      tokens: [1, 2, 3],
      text: 'x',
    })
    expect(over.status).toBe(409)
    expect(over.body.error.code).toBe('ERR_TOO_MANY_TOKENS')
    const bad = await t.api<ErrorBody>('POST', `/v1/jobs/${jobId}/tokens`, {
      nodeId: a,
      tokens: [-1],
      text: 'x',
    })
    expect(bad.status).toBe(400)
    expect(bad.body.error.message).toContain('tokens.0')
    expect((await t.api('POST', `/v1/jobs/${jobId}/complete`, { nodeId: b })).status).toBe(409)
  })

  it('fails a job with the node’s error and ends its stream with an error event', async () => {
    t = await startTestPlane()
    const a = await node('a')
    const jobId = await submit()
    await t.api('POST', '/v1/jobs/claim', { nodeId: a })
    const stream = await openStream(t, jobId)
    await t.api('POST', `/v1/jobs/${jobId}/fail`, { nodeId: a, error: 'model not found' })
    expect((await stream.events).map((e) => [e.event, e.data])).toEqual([
      ['error', { status: 'failed', error: 'model not found' }],
    ])
    expect((await t.api<JobBody>('GET', `/v1/jobs/${jobId}`)).body).toMatchObject({
      status: 'failed',
      error: 'model not found',
    })
  })

  it('cancels a running job: its stream ends with an error and the node is told to stop', async () => {
    t = await startTestPlane()
    const a = await node('a')
    const jobId = await submit()
    await t.api('POST', '/v1/jobs/claim', { nodeId: a })
    const stream = await openStream(t, jobId)
    expect((await t.api('POST', `/v1/jobs/${jobId}/cancel`)).body).toMatchObject({ status: 'cancelled' })
    expect((await stream.events).map((e) => e.event)).toEqual(['error'])
    const late = await t.api<ErrorBody>('POST', `/v1/jobs/${jobId}/tokens`, {
      nodeId: a,
      tokens: [1],
      text: 'x',
    })
    expect(late.status).toBe(409)
    expect(late.body.error).toMatchObject({
      code: 'ERR_JOB_NOT_RUNNING',
      message: expect.stringContaining('cancelled'),
    })
    expect((await t.api<ErrorBody>('POST', `/v1/jobs/${jobId}/cancel`)).body.error.code).toBe(
      'ERR_JOB_FINISHED',
    )
    expect((await t.api('GET', '/v1/jobs/00000000-0000-4000-8000-000000000000')).status).toBe(404)
  })

  it('puts a job whose lease lapsed back in the queue, and fails it after the last attempt', async () => {
    t = await startTestPlane({ jobLeaseMs: 60_000, maxJobAttempts: 2 })
    const a = await node('a')
    const b = await node('b')
    const jobId = await submit()
    await t.api('POST', '/v1/jobs/claim', { nodeId: a })
    await t.api('POST', `/v1/jobs/${jobId}/tokens`, { nodeId: a, tokens: [1], text: 'x' })
    const stream = await openStream(t, jobId)

    t.clock.advance(59_000)
    expect((await t.api<JobBody>('GET', `/v1/jobs/${jobId}`)).body.status).toBe('running')
    // A token append renews the lease.
    await t.api('POST', `/v1/jobs/${jobId}/tokens`, { nodeId: a, tokens: [2], text: 'y' })
    t.clock.advance(59_000)
    expect((await t.api<JobBody>('GET', `/v1/jobs/${jobId}`)).body.status).toBe('running')
    t.clock.advance(2_000)
    const requeued = (await t.api<JobBody>('GET', `/v1/jobs/${jobId}`)).body
    expect(requeued).toMatchObject({
      status: 'queued',
      nodeId: null,
      attempts: 1,
      tokens: [],
      text: '',
      tokenCount: 0,
    })

    const late = await t.api<ErrorBody>('POST', `/v1/jobs/${jobId}/tokens`, {
      nodeId: a,
      tokens: [3],
      text: 'z',
    })
    expect(late.body.error.code).toBe('ERR_JOB_NOT_RUNNING')
    expect((await t.api<JobBody>('POST', '/v1/jobs/claim', { nodeId: b })).body).toMatchObject({
      id: jobId,
      nodeId: b,
      attempts: 2,
    })
    await t.api('POST', `/v1/jobs/${jobId}/tokens`, { nodeId: b, tokens: [9], text: 'again' })

    // The second lease lapses too: with maxJobAttempts 2 the job fails.
    t.clock.advance(61_000)
    const failed = (await t.api<JobBody>('GET', `/v1/jobs/${jobId}`)).body
    expect(failed.status).toBe('failed')
    expect(failed.error).toContain('lease expired 2 times')
    expect((await stream.events).map((e) => [e.event, e.data])).toEqual([
      ['token', { tokens: [1], text: 'x' }],
      ['token', { tokens: [2], text: 'y' }],
      ['requeued', { status: 'queued', attempts: 1 }],
      ['token', { tokens: [9], text: 'again' }],
      ['error', { status: 'failed', error: failed.error }],
    ])
  })

  it('gives pool jobs only to nodes in that pool’s ring', async () => {
    t = await startTestPlane()
    const p = await makeTestPool(join(t.dataDir, 'admin'), 'lab')
    const noPool = await t.api<ErrorBody>('POST', '/v1/jobs', {
      poolId: p.pool.id,
      prompt: 'x',
      maxTokens: 1,
    })
    expect(noPool.status).toBe(404)
    expect(noPool.body.error.code).toBe('ERR_POOL_NOT_FOUND')
    await registerPool(t, p)
    const member = t.identity()
    await t.api('POST', `/v1/rings/${p.pool.id}/join`, {
      nodeId: member.nodeId,
      addresses: [],
      capabilities: capabilities(),
      certificate: await p.certify(member),
    })
    const outsider = await node('outsider')
    const jobId = await submit({ poolId: p.pool.id, mode: 'pipeline' })

    expect((await t.api('POST', '/v1/jobs/claim', { nodeId: member.nodeId })).status).toBe(204)
    const refused = await t.api<ErrorBody>('POST', '/v1/jobs/claim', { nodeId: outsider, poolId: p.pool.id })
    expect(refused.status).toBe(403)
    expect(refused.body.error.code).toBe('ERR_NOT_RING_MEMBER')
    const unknown = await t.api<ErrorBody>('POST', '/v1/jobs/claim', { nodeId: t.identity().nodeId })
    expect(unknown.body.error.code).toBe('ERR_DEVICE_NOT_FOUND')
    const claimed = await t.api<JobBody>('POST', '/v1/jobs/claim', {
      nodeId: member.nodeId,
      poolId: p.pool.id,
    })
    expect(claimed.body).toMatchObject({ id: jobId, mode: 'pipeline', poolId: p.pool.id })
  })

  it('refuses a job with a bad field, naming it', async () => {
    t = await startTestPlane()
    const bad = await t.api<ErrorBody>('POST', '/v1/jobs', { prompt: 'x', maxTokens: 0, mode: 'turbo' })
    expect(bad.status).toBe(400)
    expect(bad.body.error.message).toContain('maxTokens')
    expect(bad.body.error.message).toContain('mode')
  })
})
