import { describe, expect, it } from 'vitest'
import { DASHBOARD_JOBS, JobTracker, type StoredJob } from '../src/jobs.ts'

const A = '12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
const B = '12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'
const C = '12D3KooWCccccccccccccccccccccccccccccccccccccccccccccc'

describe('JobTracker', () => {
  it('follows a job from its start through a failover to its end', () => {
    const tracker = new JobTracker()
    const start = tracker.apply({
      type: 'start',
      jobId: 'j1',
      at: 1000,
      origin: 'cli',
      mode: 'pipeline',
      poolId: 'p',
      promptTokens: 4,
    })
    expect(start).toMatchObject({
      type: 'start',
      job: { id: 'j1', status: 'running', origin: 'cli', tokens: 0 },
    })
    expect(tracker.apply({ type: 'members', jobId: 'j1', at: 1001, members: [A, B, C] })).toEqual({
      type: 'members',
      jobId: 'j1',
      members: [A, B, C],
      failover: null,
    })
    tracker.apply({ type: 'token', jobId: 'j1', at: 1500, index: 0, text: 'Hel' })
    const second = tracker.apply({ type: 'token', jobId: 'j1', at: 2000, index: 1, text: 'lo' })
    expect(second).toMatchObject({ type: 'token', index: 1, text: 'lo', tokensPerSecond: 2 })
    const moved = tracker.apply({
      type: 'members',
      jobId: 'j1',
      at: 2100,
      members: [A, B],
      failover: { dead: [C] },
    })
    expect(moved).toMatchObject({ failover: { dead: [C], atToken: 2 } })
    tracker.apply({ type: 'token', jobId: 'j1', at: 2500, index: 2, text: '!' })
    const [live] = tracker.jobs([])
    expect(live).toMatchObject({ text: 'Hello!', tokens: 3, timeToFirstTokenMs: 500, members: [A, B] })
    const end = tracker.apply({
      type: 'end',
      jobId: 'j1',
      at: 2600,
      status: 'completed',
      result: {
        mode: 'pipeline',
        jobId: 'j1',
        model: 'm',
        tokens: [1, 2, 3],
        text: 'Hello!',
        stopReason: 'maxTokens',
        stats: {
          totalMs: 1600,
          promptTokens: 4,
          failovers: 1,
          completionTokens: 3,
          tokensPerSecond: 2.5,
          timeToFirstTokenMs: 480,
          hopLatencyMs: 1.5,
          bytesMoved: 9000,
          members: [A, B],
        },
      },
    })
    expect(end).toMatchObject({
      type: 'end',
      job: {
        status: 'completed',
        tokens: 3,
        tokensPerSecond: 2.5,
        hopLatencyMs: 1.5,
        bytesMoved: 9000,
        failovers: [{ dead: [C] }],
      },
    })
  })

  it('ignores events of jobs it never saw start', () => {
    const tracker = new JobTracker()
    expect(tracker.apply({ type: 'token', jobId: 'nope', at: 1, index: 0, text: 'x' })).toBeUndefined()
    expect(tracker.jobs([])).toEqual([])
  })

  it('lists live jobs first, then stored ones it does not follow, at most the newest 50', () => {
    const tracker = new JobTracker()
    tracker.apply({
      type: 'start',
      jobId: 'live',
      at: 5000,
      origin: 'api',
      mode: 'single',
      poolId: null,
      promptTokens: 1,
    })
    const stored = (id: string, at: number): StoredJob => ({
      id,
      poolId: null,
      mode: 'single',
      status: 'completed',
      createdAt: at,
      error: null,
      stats: { origin: 'cli', completionTokens: 7, tokensPerSecond: 30, mode: 'single' },
    })
    const listed = tracker.jobs([
      stored('live', 5000),
      ...Array.from({ length: 60 }, (_, i) => stored(`old${i}`, 4000 - i)),
    ])
    expect(listed).toHaveLength(DASHBOARD_JOBS)
    expect(listed[0]!.id).toBe('live')
    expect(listed.filter((j) => j.id === 'live')).toHaveLength(1)
    expect(listed[1]).toMatchObject({ id: 'old0', origin: 'cli', tokens: 7, tokensPerSecond: 30 })
  })

  it('keeps only the end of a long text', () => {
    const tracker = new JobTracker()
    tracker.apply({
      type: 'start',
      jobId: 'j',
      at: 0,
      origin: 'cli',
      mode: 'single',
      poolId: null,
      promptTokens: 1,
    })
    for (let i = 0; i < 3000; i++)
      tracker.apply({ type: 'token', jobId: 'j', at: i, index: i, text: `${i % 10}x` })
    const [job] = tracker.jobs([])
    expect(job!.text.length).toBeLessThanOrEqual(4096)
    expect(job!.text.endsWith('9x')).toBe(true)
    expect(job!.tokens).toBe(3000)
  })
})
