import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MEMBERS_PER_INTERVAL } from '../src/gossip.ts'
import { type Convergence, RingSimulation } from './simulation.ts'

// The real ring gossip of 64 members on a simulated network (see simulation.ts). What is counted
// here is messages and rounds, never seconds. The tests share one ring and run in order: it
// starts, rests, takes a newcomer, loses a member.
const N = 64

describe('a ring of 64 members', () => {
  let sim: RingSimulation
  let start: Convergence
  beforeAll(async () => {
    sim = new RingSimulation({ members: N })
    start = await sim.converge(60_000, () => sim.start())
  })
  afterAll(async () => {
    await sim.stop()
  })

  it('agrees on one ring when every member starts at once, with a few messages each', () => {
    expect(start.view.members).toHaveLength(N)
    // Each member's full announcement (lost on members not started yet), a direct sync with each
    // neighbour that started before it and with a few that reported another view, and a beat or
    // two with the view they come to hold.
    expect(start.traffic.published / N).toBeLessThanOrEqual(5)
    expect(start.traffic.full / N).toBeLessThanOrEqual(2)
    expect(start.traffic.syncs / N).toBeLessThanOrEqual(10)
  })

  it(`at rest a member hears about ${MEMBERS_PER_INTERVAL} beats per 2 s heartbeat, not one per member`, async () => {
    await sim.run(20_000) // backs off to the at-rest interval
    const window = 3 * 2_000 * (N / MEMBERS_PER_INTERVAL) // three of the stretched intervals
    const rest = await sim.run(window)
    expect(rest.full).toBe(0)
    const heardPerHeartbeat = rest.delivered / N / (window / 2_000)
    expect(heardPerHeartbeat).toBeGreaterThan(MEMBERS_PER_INTERVAL * 0.8)
    expect(heardPerHeartbeat).toBeLessThan(MEMBERS_PER_INTERVAL * 1.2)
  })

  it('a newcomer learns the ring from the members it connects to, and the ring learns it', async () => {
    const join = await sim.converge(60_000, () => sim.join())
    expect(join.view.members).toHaveLength(N + 1)
    // Its own full announcement reaches every member; its neighbours hand it the records it lacks
    // in their sync answers, so nobody announces in full again for it.
    expect(join.traffic.full).toBeLessThanOrEqual(3)
    expect(join.traffic.syncs).toBeLessThanOrEqual(4 * 8)
    expect(join.rounds).toBeLessThan(20)
  })

  it('a member that crashes is buried ring-wide on the obituary of its neighbours', async () => {
    await sim.run(20_000)
    const dead = sim.members[10]!
    const neighbours = new Set(dead.neighbors)
    const crash = await sim.converge(60_000, () => sim.crash(dead))
    expect(crash.view.members).toHaveLength(N)
    expect(crash.view.members.map((m) => m.nodeId)).not.toContain(dead.nodeId)
    // Members not connected to it did not wait for their failure timeout: they took the obituary.
    const others = sim.live().filter((m) => !neighbours.has(m.index))
    expect(others.length).toBeGreaterThan(0)
    expect(others.every((m) => m.ring.stats().buried === 1)).toBe(true)
    expect(crash.rounds).toBeLessThan(30)
  })
})

describe('a ring of members coming up one after another', () => {
  it('agrees once all are up, with a few full announcements per member', async () => {
    const sim = new RingSimulation({ members: 32, seed: 7 })
    try {
      // Announcements to members not up yet are lost; nudges and want lists make up for them.
      const start = await sim.converge(60_000, () => sim.start(1_000))
      expect(start.view.members).toHaveLength(32)
      expect(start.traffic.full / 32).toBeLessThan(3)
      expect(start.traffic.published / 32).toBeLessThan(8)
    } finally {
      await sim.stop()
    }
  })
})

describe('a ring whose gossip has not reached everyone', () => {
  it('agrees through direct syncs with the members each one is connected to', async () => {
    // What 16 agents starting together on one machine go through: each is connected to the
    // others and has proved its certificate, but gossipsub opens its streams one peer at a time.
    const sim = new RingSimulation({ members: 16, dials: 15, seed: 9 })
    try {
      for (const member of sim.members.slice(0, 6)) member.cut = true
      const start = await sim.converge(60_000, () => sim.start())
      expect(start.view.members).toHaveLength(16)
      const cut = sim.members.slice(0, 6).map((m) => m.ring.stats())
      expect(cut.every((s) => s.received.messages === 0 && s.syncs.records > 0)).toBe(true)
    } finally {
      await sim.stop()
    }
  })
})
