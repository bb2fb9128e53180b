import { type GossipSub, gossipsub, type Message, TopicValidatorResult } from '@libp2p/gossipsub'
import { type Logger, silentLogger } from '@meshnet/core'
import type { NodeIdentity } from '@meshnet/identity'
import {
  type Announcement,
  AnnouncementError,
  type Capabilities,
  decodeAnnouncement,
  encodeAnnouncement,
} from './announcement.ts'
import { RingMembership, type RingView } from './membership.ts'

/** The gossipsub topic of a pool's ring. */
export function ringTopic(poolId: string): string {
  return `/meshnet/ring/1.0.0/${poolId}`
}

export interface RingGossipInit {
  poolId: string
  identity: NodeIdentity
  /** This node's pool certificate, carried in every announcement. */
  certificate: Uint8Array
  capabilities: Capabilities
  /** This node's current dialable addresses. */
  addresses: () => string[]
  /**
   * Checks an announcement's certificate against the pool (signature, expiry, revocation, that it
   * belongs to the announcing key). Returns a reason to refuse it, or undefined to accept.
   */
  verifyMember: (announcement: Announcement) => string | undefined
  /** Announcement interval once the ring has converged. Default 2000 ms. */
  heartbeatMs?: number
  /** Announcement interval while it has not. Default 250 ms. */
  fastHeartbeatMs?: number
  /** A member whose connection closed is dropped after this long unless it announces. Default 1000 ms. */
  suspectMs?: number
  /**
   * A member not heard from for this long is dropped. Default 5 × heartbeatMs (10 s): generous,
   * because a crashed member is caught within `suspectMs` of its connection closing; this timeout
   * is for silent failures, and a short one makes busy machines churn.
   */
  failureTimeoutMs?: number
  logger?: Logger
}

export interface RingGossipComponents {
  pubsub: GossipSub
}

export interface RingGossipStats {
  /** Times something outside the ring (a member connecting, subscribing) asked for the fast interval. */
  nudges: number
  /** Views emitted (changes of epoch, digest or convergence). */
  viewChanges: number
  sent: { messages: number; bytes: number }
  received: { messages: number; bytes: number; accepted: number }
  dropped: Record<string, number>
}

/** Emitted whenever the view (members, epoch, convergence) changes. */
export type RingViewEvent = CustomEvent<RingView>

/**
 * Gossips signed membership announcements on a pool's topic and keeps the ring view. Start and
 * stop it; listen for `view` events.
 */
export class RingGossip extends EventTarget {
  readonly topic: string
  readonly #init: RingGossipInit
  readonly #pubsub: GossipSub
  readonly #membership: RingMembership
  readonly #logger: Logger
  readonly #heartbeatMs: number
  readonly #fastHeartbeatMs: number
  readonly #stats: RingGossipStats = {
    nudges: 0,
    viewChanges: 0,
    sent: { messages: 0, bytes: 0 },
    received: { messages: 0, bytes: 0, accepted: 0 },
    dropped: {},
  }
  #timer: NodeJS.Timeout | undefined
  #soon: NodeJS.Timeout | undefined
  #running = false
  #fastUntil = 0
  readonly #suspects = new Map<string, NodeJS.Timeout>()
  readonly #suspectMs: number
  #lastEmitted = ''
  #capabilities: Capabilities

  constructor(init: RingGossipInit, components: RingGossipComponents) {
    super()
    this.#init = init
    this.#pubsub = components.pubsub
    this.topic = ringTopic(init.poolId)
    this.#logger = init.logger ?? silentLogger()
    this.#capabilities = init.capabilities
    this.#heartbeatMs = init.heartbeatMs ?? 2_000
    this.#fastHeartbeatMs = init.fastHeartbeatMs ?? 250
    this.#suspectMs = init.suspectMs ?? 1_000
    this.#membership = new RingMembership({
      self: { nodeId: init.identity.nodeId, addresses: init.addresses(), capabilities: init.capabilities },
      failureTimeoutMs: init.failureTimeoutMs ?? 5 * this.#heartbeatMs,
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
    this.#tick()
  }

  /** Announces that this node leaves (so peers re-plan at once), then stops. */
  async stop(): Promise<void> {
    if (!this.#running) return
    this.#running = false
    clearTimeout(this.#timer)
    clearTimeout(this.#soon)
    for (const timer of this.#suspects.values()) clearTimeout(timer)
    this.#suspects.clear()
    await this.#publish(true).catch(() => {})
    this.#pubsub.unsubscribe(this.topic)
    this.#pubsub.topicValidators.delete(this.topic)
  }

  /**
   * Tells the ring a peer's last connection closed. The member is dropped after `suspectMs`
   * unless it announces again (or reconnects) in the meantime, so a crashed member leaves the ring
   * in about a second while a connection that is merely replaced causes no new epoch.
   */
  peerDisconnected(nodeId: string): void {
    if (!this.#membership.view().members.some((m) => m.nodeId === nodeId) || this.#suspects.has(nodeId))
      return
    const since = Date.now()
    this.#suspects.set(
      nodeId,
      setTimeout(() => {
        this.#suspects.delete(nodeId)
        const member = this.#membership.view().members.find((m) => m.nodeId === nodeId)
        if (member !== undefined && member.lastSeen <= since && this.#membership.remove(nodeId)) {
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
    clearTimeout(this.#suspects.get(nodeId))
    this.#suspects.delete(nodeId)
    if (this.#membership.remove(nodeId)) {
      this.#logger.info({ nodeId, reason }, 'ring member lost the pool; dropped')
      this.#afterChange()
    }
  }

  /** The peer connected again: it is no longer suspected. */
  peerConnected(nodeId: string): void {
    clearTimeout(this.#suspects.get(nodeId))
    this.#suspects.delete(nodeId)
  }

  /**
   * Something changed outside the ring (a member connected, subscribed, proved its certificate):
   * announce now and keep the fast interval for two seconds, so that the newcomer hears from us
   * before the next at-rest heartbeat.
   */
  nudge(): void {
    if (!this.#running) return
    this.#stats.nudges++
    this.#fastUntil = Date.now() + 2_000
    clearTimeout(this.#timer)
    this.#tick()
  }

  /** Changes what this node offers (a new epoch when the plan inputs change). */
  updateCapabilities(capabilities: Capabilities): void {
    this.#capabilities = capabilities
    this.#membership.updateSelf({ capabilities })
    this.#afterChange()
  }

  #validate(message: Message): TopicValidatorResult {
    this.#stats.received.messages++
    this.#stats.received.bytes += message.data.length
    let announcement: Announcement
    try {
      announcement = decodeAnnouncement(message.data, this.#init.poolId)
    } catch (err) {
      this.#drop(err instanceof AnnouncementError ? err.reason : 'malformed')
      return TopicValidatorResult.Reject
    }
    if (message.type === 'signed' && message.from.toString() !== announcement.nodeId) {
      // Forwarded messages keep their origin's gossipsub signature, so `from` is the announcer.
      this.#drop('origin-mismatch')
      return TopicValidatorResult.Reject
    }
    const refusal = this.#init.verifyMember(announcement)
    if (refusal !== undefined) {
      this.#drop('untrusted')
      this.#logger.warn({ nodeId: announcement.nodeId, refusal }, 'refused a ring announcement')
      return TopicValidatorResult.Reject
    }
    const result = this.#membership.apply(announcement)
    if (result === 'stale') {
      // An older announcement of a known member: a replay, or one overtaken on another path.
      this.#drop('stale')
      return TopicValidatorResult.Ignore
    }
    this.#stats.received.accepted++
    this.#afterChange()
    return TopicValidatorResult.Accept
  }

  #drop(reason: string): void {
    this.#stats.dropped[reason] = (this.#stats.dropped[reason] ?? 0) + 1
  }

  #afterChange(): void {
    const view = this.#membership.view()
    const key = `${view.epoch}/${view.digest}/${view.converged}`
    if (key !== this.#lastEmitted) {
      this.#lastEmitted = key
      this.#stats.viewChanges++
      this.dispatchEvent(new CustomEvent('view', { detail: view }))
      // Tell the others at once so that a change spreads in one round trip, not one heartbeat.
      if (this.#running && this.#soon === undefined) {
        this.#soon = setTimeout(() => {
          this.#soon = undefined
          void this.#publish(false)
        }, 10)
      }
    }
  }

  #tick(): void {
    if (!this.#running) return
    if (this.#membership.expire().length > 0) this.#afterChange()
    void this.#publish(false)
    const fast = !this.#membership.view().converged || Date.now() < this.#fastUntil
    const interval = fast ? this.#fastHeartbeatMs : this.#heartbeatMs
    this.#timer = setTimeout(() => this.#tick(), interval)
  }

  async #publish(leaving: boolean): Promise<void> {
    const addresses = this.#init.addresses().slice(0, 16)
    this.#membership.updateSelf({ addresses }) // addresses change (relay reservations, new listeners)
    const data = encodeAnnouncement(this.#init.identity, {
      v: 1,
      poolId: this.#init.poolId,
      nodeId: this.#init.identity.nodeId,
      publicKey: this.#init.identity.publicKey,
      addresses,
      certificate: this.#init.certificate,
      capabilities: this.#capabilities,
      seq: nextSeq(),
      view: this.#membership.selfView,
      leaving,
    })
    try {
      await this.#pubsub.publish(this.topic, data)
      this.#stats.sent.messages++
      this.#stats.sent.bytes += data.length
    } catch (err) {
      this.#logger.debug({ err: (err as Error).message }, 'ring announcement not published')
    }
  }
}

let lastSeq = 0
/** Milliseconds since the epoch, strictly increasing within this process. */
function nextSeq(): number {
  lastSeq = Math.max(lastSeq + 1, Date.now())
  return lastSeq
}

/** Factory in the style of libp2p services: configuration now, dependencies at construction. */
export function ringGossip(init: RingGossipInit): (components: RingGossipComponents) => RingGossip {
  return (components) => new RingGossip(init, components)
}

/**
 * The gossipsub service Meshnet rings run on. Peers that have not proved membership of any of this
 * node's pools (`isMember`) score far below the publish and gossip thresholds: we publish nothing
 * to them and gossip nothing with them, so a connected outsider sees no announcement. They are not
 * graylisted: that would also drop the subscription messages a member sends before its
 * certificate exchange completes (they are never resent), and what an outsider publishes is
 * rejected by the ring's validator anyway (counted as `untrusted`). Messages are signed by their
 * origin (StrictSign) on top of each announcement's own signature.
 */
export function ringPubsub(isMember: (peerId: string) => boolean) {
  return gossipsub({
    allowPublishToZeroTopicPeers: true,
    emitSelf: false,
    // Scores (and so who may receive) are cached for one heartbeat: keep it short so that a peer
    // that has just proved its certificate starts receiving announcements within half a second.
    heartbeatInterval: 500,
    // Members behind NAT are reached through a relay: gossip (small) runs over those circuits too.
    runOnLimitedConnection: true,
    scoreParams: {
      appSpecificScore: (peerId: string) => (isMember(peerId) ? 0 : -1_000),
      appSpecificWeight: 1,
      // Members are admitted by certificate, not by IP diversity: peers behind one NAT, or test
      // agents on 127.0.0.1, must not be penalised for sharing an address.
      IPColocationFactorWeight: 0,
    },
    scoreThresholds: {
      gossipThreshold: -10,
      publishThreshold: -50,
      graylistThreshold: -1e9,
      acceptPXThreshold: 10,
      opportunisticGraftThreshold: 20,
    },
  })
}
