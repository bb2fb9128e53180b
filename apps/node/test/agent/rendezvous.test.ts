import { describe, expect, it } from 'vitest'
import {
  LOOKUP_ALONE_MAX_MS,
  LOOKUP_FIRST_MS,
  LOOKUP_MEMBER_MAX_MS,
  PROVIDE_AGAIN_MS,
  RendezvousSchedule,
} from '../../src/agent/rendezvous.ts'

describe('pool rendezvous schedule', () => {
  it('stores a provider record again only after it reached no server, or PROVIDE_AGAIN_MS after it did', () => {
    const schedule = new RendezvousSchedule()
    expect(schedule.provideDue('pool-a', 0)).toBe(true)
    schedule.provided('pool-a', 0, 0) // no DHT server yet, as at start
    expect(schedule.provideDue('pool-a', 1)).toBe(true)
    schedule.provided('pool-a', 3, 1_000)
    expect(schedule.provideDue('pool-a', 1_000 + PROVIDE_AGAIN_MS - 1)).toBe(false)
    expect(schedule.provideDue('pool-a', 1_000 + PROVIDE_AGAIN_MS)).toBe(true)
    // A pool joined later is due at once, whatever the others' records.
    expect(schedule.provideDue('pool-b', 2_000)).toBe(true)
  })

  it('backs lookups off to a minute while alone and to five minutes once a member is connected', () => {
    const schedule = new RendezvousSchedule()
    const waits = (n: number, memberConnected: boolean) =>
      Array.from({ length: n }, () => schedule.nextRoundMs(false, memberConnected))
    expect(waits(5, false)).toEqual([10_000, 20_000, 40_000, LOOKUP_ALONE_MAX_MS, LOOKUP_ALONE_MAX_MS])
    expect(waits(4, true)).toEqual([120_000, 240_000, LOOKUP_MEMBER_MAX_MS, LOOKUP_MEMBER_MAX_MS])
    // The last member went away: back under the cap for an agent alone.
    expect(waits(1, false)).toEqual([LOOKUP_ALONE_MAX_MS])
    // A lookup that found a member we were not connected to starts the backoff over.
    expect(schedule.nextRoundMs(true, true)).toBe(LOOKUP_FIRST_MS)
    expect(schedule.nextRoundMs(false, true)).toBe(2 * LOOKUP_FIRST_MS)
  })

  it('comes back sooner while a provide reaches no server, backing that off too, without resetting the lookups', () => {
    const schedule = new RendezvousSchedule()
    schedule.nextRoundMs(false, false) // lookups: 10 s
    schedule.provided('pool-a', 0, 0)
    expect(schedule.nextRoundMs(false, false)).toBe(LOOKUP_FIRST_MS)
    schedule.provided('pool-a', 2, 5_000)
    expect(schedule.nextRoundMs(false, false)).toBe(40_000)
  })

  it('lets an agent whose provides reach no server at all wake at most once a minute', () => {
    const schedule = new RendezvousSchedule()
    const waits = Array.from({ length: 7 }, () => {
      schedule.provided('pool-a', 0, 0)
      return schedule.nextRoundMs(false, false)
    })
    expect(waits).toEqual([
      5_000,
      10_000,
      20_000,
      40_000,
      LOOKUP_ALONE_MAX_MS,
      LOOKUP_ALONE_MAX_MS,
      LOOKUP_ALONE_MAX_MS,
    ])
    // Once a provide reaches a server, the next failure (a new pool, a lost DHT) starts over fast.
    schedule.provided('pool-a', 1, 0)
    schedule.nextRoundMs(false, false)
    schedule.provided('pool-b', 0, 0)
    expect(schedule.nextRoundMs(false, false)).toBe(LOOKUP_FIRST_MS)
  })
})
