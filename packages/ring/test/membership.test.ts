import { generateIdentity } from '@meshnet/identity'
import { describe, expect, it } from 'vitest'
import {
  type Announcement,
  type Beat,
  type Capabilities,
  decodeAnnouncement,
  encodeAnnouncement,
  type FullAnnouncement,
} from '../src/announcement.ts'
import { RingMembership } from '../src/membership.ts'

const caps = (capacityBytes = 1 << 30): Capabilities => ({
  capacityBytes,
  freeMemoryBytes: capacityBytes,
  computeScore: 1,
  engines: ['meshnet'],
  models: [],
})

/** A node: its membership plus a way to make its announcements. */
function node(clock: { t: number }) {
  const identity = generateIdentity()
  const membership = new RingMembership({
    self: { nodeId: identity.nodeId, addresses: [], capabilities: caps() },
    failureTimeoutMs: 3_000,
    now: () => clock.t,
  })
  let seq = 0
  const announce = (leaving = false): Announcement => ({
    v: 1,
    poolId: 'pool1',
    nodeId: identity.nodeId,
    publicKey: identity.publicKey,
    addresses: ['/ip4/127.0.0.1/tcp/1'],
    certificate: new Uint8Array(0),
    capabilities: caps(),
    seq: ++seq,
    view: membership.selfView,
    leaving,
  })
  return { identity, membership, announce }
}

/** Delivers every node's announcement to every other node, `rounds` times. */
function gossip(nodes: ReturnType<typeof node>[], rounds = 1) {
  for (let r = 0; r < rounds; r++) {
    const messages = nodes.map((n) => n.announce())
    for (const n of nodes) for (const m of messages) n.membership.apply(m)
  }
}

describe('RingMembership', () => {
  it('converges three nodes on one epoch and digest', () => {
    const clock = { t: 0 }
    const nodes = [node(clock), node(clock), node(clock)]
    gossip(nodes, 3)
    const views = nodes.map((n) => n.membership.view())
    expect(new Set(views.map((v) => `${v.epoch}/${v.digest}`)).size).toBe(1)
    expect(views.every((v) => v.converged && v.members.length === 3)).toBe(true)
    expect(views[0]!.members.map((m) => m.nodeId)).toEqual([...views[0]!.members.map((m) => m.nodeId)].sort())
  })

  it('moves to a new, higher epoch when a member leaves and converges again', () => {
    const clock = { t: 0 }
    const nodes = [node(clock), node(clock), node(clock)]
    gossip(nodes, 3)
    const before = nodes[0]!.membership.view().epoch
    const leaving = nodes[2]!.announce(true)
    for (const n of nodes.slice(0, 2)) n.membership.apply(leaving)
    gossip(nodes.slice(0, 2), 2)
    const views = nodes.slice(0, 2).map((n) => n.membership.view())
    expect(views.every((v) => v.converged && v.members.length === 2 && v.epoch > before)).toBe(true)
    expect(views[0]!.epoch).toBe(views[1]!.epoch)
  })

  it('drops a member that went silent past the failure timeout', () => {
    const clock = { t: 0 }
    const nodes = [node(clock), node(clock), node(clock)]
    gossip(nodes, 3)
    clock.t = 2_000
    gossip(nodes.slice(0, 2), 1)
    clock.t = 4_000
    expect(nodes[0]!.membership.expire()).toEqual([nodes[2]!.identity.nodeId])
    expect(nodes[1]!.membership.expire()).toEqual([nodes[2]!.identity.nodeId])
    gossip(nodes.slice(0, 2), 2)
    expect(nodes[0]!.membership.view()).toMatchObject({ converged: true })
    expect(nodes[0]!.membership.view().members).toHaveLength(2)
  })

  it('ignores replayed and older announcements', () => {
    const clock = { t: 0 }
    const [a, b] = [node(clock), node(clock)]
    const old = b.announce()
    const fresh = b.announce()
    expect(a.membership.apply(fresh)).toBe('changed')
    expect(a.membership.apply(old)).toBe('stale')
    expect(a.membership.apply(fresh)).toBe('stale')
  })

  it('takes a beat only from a member it holds the full announcement of', () => {
    const clock = { t: 0 }
    const [a, b] = [node(clock), node(clock)]
    const full = b.announce()
    const { addresses: _a, certificate: _c, capabilities: _k, ...rest } = b.announce() as FullAnnouncement
    const beat: Beat = { ...rest, beat: true }
    expect(a.membership.apply(beat)).toBe('unknown')
    // The beat did not use up b's sequence numbers: the full announcement sent before it counts.
    expect(a.membership.apply(full)).toBe('changed')
    expect(a.membership.apply({ ...beat, seq: beat.seq + 1 })).toBe('updated')
  })

  it('buries a member not heard from since the obituary, and keeps one heard from since', () => {
    const clock = { t: 0 }
    const [a, b, c] = [node(clock), node(clock), node(clock)]
    const fromB = b.announce()
    const fromC = c.announce()
    a.membership.apply(fromB)
    a.membership.apply(fromC)
    const later = c.announce()
    a.membership.apply(later)
    expect(
      a.membership.bury([
        { nodeId: b.identity.nodeId, seq: fromB.seq },
        { nodeId: c.identity.nodeId, seq: fromC.seq },
      ]),
    ).toBe(true)
    expect(a.membership.view().members.map((m) => m.nodeId)).toEqual(
      [a.identity.nodeId, c.identity.nodeId].sort(),
    )
    // What b said before its obituary stays buried; what it says after brings it back.
    expect(a.membership.apply(fromB)).toBe('stale')
    expect(a.membership.apply(b.announce())).toBe('changed')
  })

  it('knows it converged once every member reports its digest, on the highest epoch chosen', () => {
    const clock = { t: 0 }
    const nodes = [node(clock), node(clock), node(clock)]
    gossip(nodes, 1) // every node now holds all three, each on the epoch it chose
    const epochs = nodes.map((n) => n.membership.selfView.epoch)
    gossip(nodes, 1) // one round of reports: same digest everywhere, highest epoch adopted
    const views = nodes.map((n) => n.membership.view())
    expect(views.every((v) => v.converged)).toBe(true)
    expect(new Set(views.map((v) => v.epoch))).toEqual(new Set([Math.max(...epochs)]))
  })

  it('reports not converged while a member still reports another view', () => {
    const clock = { t: 0 }
    const [a, b] = [node(clock), node(clock)]
    a.membership.apply(b.announce())
    expect(a.membership.view().converged).toBe(false)
  })
})

describe('announcement encoding', () => {
  it('round-trips a signed announcement and rejects tampering, other pools and forged node ids', () => {
    const clock = { t: 0 }
    const a = node(clock)
    const announcement = a.announce()
    const data = encodeAnnouncement(a.identity, announcement)
    expect(decodeAnnouncement(data, 'pool1')).toEqual(announcement)
    expect(() => decodeAnnouncement(data, 'pool2')).toThrow(expect.objectContaining({ reason: 'wrong-pool' }))
    const tampered = Uint8Array.from(data)
    tampered[tampered.length - 70] = tampered[tampered.length - 70]! ^ 1
    expect(() => decodeAnnouncement(tampered, 'pool1')).toThrow(
      expect.objectContaining({ name: 'AnnouncementError' }),
    )
    const other = generateIdentity()
    const forged = encodeAnnouncement(other, { ...announcement })
    expect(() => decodeAnnouncement(forged, 'pool1')).toThrow(
      expect.objectContaining({ reason: 'bad-signature' }),
    )
    const mismatch = encodeAnnouncement(other, { ...announcement, publicKey: other.publicKey })
    expect(() => decodeAnnouncement(mismatch, 'pool1')).toThrow(
      expect.objectContaining({ reason: 'node-id-mismatch' }),
    )
  })

  it('checks the signature again unless the transport proved the announcement is its sender’s own', () => {
    const clock = { t: 0 }
    const a = node(clock)
    const data = Uint8Array.from(encodeAnnouncement(a.identity, a.announce()))
    data[data.length - 1] = data[data.length - 1]! ^ 1 // the last byte of the signature
    expect(() => decodeAnnouncement(data, 'pool1')).toThrow(
      expect.objectContaining({ reason: 'bad-signature' }),
    )
    expect(() => decodeAnnouncement(data, 'pool1', { origin: generateIdentity().nodeId })).toThrow(
      expect.objectContaining({ reason: 'bad-signature' }),
    )
    expect(decodeAnnouncement(data, 'pool1', { origin: a.identity.nodeId }).nodeId).toBe(a.identity.nodeId)
  })

  it('drops oversized and garbage input with a reason', () => {
    expect(() => decodeAnnouncement(new Uint8Array(20_000), 'p')).toThrow(
      expect.objectContaining({ reason: 'oversized' }),
    )
    expect(() => decodeAnnouncement(new Uint8Array([0xff, 0x00, 0x13]), 'p')).toThrow(
      expect.objectContaining({ reason: 'malformed' }),
    )
  })
})
