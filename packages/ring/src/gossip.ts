import { type GossipSub, type Message, TopicValidatorResult } from '@libp2p/gossipsub'
import { type Logger, silentLogger } from '@meshnet/core'
import type { NodeIdentity } from '@meshnet/identity'
import { sha256 } from '@noble/hashes/sha2.js'
import { bytesToHex } from '@noble/hashes/utils.js'
import {
  type Announcement,
  AnnouncementError,
  type Capabilities,
  decodeAnnouncement,
  encodeAnnouncement,
  type FullAnnouncement,
  isFullAnnouncement,
  MAX_WANTED,
  WANT_ID_CHARS,
} from './announcement.ts'
import { RingMembership, type RingView } from './membership.ts'
import {
  decodeSyncAnswer,
  encodeSyncAnswer,
  encodeSyncRequest,
  MAX_SYNC_RECORDS,
  type SyncRequest,
} from './sync.ts'

/**
 * The gossipsub topic of a pool's ring. 2.0.0: beats, want lists and obituaries beside full
 * announcements (1.0.0 carried full announcements only).
 */
export function ringTopic(poolId: string): string {
  return `/meshnet/ring/2.0.0/${poolId}`
}

/**
 * Up to this many members, beats keep the configured intervals; a ring of n members stretches
 * them by n / 16, so that what each member receives at rest stays about 16 beats per interval
 * however large the ring grows.
 */
export const MEMBERS_PER_INTERVAL = 16
/** A change is announced this long after it happened, so that a burst of changes is one beat. */
const CHANGE_DEBOUNCE_MS = 20
/**
 * Messages of one member are at least this far apart (stretched like the intervals), so that
 * members arriving one after another cost a few beats, not one each.
 */
const MESSAGE_GAP_MS = 100
/** How long a newcomer (a nudge) keeps beats at the fast interval. */
const NUDGE_FAST_MS = 2_000
/** A wanted member is asked for in this many beats, then forgotten until it beats again. */
const WANT_ASKS = 3
/** Members remembered as wanted at once (beats of unknown senders are not otherwise bounded). */
const MAX_WANTS = 1_024
/** Direct syncs in flight at once, and how long one may take. */
const MAX_SYNCS = 4
const SYNC_TIMEOUT_MS = 5_000
/** Messages recognised without decoding them again (by hash), at most this many. */
const MAX_SEEN = 8_192
/** A member's certificate, once `verifyMember` accepted it, is taken again for this long. */
const VERIFIED_MS = 5_000
/** A member whose sync failed (an older agent, a stream refused) is not asked again for this long. */
const SYNC_RETRY_MS = 10_000

export interface RingGossipInit {
  poolId: string
  identity: NodeIdentity
  /** This node's pool certificate, carried in every full announcement. */
  certificate: Uint8Array
  capabilities: Capabilities
  /** This node's current dialable addresses. */
  addresses: () => string[]
  /**
   * Checks a full announcement's certificate against the pool (signature, expiry, revocation,
   * that it belongs to the announcing key). Returns a reason to refuse it, or undefined to accept.
   */
  verifyMember: (announcement: FullAnnouncement) => string | undefined
  /**
   * Longest beat interval once the ring has converged (beats back off from the fast interval to
   * this one), for rings of up to 16 members; larger rings stretch it by n / 16. Default 2000 ms.
   */
  heartbeatMs?: number
  /**
   * Beat interval while the view settles, for up to 16 members (stretched alike). Changes are
   * announced at once and connected members sync directly: these beats only make up for losses.
   * Default 1000 ms.
   */
  fastHeartbeatMs?: number
  /** No beat interval grows past this, however large the ring. Default 60 000 ms. */
  maxHeartbeatMs?: number
  /** A member whose connection closed is dropped after this long unless it announces. Default 1000 ms. */
  suspectMs?: number
  /**
   * A member not heard from for this long is dropped. Default 5 × heartbeatMs (10 s), stretched
   * with the beat interval in rings of more than 16: generous, because a crashed member is caught
   * within `suspectMs` of its connection closing and its obituary reaches the others; this timeout
   * is for silent failures, and a short one makes busy machines churn.
   */
  failureTimeoutMs?: number
  logger?: Logger
}

/** The part of a gossipsub service the ring uses (a simulated network may stand in for it). */
export type RingPubsub = Pick<GossipSub, 'topicValidators' | 'subscribe' | 'unsubscribe' | 'publish'>

/**
 * Sends a ring sync request to a connected member over `RING_SYNC_PROTOCOL` and resolves with its
 * answer (the other side calls `answerSync`).
 */
export type RingSync = (
  nodeId: string,
  request: Uint8Array,
  options: { signal: AbortSignal },
) => Promise<Uint8Array>

/** Time and timers the ring runs on. Default: the process's. */
export interface RingClock {
  now(): number
  setTimeout(callback: () => void, ms: number): unknown
  clearTimeout(timer: unknown): void
}

const processClock: RingClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
}

export interface RingGossipComponents {
  pubsub: RingPubsub
  /** Direct sync with connected members; without it the ring relies on gossip alone. */
  sync?: RingSync
  clock?: RingClock
}

export interface RingGossipStats {
  /** Times something outside the ring (a member connecting, subscribing) asked for the fast interval. */
  nudges: number
  /** Views emitted (changes of epoch, digest or convergence). */
  viewChanges: number
  /** Messages published; `full` of them full announcements, the rest beats. */
  sent: { messages: number; bytes: number; full: number }
  received: { messages: number; bytes: number; accepted: number }
  /** Direct syncs: asked (and failed), answered, and records they brought. */
  syncs: { asked: number; failed: number; answered: number; records: number; bytes: number }
  /** Full announcements asked for by want lists (ours sent because of them). */
  wanted: number
  /** Members dropped on another member's obituary. */
  buried: number
  dropped: Record<string, number>
}

/** Emitted whenever the view (members, epoch, convergence) changes. */
export type RingViewEvent = CustomEvent<RingView>

/**
 * Gossips a pool's ring on its topic, syncs directly with connected members, and keeps the ring
 * view. Start and stop it; listen for `view` events.
 *
 * What goes out on the topic: a full announcement (certificate, capabilities, addresses, view)
 * when this node starts, when its record changes, when a newcomer appears (`nudge`) and when
 * another member asks for it; otherwise beats (the view only, about 300 bytes): at once after the
 * view changes, every fast interval while it settles, then backing off to the heartbeat interval at
 * rest. A beat from a node whose full announcement we lack puts it on our want list, which our next
 * beat carries. Directly: when a member connects, and each fast interval while the view settles
 * (with one connected member whose view differs), a push-pull sync exchanges fresh announcements
 * and the records the other lacks, so the ring agrees even before gossip has a path to everyone.
 */
export class RingGossip extends EventTarget {
  readonly topic: string
  readonly #init: RingGossipInit
  readonly #pubsub: RingPubsub
  readonly #sync: RingSync | undefined
  readonly #clock: RingClock
  readonly #membership: RingMembership
  readonly #logger: Logger
  readonly #heartbeatMs: number
  readonly #fastHeartbeatMs: number
  readonly #maxHeartbeatMs: number
  readonly #failureTimeoutMs: number
  readonly #stats: RingGossipStats = {
    nudges: 0,
    viewChanges: 0,
    sent: { messages: 0, bytes: 0, full: 0 },
    received: { messages: 0, bytes: 0, accepted: 0 },
    syncs: { asked: 0, failed: 0, answered: 0, records: 0, bytes: 0 },
    wanted: 0,
    buried: 0,
    dropped: {},
  }
  #timer: unknown
  #tickAt = 0
  #soon: unknown
  #full: unknown
  #fullAt = 0
  #running = false
  #fastUntil = 0
  /** Current at-rest interval: doubles with each beat while settled, back to fast on a change. */
  #restMs = 0
  #lastFullAt = Number.NEGATIVE_INFINITY
  #lastSentAt = Number.NEGATIVE_INFINITY
  #lastAddresses = ''
  /** What our record says (addresses, capabilities), and the seq of the announcement that first said it. */
  #recordKey = ''
  #recordSeq: number | undefined
  /** Senders of beats whose full announcement we lack, and how many beats asked for them. */
  readonly #wants = new Map<string, number>()
  /** Each member's latest full announcement as signed (ours included), for syncs to hand on. */
  readonly #records = new Map<string, { seq: number; bytes: Uint8Array }>()
  /** Each member's latest message as signed (a beat or a full one), for syncs to hand on. */
  readonly #latest = new Map<string, { seq: number; bytes: Uint8Array }>()
  /** Hashes of messages taken in (or found stale): a copy from another sync is not decoded. */
  readonly #seen = new Set<string>()
  /** Certificates `verifyMember` accepted, by member, and until when that holds. */
  readonly #verified = new Map<string, { certificate: Uint8Array; until: number }>()
  /** Members connected to this node (proven), and when we last synced with each. */
  readonly #direct = new Map<string, number>()
  #syncing = 0
  readonly #suspects = new Map<string, unknown>()
  readonly #suspectMs: number
  readonly #random: () => number
  #lastEmitted = ''
  #capabilities: Capabilities

  constructor(init: RingGossipInit, components: RingGossipComponents) {
    super()
    this.#init = init
    this.#pubsub = components.pubsub
    this.#sync = components.sync
    this.#clock = components.clock ?? processClock
    this.topic = ringTopic(init.poolId)
    this.#logger = init.logger ?? silentLogger()
    this.#capabilities = init.capabilities
    this.#heartbeatMs = init.heartbeatMs ?? 2_000
    this.#fastHeartbeatMs = init.fastHeartbeatMs ?? 1_000
    this.#maxHeartbeatMs = init.maxHeartbeatMs ?? 60_000
    this.#failureTimeoutMs = init.failureTimeoutMs ?? 5 * this.#heartbeatMs
    this.#suspectMs = init.suspectMs ?? 1_000
    this.#random = randomOf(init.identity.nodeId)
    this.#membership = new RingMembership({
      self: { nodeId: init.identity.nodeId, addresses: init.addresses(), capabilities: init.capabilities },
      failureTimeoutMs: this.#failureTimeoutMs,
      now: () => this.#clock.now(),
    })
  }

  view(): RingView {
    return this.#membership.view()
  }

  stats(): RingGossipStats {
    return structuredClone(this.#stats)
  }

  start(): void {
    if (this.#running) return
    this.#running = true
    this.#pubsub.topicValidators.set(this.topic, (_peer, message) => this.#validate(message))
    this.#pubsub.subscribe(this.topic)
    this.#restMs = this.#fastMs()
    void this.#publish('full')
    this.#plan(this.#fastMs())
  }

  /** Announces that this node leaves (so peers re-plan at once), then stops. */
  async stop(): Promise<void> {
    if (!this.#running) return
    this.#running = false
    this.#clock.clearTimeout(this.#timer)
    this.#clock.clearTimeout(this.#soon)
    this.#clock.clearTimeout(this.#full)
    this.#soon = undefined
    this.#full = undefined
    for (const timer of this.#suspects.values()) this.#clock.clearTimeout(timer)
    this.#suspects.clear()
    await this.#publish('beat', true).catch(() => {})
    this.#pubsub.unsubscribe(this.topic)
    this.#pubsub.topicValidators.delete(this.topic)
  }

  /**
   * A peer proved its membership of this pool on a connection to us: sync with it now, so that
   * each side holds the other's ring without waiting for gossip to reach it.
   */
  memberConnected(nodeId: string): void {
    this.peerConnected(nodeId)
    if (nodeId === this.#init.identity.nodeId) return
    if (!this.#direct.has(nodeId)) this.#direct.set(nodeId, Number.NEGATIVE_INFINITY)
    this.#syncWith(nodeId)
  }

  /**
   * Tells the ring a peer's last connection closed. The member is dropped after `suspectMs`
   * unless it announces again (or reconnects) in the meantime, so a crashed member leaves the ring
   * in about a second while a connection that is merely replaced causes no new epoch.
   */
  peerDisconnected(nodeId: string): void {
    this.#direct.delete(nodeId)
    if (!this.#membership.has(nodeId) || this.#suspects.has(nodeId)) return
    const since = this.#clock.now()
    this.#suspects.set(
      nodeId,
      this.#clock.setTimeout(() => {
        this.#suspects.delete(nodeId)
        const lastSeen = this.#membership.lastSeen(nodeId)
        if (lastSeen !== undefined && lastSeen <= since && this.#membership.remove(nodeId)) {
          this.#logger.info({ nodeId }, 'ring member disconnected and silent; dropped')
          this.#afterChange()
        }
      }, this.#suspectMs),
    )
  }

  /**
   * Drops a member at once because it may no longer take part (its certificate was revoked or
   * expired); its later announcements are refused by `verifyMember`.
   */
  evict(nodeId: string, reason: string): void {
    this.#verified.delete(nodeId)
    this.#clock.clearTimeout(this.#suspects.get(nodeId))
    this.#suspects.delete(nodeId)
    this.#direct.delete(nodeId)
    if (this.#membership.remove(nodeId)) {
      this.#logger.info({ nodeId, reason }, 'ring member lost the pool; dropped')
      this.#afterChange()
    }
  }

  /** The peer connected again: it is no longer suspected. */
  peerConnected(nodeId: string): void {
    this.#clock.clearTimeout(this.#suspects.get(nodeId))
    this.#suspects.delete(nodeId)
  }

  /**
   * Something changed outside the ring (a member connected, subscribed, proved its certificate):
   * beat soon and keep the fast interval for two seconds, so that a newcomer hears from us (and
   * asks for our record if it lacks it) before the next at-rest beat. Naming the peer lets a
   * member that already reports our view (a connection replaced, a stream reopened) cost nothing.
   */
  nudge(nodeId?: string): void {
    if (!this.#running) return
    if (nodeId !== undefined) {
      // A member that already reports our view has nothing to learn from us.
      const reported = this.#membership.reported(nodeId)
      const { epoch, digest } = this.#membership.selfView
      if (reported !== undefined && reported.epoch === epoch && reported.digest === digest) return
    }
    this.#stats.nudges++
    this.#fastUntil = this.#clock.now() + NUDGE_FAST_MS
    this.#beatSoon()
    this.#plan(this.#fastMs())
  }

  /** Changes what this node offers (a new epoch when the plan inputs change). */
  updateCapabilities(capabilities: Capabilities): void {
    this.#capabilities = capabilities
    this.#membership.updateSelf({ capabilities })
    this.#afterChange()
    this.#announceFull(true)
  }

  /**
   * Answers a member's sync request (decoded by `decodeSyncRequest`; the caller has checked that
   * `from` is a member of this pool): takes in its announcement, answers with ours and the records
   * it lacks. Throws AnnouncementError on a request for another pool.
   */
  answerSync(asked: SyncRequest, from: string): Uint8Array {
    if (asked.poolId !== this.#init.poolId) {
      throw new AnnouncementError(
        'wrong-pool',
        `ring sync for pool ${asked.poolId}, not ${this.#init.poolId}`,
      )
    }
    this.#stats.syncs.answered++
    this.#accept(asked.self, from)
    // The asker's record and latest message of each member, by the end of its node id.
    const have = new Map(asked.have.map(([id, record, latest]) => [id, { record, latest }]))
    const self = this.#init.identity.nodeId
    const records: Uint8Array[] = []
    for (const [nodeId, record] of this.#records) {
      if (records.length >= MAX_SYNC_RECORDS - 1) break
      if (nodeId === from || nodeId === self || !this.#membership.has(nodeId)) continue
      const known = have.get(nodeId.slice(-WANT_ID_CHARS))
      if ((known?.record ?? -1) < record.seq) records.push(record.bytes)
      // Its latest beat carries the view it reports now: what agreement waits for.
      const latest = this.#latest.get(nodeId)
      if (latest !== undefined && latest.seq > record.seq && (known?.latest ?? -1) < latest.seq) {
        records.push(latest.bytes)
      }
    }
    return encodeSyncAnswer({ v: 1, self: this.#sign('full'), records })
  }

  /** The ring's size now, this node included. */
  #size(): number {
    return this.#membership.size + 1
  }

  #scale(): number {
    return Math.max(1, this.#size() / MEMBERS_PER_INTERVAL)
  }

  #fastMs(): number {
    return Math.min(this.#fastHeartbeatMs * this.#scale(), this.#maxHeartbeatMs)
  }

  #gapMs(): number {
    return Math.min(MESSAGE_GAP_MS * this.#scale(), this.#fastMs())
  }

  #heartbeatAtRestMs(): number {
    return Math.min(this.#heartbeatMs * this.#scale(), this.#maxHeartbeatMs)
  }

  #validate(message: Message): TopicValidatorResult {
    this.#stats.received.messages++
    this.#stats.received.bytes += message.data.length
    // Forwarded messages keep their origin's gossipsub signature, so `from` is the announcer.
    return this.#accept(message.data, message.type === 'signed' ? message.from.toString() : undefined)
  }

  /**
   * Checks and applies one signed announcement, from gossip or a sync. `origin` is who sent it
   * (gossipsub's signed origin, or the member we synced with for its own announcement); records a
   * sync hands on have none but their own signature.
   */
  #accept(data: Uint8Array, origin: string | undefined, notify = true): TopicValidatorResult {
    // The same message handed on again (several syncs hand on the same beats) is known by its
    // hash without decoding and verifying it again. Gossip has its own seen-cache, and what it
    // delivers is checked in full (origin included).
    const key = bytesToHex(sha256(data).subarray(0, 16))
    if (origin === undefined && this.#seen.has(key)) {
      this.#drop('stale')
      return TopicValidatorResult.Ignore
    }
    let announcement: Announcement
    try {
      announcement = decodeAnnouncement(data, this.#init.poolId, origin === undefined ? {} : { origin })
    } catch (err) {
      this.#drop(err instanceof AnnouncementError ? err.reason : 'malformed')
      return TopicValidatorResult.Reject
    }
    if (origin !== undefined && origin !== announcement.nodeId) {
      this.#drop('origin-mismatch')
      return TopicValidatorResult.Reject
    }
    if (isFullAnnouncement(announcement) && !this.#stillVerified(announcement)) {
      const refusal = this.#init.verifyMember(announcement)
      if (refusal === undefined) {
        this.#verified.set(announcement.nodeId, {
          certificate: announcement.certificate,
          until: this.#clock.now() + VERIFIED_MS,
        })
      } else {
        this.#drop('untrusted')
        this.#logger.warn({ nodeId: announcement.nodeId, refusal }, 'refused a ring announcement')
        return TopicValidatorResult.Reject
      }
    }
    // Asked for in full: answer whoever asks (the answer goes only to members, and at most once
    // per fast interval), before the sender is known to us.
    const self = this.#init.identity.nodeId
    if (announcement.want?.includes(self.slice(-WANT_ID_CHARS)) === true) {
      this.#stats.wanted++
      this.#announceFull()
    }
    const result = this.#membership.apply(announcement)
    if (result !== 'unknown') {
      if (this.#seen.size >= MAX_SEEN) this.#seen.clear()
      this.#seen.add(key)
    }
    if (result === 'stale') {
      // An older announcement of a known member: a replay, or one overtaken on another path.
      this.#drop('stale')
      return TopicValidatorResult.Ignore
    }
    if (result === 'unknown') {
      // A beat of a node whose record we lack: ask for it; do not forward what we cannot check.
      this.#drop('unknown')
      this.#want(announcement.nodeId)
      return TopicValidatorResult.Ignore
    }
    this.#stats.received.accepted++
    if (!announcement.leaving) this.#latest.set(announcement.nodeId, { seq: announcement.seq, bytes: data })
    if (isFullAnnouncement(announcement)) {
      this.#records.set(announcement.nodeId, { seq: announcement.seq, bytes: data })
      this.#wants.delete(announcement.nodeId)
    } else if (
      announcement.rseq !== undefined &&
      (this.#records.get(announcement.nodeId)?.seq ?? -1) < announcement.rseq
    ) {
      // Its record changed and the full announcement did not reach us.
      this.#want(announcement.nodeId)
    }
    if (announcement.gone !== undefined) {
      if (announcement.gone.some((o) => o.nodeId === self)) {
        // Another member dropped us: announce again, newer than its obituary.
        this.#announceFull(true)
      }
      const before = this.#membership.size
      if (this.#membership.bury(announcement.gone)) this.#stats.buried += before - this.#membership.size
    }
    if (notify) this.#afterChange()
    return TopicValidatorResult.Accept
  }

  /** The member's certificate was accepted moments ago, byte for byte. */
  #stillVerified(announcement: FullAnnouncement): boolean {
    const known = this.#verified.get(announcement.nodeId)
    if (known === undefined || known.until < this.#clock.now()) return false
    return Buffer.from(known.certificate).equals(announcement.certificate)
  }

  #want(nodeId: string): void {
    if (this.#wants.has(nodeId) || this.#wants.size >= MAX_WANTS) return
    this.#wants.set(nodeId, 0)
    this.#beatSoon()
  }

  #drop(reason: string): void {
    this.#stats.dropped[reason] = (this.#stats.dropped[reason] ?? 0) + 1
  }

  #afterChange(): void {
    const { epoch, digest } = this.#membership.selfView
    const key = `${epoch}/${digest}/${this.#membership.converged}`
    if (key === this.#lastEmitted) return
    const membershipChanged = !this.#lastEmitted.startsWith(`${epoch}/${digest}/`)
    this.#lastEmitted = key
    this.#stats.viewChanges++
    this.dispatchEvent(new CustomEvent('view', { detail: this.#membership.view() }))
    if (!this.#running) return
    if (membershipChanged) {
      const self = this.#init.identity.nodeId
      for (const nodeId of this.#records.keys()) {
        if (nodeId !== self && !this.#membership.has(nodeId)) this.#records.delete(nodeId)
      }
      for (const nodeId of this.#latest.keys()) {
        if (!this.#membership.has(nodeId)) this.#latest.delete(nodeId)
      }
      // Tell the others at once, so that a change spreads in one round trip, not one heartbeat,
      // and settle again from the fast interval.
      this.#beatSoon()
      this.#restMs = this.#fastMs()
      this.#plan(this.#fastMs())
    }
  }

  /** A beat within the debounce delay, and no sooner than the message gap after the last one. */
  #beatSoon(): void {
    if (this.#soon !== undefined || !this.#running) return
    const wait = Math.max(CHANGE_DEBOUNCE_MS, this.#lastSentAt + this.#gapMs() - this.#clock.now())
    this.#soon = this.#clock.setTimeout(() => {
      this.#soon = undefined
      void this.#publish('beat')
    }, wait)
  }

  /**
   * A full announcement: within the debounce delay when `urgent` (our record changed, or another
   * member buried us), else no sooner than the message gap after the last full one (later askers
   * share it).
   */
  #announceFull(urgent = false): void {
    if (!this.#running) return
    const wait = Math.max(
      CHANGE_DEBOUNCE_MS,
      urgent ? 0 : this.#lastFullAt + this.#gapMs() - this.#clock.now(),
    )
    if (this.#full !== undefined) {
      if (this.#fullAt <= this.#clock.now() + wait) return
      this.#clock.clearTimeout(this.#full)
    }
    this.#fullAt = this.#clock.now() + wait
    this.#full = this.#clock.setTimeout(() => {
      this.#full = undefined
      void this.#publish('full')
    }, wait)
  }

  /** Schedules the next periodic beat no later than `ms` from now. */
  #plan(ms: number): void {
    if (!this.#running) return
    const at = this.#clock.now() + ms
    if (this.#timer !== undefined && this.#tickAt <= at) return
    this.#clock.clearTimeout(this.#timer)
    this.#tickAt = at
    this.#timer = this.#clock.setTimeout(() => this.#tick(), ms)
  }

  #tick(): void {
    this.#timer = undefined
    if (!this.#running) return
    const failureTimeoutMs = Math.min(this.#failureTimeoutMs * this.#scale(), 5 * this.#maxHeartbeatMs)
    if (this.#membership.expire(failureTimeoutMs).length > 0) this.#afterChange()
    // A connected member that reports another view (or that we do not hold): sync with one.
    const differing = this.#differing()
    const settled =
      this.#membership.converged &&
      differing.length === 0 &&
      this.#clock.now() >= this.#fastUntil &&
      this.#wants.size === 0
    let interval = this.#fastMs()
    if (settled) {
      interval = this.#restMs
      this.#restMs = Math.min(this.#restMs * 2, this.#heartbeatAtRestMs())
    } else this.#restMs = this.#fastMs()
    if (this.#soon === undefined && this.#full === undefined) void this.#publish('beat')
    this.#syncNext(differing)
    this.#plan(interval * (0.9 + 0.2 * this.#random()))
  }

  /**
   * Syncs with connected members that report another view, each at random among those not
   * synced with in the last fast interval: up to `MAX_SYNCS` at once while some of them are
   * members we hold no record of (the ring is still filling in), else one at a time (gossip
   * carries views once it reaches everyone; a sync covers a member it has not reached yet).
   */
  #syncNext(differing = this.#differing()): void {
    const recent = this.#clock.now() - this.#fastMs()
    const due = differing.filter((nodeId) => (this.#direct.get(nodeId) ?? Number.NEGATIVE_INFINITY) <= recent)
    const limit = due.some((nodeId) => !this.#membership.has(nodeId)) ? MAX_SYNCS : 1
    while (this.#syncing < limit && due.length > 0) {
      const [nodeId] = due.splice(Math.floor(this.#random() * due.length), 1)
      this.#syncWith(nodeId!)
    }
  }

  /** Connected members whose reported view differs from ours (or that we do not hold). */
  #differing(): string[] {
    if (this.#sync === undefined) return []
    const { epoch, digest } = this.#membership.selfView
    return [...this.#direct.keys()].filter((nodeId) => {
      const reported = this.#membership.reported(nodeId)
      return reported === undefined || reported.epoch !== epoch || reported.digest !== digest
    })
  }

  /** A push-pull sync with a connected member, unless one ran within the last fast interval. */
  #syncWith(nodeId: string): void {
    const sync = this.#sync
    if (sync === undefined || !this.#running || this.#syncing >= MAX_SYNCS) return
    const now = this.#clock.now()
    if ((this.#direct.get(nodeId) ?? Number.NEGATIVE_INFINITY) > now - this.#fastMs()) return
    this.#direct.set(nodeId, now)
    this.#syncing++
    this.#stats.syncs.asked++
    const self = this.#init.identity.nodeId
    const have: Array<[string, number, number]> = []
    for (const [id, record] of this.#records) {
      if (id === self || !this.#membership.has(id)) continue
      have.push([id.slice(-WANT_ID_CHARS), record.seq, this.#latest.get(id)?.seq ?? record.seq])
    }
    const request = encodeSyncRequest({ v: 1, poolId: this.#init.poolId, self: this.#sign('full'), have })
    sync(nodeId, request, { signal: AbortSignal.timeout(SYNC_TIMEOUT_MS) })
      .then((data) => {
        if (!this.#running) return
        const answer = decodeSyncAnswer(data)
        this.#stats.syncs.bytes += data.length
        this.#stats.syncs.records += answer.records.length
        this.#accept(answer.self, nodeId, false)
        for (const record of answer.records) this.#accept(record, undefined, false)
        this.#afterChange()
      })
      .catch((err: Error) => {
        this.#stats.syncs.failed++
        if (this.#direct.has(nodeId)) this.#direct.set(nodeId, this.#clock.now() + SYNC_RETRY_MS)
        this.#logger.debug({ nodeId, err: err.message }, 'ring sync failed')
      })
      .finally(() => {
        this.#syncing--
        if (this.#running && [...this.#direct.keys()].some((id) => !this.#membership.has(id)))
          this.#syncNext()
      })
  }

  /** Signs an announcement of this node with its current view (and what it wants and buried). */
  #sign(
    kind: 'full' | 'beat',
    leaving = false,
    extras: Pick<Announcement, 'want' | 'gone'> = {},
  ): Uint8Array {
    const addresses = this.#init.addresses().slice(0, 16)
    this.#membership.updateSelf({ addresses }) // addresses change (relay reservations, new listeners)
    const common = {
      v: 1 as const,
      poolId: this.#init.poolId,
      nodeId: this.#init.identity.nodeId,
      publicKey: this.#init.identity.publicKey,
      seq: nextSeq(this.#clock.now()),
      view: this.#membership.selfView,
      leaving,
      ...(extras.want !== undefined && extras.want.length > 0 ? { want: extras.want } : {}),
      ...(extras.gone !== undefined && extras.gone.length > 0 ? { gone: extras.gone } : {}),
    }
    if (kind === 'beat') {
      const rseq = this.#recordSeq
      return encodeAnnouncement(this.#init.identity, {
        ...common,
        beat: true,
        ...(rseq === undefined ? {} : { rseq }),
      })
    }
    const data = encodeAnnouncement(this.#init.identity, {
      ...common,
      addresses,
      certificate: this.#init.certificate,
      capabilities: this.#capabilities,
    })
    this.#records.set(this.#init.identity.nodeId, { seq: common.seq, bytes: data })
    this.#lastAddresses = addresses.join(' ')
    // Beats name the announcement our record last changed in: a member holding an older one asks.
    const recordKey = JSON.stringify([addresses, this.#capabilities])
    if (recordKey !== this.#recordKey) {
      this.#recordKey = recordKey
      this.#recordSeq = common.seq
    }
    return data
  }

  async #publish(kind: 'full' | 'beat', leaving = false): Promise<void> {
    // New addresses are part of the record: the others learn them from a full announcement.
    if (
      kind === 'beat' &&
      !leaving &&
      this.#init.addresses().slice(0, 16).join(' ') !== this.#lastAddresses
    ) {
      kind = 'full'
    }
    const want = [...this.#wants].slice(0, MAX_WANTED).map(([nodeId, asks]) => {
      if (asks + 1 >= WANT_ASKS) this.#wants.delete(nodeId)
      else this.#wants.set(nodeId, asks + 1)
      return nodeId.slice(-WANT_ID_CHARS)
    })
    // Obituaries matter until the ring agrees again (then no member holds the dead one).
    const gone = this.#membership.converged ? [] : this.#membership.obituaries()
    const now = this.#clock.now()
    this.#lastSentAt = now
    const data = this.#sign(kind, leaving, { want, gone })
    if (kind === 'full') {
      // The full announcement carries the view: a beat about to go out would say nothing new.
      this.#clock.clearTimeout(this.#soon)
      this.#soon = undefined
      this.#lastFullAt = now
    }
    try {
      await this.#pubsub.publish(this.topic, data)
      this.#stats.sent.messages++
      this.#stats.sent.bytes += data.length
      if (kind === 'full') this.#stats.sent.full++
    } catch (err) {
      this.#logger.debug({ err: (err as Error).message }, 'ring announcement not published')
    }
  }
}

let lastSeq = 0
/** Milliseconds since the epoch, strictly increasing within this process. */
function nextSeq(now: number): number {
  lastSeq = Math.max(lastSeq + 1, Math.floor(now))
  return lastSeq
}

/** A generator in [0, 1) seeded by the node id (so simulations repeat): jitter and peer picks. */
function randomOf(nodeId: string): () => number {
  let state = 2166136261
  for (let i = 0; i < nodeId.length; i++) state = Math.imul(state ^ nodeId.charCodeAt(i), 16777619)
  state ||= 1
  return () => {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) / 2 ** 32
  }
}

/** Factory in the style of libp2p services: configuration now, dependencies at construction. */
export function ringGossip(init: RingGossipInit): (components: RingGossipComponents) => RingGossip {
  return (components) => new RingGossip(init, components)
}
