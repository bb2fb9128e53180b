import { sha256 } from '@noble/hashes/sha2.js'
import { bytesToHex } from '@noble/hashes/utils.js'
import { encode } from 'cborg'
import {
  type Announcement,
  type Capabilities,
  isFullAnnouncement,
  MAX_OBITUARIES,
  type Obituary,
} from './announcement.ts'

/** A live member as this node sees it. */
export interface RingMember {
  nodeId: string
  addresses: string[]
  capabilities: Capabilities
  /** When we last heard from it (our clock, ms). */
  lastSeen: number
  /** The view it last reported. */
  view: { epoch: number; digest: string }
}

export interface RingView {
  epoch: number
  digest: string
  /** Live members in ring order (by node id), this node included. */
  members: RingMember[]
  /**
   * True when every live member reports this same digest; this node then holds the highest epoch
   * any of them chose for it, which is the epoch every one of them holds.
   */
  converged: boolean
}

/**
 * 'changed': the membership (and so the epoch) changed. 'updated': a known member was heard from.
 * 'stale': an old or replayed message. 'unknown': a beat from a node whose full announcement we do
 * not hold (ask for it).
 */
export type ApplyResult = 'changed' | 'updated' | 'stale' | 'unknown'

export interface MembershipInit {
  self: { nodeId: string; addresses: string[]; capabilities: Capabilities }
  /** A member not heard from for this long is dropped (`expire` may be given another). */
  failureTimeoutMs: number
  now?: () => number
}

/**
 * The membership state machine of one pool's ring on one node. Announcements that passed
 * verification go in; the view (live members, digest, epoch) comes out.
 *
 * Epochs: when the set of members (or their capacities or models) changes, the node moves to
 * `max(own epoch, every epoch it has seen) + 1`; when a member with the same digest reports a
 * higher epoch, the node adopts it. Once membership stops changing, every live member ends on
 * the same digest and the same (highest) epoch: that is convergence. A node knows it has
 * converged once every member reports its digest: the report of the member that chose the highest
 * epoch is among them, so no second round is needed to agree on the epoch.
 *
 * Full announcements add or update a member; beats (no record) only refresh a known member's
 * liveness and reported view. A member removed here (its connection closed and it fell silent, or
 * it lost its certificate) leaves an obituary (its node id and the last sequence number heard from
 * it), which the gossip repeats so that members who still hold it drop it too, unless it has
 * spoken since. Members that merely went silent time out on every node by itself.
 */
export class RingMembership {
  readonly #self: RingMember
  readonly #members = new Map<string, RingMember>()
  readonly #lastSeq = new Map<string, number>()
  readonly #obituaries = new Map<string, number>()
  readonly #failureTimeoutMs: number
  readonly #now: () => number
  #epoch = 1
  #maxEpochSeen = 1
  #digest: string

  constructor(init: MembershipInit) {
    this.#now = init.now ?? Date.now
    this.#failureTimeoutMs = init.failureTimeoutMs
    this.#self = { ...init.self, lastSeen: this.#now(), view: { epoch: 1, digest: '' } }
    this.#digest = this.#computeDigest()
    this.#self.view = { epoch: this.#epoch, digest: this.#digest }
  }

  get selfId(): string {
    return this.#self.nodeId
  }

  /** Members other than this node. */
  get size(): number {
    return this.#members.size
  }

  has(nodeId: string): boolean {
    return this.#members.has(nodeId)
  }

  /** The view a member last reported, or undefined for a non-member. */
  reported(nodeId: string): { epoch: number; digest: string } | undefined {
    return this.#members.get(nodeId)?.view
  }

  /** When a member was last heard from (our clock), or undefined for a non-member. */
  lastSeen(nodeId: string): number | undefined {
    return this.#members.get(nodeId)?.lastSeen
  }

  /** Applies a verified announcement or beat. */
  apply(announcement: Announcement): ApplyResult {
    if (announcement.nodeId === this.#self.nodeId) return 'stale'
    const last = this.#lastSeq.get(announcement.nodeId)
    if (last !== undefined && announcement.seq <= last) return 'stale'
    const existing = this.#members.get(announcement.nodeId)
    if (!isFullAnnouncement(announcement) && existing === undefined && !announcement.leaving) {
      // A beat from a node we hold no record of: not applied (its seq stays unseen), so that the
      // full announcement it sends when asked is not refused as stale.
      return 'unknown'
    }
    this.#lastSeq.set(announcement.nodeId, announcement.seq)
    this.#obituaries.delete(announcement.nodeId)
    this.#maxEpochSeen = Math.max(this.#maxEpochSeen, announcement.view.epoch)
    if (announcement.leaving) {
      return this.#members.delete(announcement.nodeId) ? this.#changed() : 'updated'
    }
    const member: RingMember = isFullAnnouncement(announcement)
      ? {
          nodeId: announcement.nodeId,
          addresses: announcement.addresses,
          capabilities: announcement.capabilities,
          lastSeen: this.#now(),
          view: announcement.view,
        }
      : { ...existing!, lastSeen: this.#now(), view: announcement.view }
    this.#members.set(member.nodeId, member)
    if (existing === undefined || planInputs(existing) !== planInputs(member)) return this.#changed()
    if (announcement.view.digest === this.#digest && announcement.view.epoch > this.#epoch) {
      this.#epoch = announcement.view.epoch
      this.#self.view = { epoch: this.#epoch, digest: this.#digest }
    }
    return 'updated'
  }

  /**
   * Applies another member's obituaries: a member is dropped when nothing newer than the
   * obituary's sequence number was heard from it. Returns true when the membership changed.
   * An obituary of this node itself is the caller's to answer (announce again, with a newer seq).
   */
  bury(obituaries: readonly Obituary[]): boolean {
    let changed = false
    for (const { nodeId, seq } of obituaries) {
      if (nodeId === this.#self.nodeId) continue
      const last = this.#lastSeq.get(nodeId)
      if (last !== undefined && last > seq) continue
      if (this.#members.delete(nodeId)) changed = true
      this.#lastSeq.set(nodeId, seq)
      this.#remember(nodeId, seq)
    }
    if (changed) this.#changed()
    return changed
  }

  /**
   * Drops a member (closed connection, lost certificate) and leaves its obituary. Returns true
   * when it was a member.
   */
  remove(nodeId: string): boolean {
    if (!this.#members.delete(nodeId)) return false
    this.#remember(nodeId, this.#lastSeq.get(nodeId) ?? 0)
    this.#changed()
    return true
  }

  /** Drops members not heard from within the failure timeout; returns their ids. */
  expire(failureTimeoutMs = this.#failureTimeoutMs): string[] {
    const deadline = this.#now() - failureTimeoutMs
    const dead = [...this.#members.values()].filter((m) => m.lastSeen < deadline).map((m) => m.nodeId)
    // No obituary: a member silent here may only be slow to reach us; every member times out
    // the silent ones itself. Obituaries are for what a connection proves (it closed).
    for (const nodeId of dead) this.#members.delete(nodeId)
    if (dead.length > 0) this.#changed()
    return dead
  }

  /** The most recent members dropped here or by obituaries heard, for beats to repeat. */
  obituaries(): Obituary[] {
    return [...this.#obituaries].map(([nodeId, seq]) => ({ nodeId, seq }))
  }

  /** Replaces this node's own addresses or capabilities (a capability change is a new epoch). */
  updateSelf(update: { addresses?: string[]; capabilities?: Capabilities }): void {
    const before = planInputs(this.#self)
    if (update.addresses) this.#self.addresses = update.addresses
    if (update.capabilities) this.#self.capabilities = update.capabilities
    if (planInputs(this.#self) !== before) this.#changed()
  }

  /** This node's epoch and digest, as its announcements report them. */
  get selfView(): { epoch: number; digest: string } {
    return { epoch: this.#epoch, digest: this.#digest }
  }

  /**
   * True when every member reports this node's digest (cheaper than `view()`). The epoch is then
   * agreed too: each node holds the report of the member that chose the highest epoch for this
   * digest, and has adopted it; no member reports a higher one for it.
   */
  get converged(): boolean {
    for (const m of this.#members.values()) if (m.view.digest !== this.#digest) return false
    return true
  }

  view(): RingView {
    const members = [this.#self, ...this.#members.values()].sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1))
    return { epoch: this.#epoch, digest: this.#digest, members, converged: this.converged }
  }

  #remember(nodeId: string, seq: number): void {
    this.#obituaries.delete(nodeId)
    this.#obituaries.set(nodeId, seq)
    if (this.#obituaries.size > MAX_OBITUARIES) this.#obituaries.delete(this.#obituaries.keys().next().value!)
  }

  #changed(): 'changed' {
    const digest = this.#computeDigest()
    if (digest !== this.#digest) {
      this.#digest = digest
      this.#epoch = Math.max(this.#epoch, this.#maxEpochSeen) + 1
      this.#maxEpochSeen = this.#epoch
      this.#self.view = { epoch: this.#epoch, digest: this.#digest }
    }
    return 'changed'
  }

  #computeDigest(): string {
    const inputs = [this.#self, ...this.#members.values()].map(planInputs).sort()
    return bytesToHex(sha256(encode(inputs))).slice(0, 32)
  }
}

/** What a shard plan depends on; equal inputs on every node give equal plans. */
function planInputs(member: Pick<RingMember, 'nodeId' | 'capabilities'>): string {
  const models = member.capabilities.models.map((m) => m.sha256).sort()
  return JSON.stringify([member.nodeId, member.capabilities.capacityBytes, models])
}
