import { describe, expect, it } from 'vitest'
import { healthOf, type ModelState, type RingMemberState, type RingState } from '../src/index.ts'

const A = '12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1111'
const B = '12D3KooWBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbabcd'
const C = '12D3KooWCcccccccccccccccccccccccccccccccccccccccc9999'

const whole: ModelState = { id: 'f'.repeat(64), name: 'tiny.gguf', known: true, whole: true }
const parts: ModelState = { ...whole, whole: false }

const member = (nodeId: string, shard: RingMemberState['shard'], epoch = 7): RingMemberState => ({
  nodeId,
  reports: { epoch, digest: epoch === 7 ? 'd7' : 'older' },
  shard,
})
const loaded = (layers: [number, number], bytes = 1000) => ({
  layers,
  load: 'ready' as const,
  bytes,
  loadedBytes: bytes,
})

/** A converged ring of A, B and C with a plan of three shards. */
const ringOf = (members: RingMemberState[], extra: Partial<RingState> = {}): RingState => ({
  poolId: 'pool-1',
  epoch: 7,
  digest: 'd7',
  converged: true,
  ready: members.every((m) => m.shard?.load === 'ready'),
  members,
  ...extra,
})

describe('healthOf', () => {
  it('finds a node with no ring and a whole model ready', () => {
    expect(healthOf({ model: whole, rings: [] })).toEqual({
      ready: true,
      missing: [],
      model: whole,
      rings: [],
    })
  })

  it('finds a ring ready once every planned member reports its shard loaded', () => {
    const ring = ringOf([member(A, loaded([0, 4])), member(B, loaded([4, 8])), member(C, loaded([8, 12]))])
    // Members holding only their shard are not whole, and need not be.
    const report = healthOf({ model: parts, rings: [ring] })
    expect(report.ready).toBe(true)
    expect(report.rings).toEqual([{ poolId: 'pool-1', epoch: 7, converged: true, ready: true, members: 3 }])
  })

  it('says a node that serves no model is not ready', () => {
    expect(healthOf({ model: undefined, rings: [] }).missing).toEqual([
      'this agent serves no model (start it with --model)',
    ])
  })

  it('says a model whose manifest is on its way is not ready', () => {
    const report = healthOf({ model: { id: 'abc', name: 'abc', known: false, whole: false }, rings: [] })
    expect(report.ready).toBe(false)
    expect(report.missing).toEqual(['model abc waiting for its manifest from pool members'])
  })

  it('names a ring that has not converged, and how many members agree', () => {
    const ring = ringOf([member(A, null), member(B, null), member(C, null, 6)], {
      converged: false,
      ready: false,
    })
    expect(healthOf({ model: whole, rings: [ring] }).missing).toEqual([
      'ring pool-1 not converged (2 of 3 members report epoch 7)',
    ])
  })

  it('names a ring that cannot plan the model, with the reason', () => {
    const ring = ringOf([member(A, null), member(B, null)], {
      ready: false,
      planProblem: 'not every member serves the same model',
    })
    expect(healthOf({ model: whole, rings: [ring] }).missing).toEqual([
      'ring pool-1 has no plan: not every member serves the same model',
    ])
  })

  it('names each shard that is not loaded, with how far it got', () => {
    const ring = ringOf([
      member(A, { layers: [0, 4], load: 'pending' }),
      member(B, { layers: [4, 8], load: 'loading', bytes: 1000, loadedBytes: 400 }),
      member(C, { layers: [8, 12], load: 'fetching', bytes: 5e9, loadedBytes: 2.1e9 }),
    ])
    expect(healthOf({ model: parts, rings: [ring] }).missing).toEqual([
      'shard of 12D3…1111 (layers 0–4) not announced yet',
      'shard of 12D3…abcd loading 40%',
      'shard of 12D3…9999 fetching 42% (2.1 of 5.0 GB)',
    ])
    const failed = ringOf([
      member(A, loaded([0, 6])),
      member(B, { layers: [6, 12], load: 'failed', bytes: 10, loadedBytes: 0, error: 'out of memory' }),
    ])
    expect(healthOf({ model: parts, rings: [failed] }).missing).toEqual([
      'shard of 12D3…abcd failed to load: out of memory',
    ])
  })

  it('needs the whole model where jobs run on it whole: a ring of one, and says how far its fetch is', () => {
    const alone = ringOf([member(A, { layers: [0, 12], load: 'pending' })])
    const fetch = { model: parts.id, doneBytes: 2.1e9, totalBytes: 5e9 }
    expect(healthOf({ model: parts, rings: [alone], fetch }).missing).toEqual([
      'model tiny.gguf fetching 2.1 of 5.0 GB',
    ])
    expect(healthOf({ model: parts, rings: [] }).missing).toEqual([
      'model tiny.gguf incomplete: some of its chunks are not on this node',
    ])
    expect(healthOf({ model: whole, rings: [alone] }).ready).toBe(true)
  })

  it('trusts the ring’s own verdict when it says not ready for a reason the members do not show', () => {
    const ring = ringOf([member(A, loaded([0, 6])), member(B, loaded([6, 12]))], { ready: false })
    expect(healthOf({ model: whole, rings: [ring] }).missing).toEqual(['ring pool-1 not ready'])
  })
})
