import type {
  ComponentLogger,
  Libp2pEvents,
  Logger,
  PeerId,
  Startable,
  TypedEventTarget,
} from '@libp2p/interface'
import type { AddressManager, ConnectionManager, TransportManager } from '@libp2p/interface-internal'
import { isPrivate } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'
import { deadline } from './deadline.ts'

export interface ConnectivityComponents {
  peerId: PeerId
  transportManager: TransportManager
  connectionManager: ConnectionManager
  addressManager: AddressManager
  events: TypedEventTarget<Libp2pEvents>
  logger: ComponentLogger
}

export interface ConnectivityInit {
  /** Relay addresses, each ending in `/p2p/<relay id>`. */
  relays: Multiaddr[]
  /** `always`: hold a reservation on every relay; `auto`: only while not publicly reachable. */
  reservations: 'auto' | 'always' | 'off'
  /** `auto`: grace period after start for AutoNAT/UPnP to confirm a public address. */
  autoDelayMs: number
  /** Bootstrap addresses, redialed whenever this node has no connection at all. */
  bootstrap: Multiaddr[]
  intervalMs: number
  maxBackoffMs: number
  dialTimeoutMs: number
}

export interface ConnectivityStatus {
  /** Relays we hold a reservation on (their node ids). */
  reservedRelays: string[]
  /** True when a public, non-relayed address of ours has been confirmed. */
  publiclyReachable: boolean
}

interface Target {
  addr: Multiaddr
  peerId: string
  failures: number
  nextAttempt: number
  busy: boolean
}

/**
 * Keeps a node reachable: holds circuit relay reservations (always, or while no public address
 * is confirmed) and redials bootstrap peers when the node has lost every connection. libp2p
 * itself reserves only on relays passed as listen addresses at start, where an unreachable relay
 * would fail the whole start; here a relay that is down is retried with back-off instead.
 */
export class Connectivity implements Startable {
  private readonly components: ConnectivityComponents
  private readonly init: ConnectivityInit
  private readonly log: Logger
  private readonly relays: Target[]
  private readonly bootstrap: Target[]
  private timer: ReturnType<typeof setTimeout> | undefined
  private running = false
  private startedAt = 0
  private readonly inFlight = new Set<Promise<void>>()
  private abort = new AbortController()

  constructor(components: ConnectivityComponents, init: ConnectivityInit) {
    this.components = components
    this.init = init
    this.log = components.logger.forComponent('meshnet:connectivity')
    this.relays = init.reservations === 'off' ? [] : init.relays.map(toTarget)
    this.bootstrap = init.bootstrap.map(toTarget)
  }

  readonly [Symbol.toStringTag] = '@meshnet/connectivity'

  start(): void {
    this.running = true
    this.abort = new AbortController()
  }

  afterStart(): void {
    this.startedAt = Date.now()
    this.components.events.addEventListener('self:peer:update', this.onSelfUpdate)
    // 'always' reserves at once; 'auto' first gives AutoNAT/UPnP a chance to find a public address.
    this.schedule(
      this.init.reservations === 'auto' ? Math.min(this.init.autoDelayMs, this.init.intervalMs) : 0,
    )
  }

  async beforeStop(): Promise<void> {
    this.running = false
    this.components.events.removeEventListener('self:peer:update', this.onSelfUpdate)
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.abort.abort()
    await Promise.allSettled([...this.inFlight])
  }

  stop(): void {}

  status(): ConnectivityStatus {
    return {
      reservedRelays: this.relays.filter((relay) => this.hasReservation(relay)).map((relay) => relay.peerId),
      publiclyReachable: this.publiclyReachable(),
    }
  }

  private readonly onSelfUpdate = (): void => {
    // Losing a public address or a reservation is acted on at once rather than at the next tick.
    if (this.running && this.relays.length > 0) this.tick()
  }

  private schedule(delayMs: number): void {
    if (!this.running) return
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.tick()
      this.schedule(this.init.intervalMs)
    }, delayMs)
    this.timer.unref?.()
  }

  private tick(): void {
    if (!this.running) return
    const now = Date.now()
    if (this.wantsReservations(now)) {
      for (const relay of this.relays) {
        if (!relay.busy && relay.nextAttempt <= now && !this.hasReservation(relay))
          this.track(this.reserve(relay))
      }
    }
    if (this.components.connectionManager.getConnections().length === 0) {
      for (const peer of this.bootstrap) {
        if (!peer.busy && peer.nextAttempt <= now) this.track(this.redial(peer))
      }
    }
  }

  private wantsReservations(now: number): boolean {
    if (this.relays.length === 0) return false
    if (this.init.reservations === 'always') return true
    return now - this.startedAt >= this.init.autoDelayMs && !this.publiclyReachable()
  }

  private publiclyReachable(): boolean {
    return this.components.addressManager
      .getAddresses()
      .some((addr) => !isPrivate(addr) && !addr.toString().includes('/p2p-circuit'))
  }

  private hasReservation(relay: Target): boolean {
    const marker = `/p2p/${relay.peerId}/p2p-circuit`
    return this.components.addressManager.getAddresses().some((addr) => addr.toString().includes(marker))
  }

  private async reserve(relay: Target): Promise<void> {
    await this.attempt(relay, 'relay reservation', async (signal) => {
      // Connect first so that a relay that is down costs one failed dial, not a listener.
      await this.components.connectionManager.openConnection(relay.addr, { signal })
      await this.components.transportManager.listen([relay.addr.encapsulate('/p2p-circuit')])
      this.log('reserved a slot on relay %s', relay.peerId)
    })
  }

  private async redial(peer: Target): Promise<void> {
    await this.attempt(peer, 'bootstrap dial', async (signal) => {
      await this.components.connectionManager.openConnection(peer.addr, { signal })
      this.log('reconnected to bootstrap peer %s', peer.peerId)
    })
  }

  private async attempt(
    target: Target,
    what: string,
    run: (signal: AbortSignal) => Promise<void>,
  ): Promise<void> {
    target.busy = true
    const limit = deadline(this.init.dialTimeoutMs, this.abort.signal)
    try {
      await run(limit.signal)
      target.failures = 0
      target.nextAttempt = 0
    } catch (err) {
      target.failures++
      const backoff = Math.min(this.init.maxBackoffMs, this.init.intervalMs * 2 ** (target.failures - 1))
      target.nextAttempt = Date.now() + backoff
      if (this.running) {
        this.log.error(
          '%s to %s failed (%d in a row), next try in %d ms - %e',
          what,
          target.peerId,
          target.failures,
          backoff,
          err,
        )
      }
    } finally {
      limit.clear()
      target.busy = false
    }
  }

  private track(task: Promise<void>): void {
    this.inFlight.add(task)
    void task.finally(() => this.inFlight.delete(task))
  }
}

function toTarget(addr: Multiaddr): Target {
  const peerId = addr.getComponents().findLast((component) => component.name === 'p2p')?.value ?? ''
  return { addr, peerId, failures: 0, nextAttempt: 0, busy: false }
}

/** The connectivity service; `createMeshNode` adds it as `services.connectivity`. */
export function connectivity(init: ConnectivityInit): (components: ConnectivityComponents) => Connectivity {
  return (components) => new Connectivity(components, init)
}
