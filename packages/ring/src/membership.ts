import { sha256 } from '@noble/hashes/sha2.js'
import { bytesToHex } from '@noble/hashes/utils.js'
import { encode } from 'cborg'
import type { Announcement, Capabilities } from './announcement.ts'

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
  /** True when every live member reports this same epoch and digest. */
  converged: boolean
}

export type ApplyResult = 'changed' | 'updated' | 'stale'

export interface MembershipInit {
  self: { nodeId: string; addresses: string[]; capabilities: Capabilities }
  /** A member not heard from for this long is dropped. */
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
 * the same digest and the same (highest) epoch: that is convergence.
 */
export class RingMembership {
  readonly #self: RingMember
  readonly #members = new Map<string, RingMember>()
  readonly #lastSeq = new Map<string, number>()
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

  /** Applies a verified announcement. 'changed' means the membership (and so the epoch) changed. */
  apply(announcement: Announcement): ApplyResult {
    if (announcement.nodeId === this.#self.nodeId) return 'stale'
    const last = this.#lastSeq.get(announcement.nodeId)
    if (last !== undefined && announcement.seq <= last) return 'stale'
    this.#lastSeq.set(announcement.nodeId, announcement.seq)
    this.#maxEpochSeen = Math.max(this.#maxEpochSeen, announcement.view.epoch)
    if (announcement.leaving) {
      return this.#members.delete(announcement.nodeId) ? this.#changed() : 'updated'
    }
    const existing = this.#members.get(announcement.nodeId)
    const member: RingMember = {
      nodeId: announcement.nodeId,
      addresses: announcement.addresses,
      capabilities: announcement.capabilities,
      lastSeen: this.#now(),
      view: announcement.view,
    }
    this.#members.set(member.nodeId, member)
    if (existing === undefined || planInputs(existing) !== planInputs(member)) return this.#changed()
    if (announcement.view.digest === this.#digest && announcement.view.epoch > this.#epoch) {
      this.#epoch = announcement.view.epoch
      this.#self.view = { epoch: this.#epoch, digest: this.#digest }
    }
    return 'updated'
  }

  /** Drops a member (failed ping, closed connection). Returns true when it was a member. */
  remove(nodeId: string): boolean {
    if (!this.#members.delete(nodeId)) return false
    this.#changed()
    return true
  }

  /** Drops members not heard from within the failure timeout; returns their ids. */
  expire(): string[] {
    const deadline = this.#now() - this.#failureTimeoutMs
    const dead = [...this.#members.values()].filter((m) => m.lastSeen < deadline).map((m) => m.nodeId)
    for (const nodeId of dead) this.#members.delete(nodeId)
    if (dead.length > 0) this.#changed()
    return dead
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

  view(): RingView {
    const members = [this.#self, ...this.#members.values()].sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1))
    const converged = members.every(
      (m) =>
        m.nodeId === this.#self.nodeId || (m.view.digest === this.#digest && m.view.epoch === this.#epoch),
    )
    return { epoch: this.#epoch, digest: this.#digest, members, converged }
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
