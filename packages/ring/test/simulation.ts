// A ring of many members in one process, over a deterministic simulated network: the real
// RingGossip (codec, membership, timers, want lists, obituaries, direct syncs) on simulated time,
// with a gossipsub-like delivery model. Used by the ring tests (64 members) and `pnpm bench ring`
// (64 and 256).
//
// The network: each member dials `dials` others at random (connections are two-way). A publish
// goes to every connected peer (gossipsub's flood publish); a member that accepts a message
// forwards it to its mesh peers (each member grafts `meshDegree` of its connections, gossipsub's
// D; mesh links are two-way), except the one it came from and the origin. Duplicates cost bytes
// but are dropped before the ring's validator, as gossipsub's seen-cache does. When a member
// starts, it and each started neighbour sync directly (what the agent does when a certificate
// exchange proves a member). Every hop takes `latencyMs` ± 50 %. A member marked `cut` sends and
// receives no gossip (gossipsub has no stream to it yet) but still syncs.
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { peerIdFromString } from '@libp2p/peer-id'
import { generateIdentity } from '@meshnet/identity'
import type { Capabilities } from '../src/announcement.ts'
import {
  type RingClock,
  RingGossip,
  type RingGossipInit,
  type RingPubsub,
  type RingSync,
} from '../src/gossip.ts'
import type { RingView } from '../src/membership.ts'
import { decodeSyncRequest } from '../src/sync.ts'

export interface SimulationInit {
  /** Members that start together. */
  members: number
  /** Peers each member dials. Default min(members - 1, 8). */
  dials?: number
  /** Peers each member grafts into its mesh (gossipsub D, as `ringPubsub` sets it). Default 4. */
  meshDegree?: number
  /** One-way latency of a hop. Default 2 ms. */
  latencyMs?: number
  /** Gossipsub framing per message on the wire (topic, from, seqno, signature, key). Default 180 B. */
  frameBytes?: number
  /** Size of each member's pool certificate. Default 330 B. */
  certificateBytes?: number
  seed?: number
  /** Ring options (intervals) for every member. */
  ring?: Pick<RingGossipInit, 'heartbeatMs' | 'fastHeartbeatMs' | 'maxHeartbeatMs' | 'failureTimeoutMs'>
}

/** Traffic between two points of a simulation, summed over members. */
export interface Traffic {
  /** Messages published (full announcements among them). */
  published: number
  full: number
  /** Transmissions (each copy on each link, duplicates included) and their bytes on the wire. */
  transmissions: number
  wireBytes: number
  /** Messages that reached a member's validator (first copies), and their bytes. */
  delivered: number
  payloadBytes: number
  /** Direct syncs (request and answer), and their bytes. */
  syncs: number
  syncBytes: number
}

export interface Convergence {
  /** Simulated milliseconds from the start of the phase to every member agreeing. */
  ms: number
  /** Longest causal chain of messages (publish → delivery → publish …) that led there. */
  rounds: number
  traffic: Traffic
  view: RingView
}

interface SimMember {
  index: number
  nodeId: string
  peerId: PeerId
  ring: RingGossip
  validate?: (peer: PeerId, message: never) => unknown
  neighbors: Set<number>
  mesh: number[]
  seen: Set<number>
  depth: number
  /** Started (subscribed): messages reach it. */
  started: boolean
  /** Not crashed. */
  up: boolean
  /** Gossip neither leaves nor reaches it (gossipsub has no stream to or from it yet); syncs do. */
  cut: boolean
  last: RingView | undefined
}

interface SimMessage {
  id: number
  origin: number
  data: Uint8Array
  depth: number
  /** The phase (`converge` call) it was sent in: rounds count within one phase. */
  phase: number
}

/** A binary heap of timers on simulated time. */
class SimClock implements RingClock {
  #now = 0
  #seq = 0
  readonly #heap: Array<{ at: number; seq: number; fn: () => void; cancelled: boolean }> = []

  now(): number {
    return this.#now
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const timer = { at: this.#now + Math.max(0, ms), seq: this.#seq++, fn: callback, cancelled: false }
    const heap = this.#heap
    heap.push(timer)
    for (let i = heap.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1
      if (before(heap[parent]!, heap[i]!)) break
      ;[heap[parent], heap[i]] = [heap[i]!, heap[parent]!]
      i = parent
    }
    return timer
  }

  clearTimeout(timer: unknown): void {
    if (timer !== undefined) (timer as { cancelled: boolean }).cancelled = true
  }

  /** Runs the next timer; false when none is left before `until`. */
  step(until: number): boolean {
    const heap = this.#heap
    while (heap.length > 0) {
      const top = heap[0]!
      if (top.at > until) return false
      const last = heap.pop()!
      if (heap.length > 0) {
        heap[0] = last
        for (let i = 0; ; ) {
          const l = 2 * i + 1
          const r = l + 1
          let m = i
          if (l < heap.length && before(heap[l]!, heap[m]!)) m = l
          if (r < heap.length && before(heap[r]!, heap[m]!)) m = r
          if (m === i) break
          ;[heap[m], heap[i]] = [heap[i]!, heap[m]!]
          i = m
        }
      }
      if (top.cancelled) continue
      this.#now = top.at
      top.fn()
      return true
    }
    return false
  }

  advanceTo(at: number): void {
    this.#now = Math.max(this.#now, at)
  }
}

const before = (a: { at: number; seq: number }, b: { at: number; seq: number }) =>
  a.at < b.at || (a.at === b.at && a.seq < b.seq)

/** A deterministic pseudo-random generator (mulberry32). */
function random(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32
  }
}

type PeerId = ReturnType<typeof peerIdFromString>

const POOL = 'sim-pool'

/** A simulated ring: build it, `start()`, then run phases and read their convergence. */
export class RingSimulation {
  readonly clock = new SimClock()
  readonly members: SimMember[] = []
  readonly #byId = new Map<string, SimMember>()
  readonly #init: Required<Omit<SimulationInit, 'ring'>> & Pick<SimulationInit, 'ring'>
  readonly #random: () => number
  readonly #traffic: Traffic = {
    published: 0,
    full: 0,
    transmissions: 0,
    wireBytes: 0,
    delivered: 0,
    payloadBytes: 0,
    syncs: 0,
    syncBytes: 0,
  }
  #messages = 0
  #phase = 0
  /** A sync answer was handed over: let its continuation run before the next timer. */
  #settle = false
  #agreeing = 0
  #live = 0

  constructor(init: SimulationInit) {
    this.#init = {
      dials: Math.min(init.members - 1, 8),
      meshDegree: 4,
      latencyMs: 2,
      frameBytes: 180,
      certificateBytes: 330,
      seed: 1,
      ...init,
    }
    this.#random = random(this.#init.seed)
    for (let i = 0; i < init.members; i++) this.#add()
    for (const member of this.members) this.#dial(member)
    for (const member of this.members) this.#pickMesh(member)
  }

  /** Traffic so far (copy it before and after a phase). */
  traffic(): Traffic {
    const full = this.members.reduce((sum, m) => sum + m.ring.stats().sent.full, 0)
    return { ...this.#traffic, full }
  }

  /** Live members. */
  live(): SimMember[] {
    return this.members.filter((m) => m.up)
  }

  /**
   * Starts every member, at random times within `spreadMs` (as agents come up one after another):
   * what a member publishes before its peers have started is lost, and each start nudges the
   * started peers it connects to, as the agent does when a member subscribes.
   */
  start(spreadMs = 0): void {
    for (const member of this.members) {
      if (spreadMs === 0) this.#startMember(member)
      else this.clock.setTimeout(() => this.#startMember(member), this.#random() * spreadMs)
    }
  }

  /**
   * Runs until every live member reports the same converged view of all live members, or
   * `limitMs` of simulated time pass (then throws, with what was seen).
   */
  async converge(limitMs = 600_000, begin?: () => void): Promise<Convergence> {
    const startedAt = this.clock.now()
    const trafficBefore = this.traffic()
    begin?.()
    for (const m of this.members) m.depth = 0
    this.#phase++
    const deadline = startedAt + limitMs
    let steps = 0
    while (!this.#agreed()) {
      if (!this.clock.step(deadline)) {
        const sizes = this.live().map((m) => m.last?.members.length ?? 0)
        throw new Error(
          `no agreement in ${limitMs / 1000} simulated s: ${this.#agreeing}/${this.live().length} agree; ring sizes ${Math.min(...sizes)}..${Math.max(...sizes)}`,
        )
      }
      if (++steps % 512 === 0 || this.#settle) await this.#flush()
    }
    await this.#flush()
    const after = this.traffic()
    return {
      ms: this.clock.now() - startedAt,
      rounds: Math.max(...this.live().map((m) => m.depth)),
      traffic: diff(after, trafficBefore),
      view: this.live()[0]!.last!,
    }
  }

  /** Runs `ms` of simulated time. */
  async run(ms: number): Promise<Traffic> {
    const before = this.traffic()
    const until = this.clock.now() + ms
    let steps = 0
    while (this.clock.step(until)) {
      if (++steps % 512 === 0 || this.#settle) await this.#flush()
    }
    this.clock.advanceTo(until)
    await this.#flush()
    return diff(this.traffic(), before)
  }

  /** A new member: dials `dials` live members and starts. */
  join(): SimMember {
    const member = this.#add()
    this.#dial(member)
    this.#pickMesh(member)
    this.#recount()
    this.#startMember(member)
    return member
  }

  /** A member that dies without a word: its connections close, its neighbours suspect it. */
  crash(member: SimMember): void {
    member.up = false
    this.#live--
    // Its timers keep firing into nothing: a dead member publishes nothing.
    for (const n of member.neighbors) {
      const peer = this.members[n]!
      peer.neighbors.delete(member.index)
      peer.mesh = peer.mesh.filter((i) => i !== member.index)
      if (peer.up) peer.ring.peerDisconnected(member.nodeId)
    }
    member.neighbors.clear()
    member.mesh = []
    // Gossipsub grafts new mesh peers at its next heartbeat.
    for (const peer of this.live()) if (peer.mesh.length < this.#init.meshDegree) this.#pickMesh(peer)
    this.#recount()
  }

  async stop(): Promise<void> {
    for (const member of this.members) {
      member.up = false
      await member.ring.stop()
    }
  }

  #add(): SimMember {
    const index = this.members.length
    const identity = generateIdentity()
    const capabilities: Capabilities = {
      capacityBytes: 8 * 2 ** 30,
      freeMemoryBytes: 6 * 2 ** 30,
      computeScore: 1.5,
      engines: ['meshnet', 'llama-cpp'],
      models: [{ name: 'llama-3.2-1b-q8.gguf', sha256: 'a'.repeat(64), bytes: 1_300_000_000 }],
    }
    const certificate = new Uint8Array(this.#init.certificateBytes).fill(index & 0xff)
    const member: SimMember = {
      index,
      nodeId: identity.nodeId,
      peerId: peerIdFromString(identity.nodeId),
      ring: undefined as unknown as RingGossip,
      neighbors: new Set(),
      mesh: [],
      seen: new Set(),
      depth: 0,
      started: false,
      up: true,
      cut: false,
      last: undefined,
    }
    const pubsub: RingPubsub = {
      topicValidators: new Map(),
      subscribe: () => {},
      unsubscribe: () => {},
      publish: async (_topic, data) => {
        if (member.up && data !== undefined) this.#publish(member, data)
        return { recipients: [] }
      },
    }
    const sync: RingSync = (nodeId, request) =>
      new Promise((resolve, reject) => {
        const peer = this.#byId.get(nodeId)
        const depth = member.depth + 1
        const phase = this.#phase
        const inPhase = (d: number) => (phase === this.#phase ? d : 1)
        this.#traffic.syncs++
        this.#traffic.syncBytes += request.length + this.#init.frameBytes
        this.clock.setTimeout(() => {
          if (peer === undefined || !peer.up || !member.up) {
            this.#settle = true
            reject(new Error('not connected'))
            return
          }
          peer.depth = Math.max(peer.depth, inPhase(depth))
          let answer: Uint8Array
          try {
            answer = peer.ring.answerSync(decodeSyncRequest(request), member.nodeId)
          } catch (err) {
            this.#settle = true
            reject(err)
            return
          }
          this.#traffic.syncBytes += answer.length + this.#init.frameBytes
          const answerDepth = peer.depth + 1
          this.clock.setTimeout(() => {
            member.depth = Math.max(member.depth, inPhase(answerDepth))
            this.#settle = true
            resolve(answer)
          }, this.#latency())
        }, this.#latency())
      })
    member.ring = new RingGossip(
      {
        poolId: POOL,
        identity,
        certificate,
        capabilities,
        addresses: () => [`/ip4/10.0.${index >> 8}.${index & 0xff}/tcp/4001/p2p/${identity.nodeId}`],
        verifyMember: () => undefined,
        ...this.#init.ring,
      },
      { pubsub, sync, clock: this.clock },
    )
    member.validate = (peer, message) =>
      pubsub.topicValidators.get(member.ring.topic)?.(peer, message as never)
    member.ring.addEventListener('view', (event) => {
      const view = (event as CustomEvent<RingView>).detail
      if (!member.up) return
      const was = member.last !== undefined && this.#agrees(member, member.last)
      member.last = view
      const is = this.#agrees(member, view)
      this.#agreeing += Number(is) - Number(was)
    })
    this.members.push(member)
    this.#byId.set(member.nodeId, member)
    this.#live++
    return member
  }

  async #flush(): Promise<void> {
    this.#settle = false
    await new Promise((resolve) => setImmediate(resolve))
  }

  #startMember(member: SimMember): void {
    if (!member.up || member.started) return
    member.started = true
    // Rounds count from the moment the last member is up.
    if (this.members.every((m) => m.started || !m.up)) for (const m of this.members) m.depth = 0
    member.ring.start()
    // What the agent does when a member connects (both sides prove their certificates: each
    // syncs with the other) and subscribes (the others announce).
    for (const n of member.neighbors) {
      const peer = this.members[n]!
      if (!peer.started || !peer.up) continue
      member.ring.memberConnected(peer.nodeId)
      peer.ring.memberConnected(member.nodeId)
      peer.ring.nudge()
    }
  }

  #recount(): void {
    this.#agreeing = this.live().filter((m) => m.last !== undefined && this.#agrees(m, m.last)).length
  }

  #agrees(member: SimMember, view: RingView): boolean {
    return member.up && view.converged && view.members.length === this.#live
  }

  #agreed(): boolean {
    const live = this.live()
    if (this.#agreeing !== live.length) return false
    // Recount (the live count changes under joins and crashes) and check one epoch and digest.
    const views = live.map((m) => m.last)
    return (
      views.every((v) => v?.converged && v.members.length === live.length) &&
      new Set(views.map((v) => `${v!.epoch}/${v!.digest}`)).size === 1
    )
  }

  #dial(member: SimMember): void {
    const candidates = this.members.filter((m) => m !== member && m.up).map((m) => m.index)
    for (let k = 0; k < this.#init.dials && candidates.length > 0; k++) {
      const [pick] = candidates.splice(Math.floor(this.#random() * candidates.length), 1)
      member.neighbors.add(pick!)
      this.members[pick!]!.neighbors.add(member.index)
    }
  }

  /** Grafts up to `meshDegree` of a member's connections into its mesh; mesh links are two-way. */
  #pickMesh(member: SimMember): void {
    const candidates = [...member.neighbors].filter((n) => !member.mesh.includes(n))
    while (member.mesh.length < this.#init.meshDegree && candidates.length > 0) {
      const [pick] = candidates.splice(Math.floor(this.#random() * candidates.length), 1)
      member.mesh.push(pick!)
      const peer = this.members[pick!]!
      if (!peer.mesh.includes(member.index)) peer.mesh.push(member.index)
    }
  }

  #publish(member: SimMember, data: Uint8Array): void {
    const message: SimMessage = {
      id: this.#messages++,
      origin: member.index,
      data,
      depth: member.depth + 1,
      phase: this.#phase,
    }
    this.#traffic.published++
    member.seen.add(message.id)
    for (const n of member.neighbors) this.#send(member.index, n, message)
  }

  #send(from: number, to: number, message: SimMessage): void {
    if (!this.members[to]!.started) return // not subscribed yet: gossipsub sends it nothing
    if (this.members[to]!.cut || this.members[from]!.cut) return
    this.#traffic.transmissions++
    this.#traffic.wireBytes += message.data.length + this.#init.frameBytes
    this.clock.setTimeout(() => this.#deliver(to, message, from), this.#latency())
  }

  #latency(): number {
    return this.#init.latencyMs * (0.5 + this.#random())
  }

  #deliver(to: number, message: SimMessage, from: number): void {
    const member = this.members[to]!
    if (!member.up || member.seen.has(message.id)) return
    member.seen.add(message.id)
    member.depth = Math.max(member.depth, message.phase === this.#phase ? message.depth : 1)
    this.#traffic.delivered++
    this.#traffic.payloadBytes += message.data.length
    const origin = this.members[message.origin]!
    const result = member.validate?.(member.peerId, {
      type: 'signed',
      from: origin.peerId,
      topic: member.ring.topic,
      data: message.data,
      sequenceNumber: BigInt(message.id),
      signature: new Uint8Array(64),
      key: origin.peerId.publicKey,
    } as never)
    if (result !== TopicValidatorResult.Accept) return
    for (const n of member.mesh) {
      if (n !== from && n !== message.origin && member.neighbors.has(n)) this.#send(to, n, message)
    }
  }
}

function diff(a: Traffic, b: Traffic): Traffic {
  return {
    published: a.published - b.published,
    full: a.full - b.full,
    transmissions: a.transmissions - b.transmissions,
    wireBytes: a.wireBytes - b.wireBytes,
    delivered: a.delivered - b.delivered,
    payloadBytes: a.payloadBytes - b.payloadBytes,
    syncs: a.syncs - b.syncs,
    syncBytes: a.syncBytes - b.syncBytes,
  }
}
