import type {
  ComponentLogger,
  Connection,
  IdentifyResult,
  Libp2pEvents,
  Logger,
  PeerId,
  PeerUpdate,
  Startable,
  TypedEventTarget,
} from '@libp2p/interface'
import type { AddressManager, ConnectionManager, TransportManager } from '@libp2p/interface-internal'
import { isLoopback, isPrivate } from '@libp2p/utils'
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
  /**
   * Offer the public IP that peers see us at, with our TCP listening ports, to AutoNAT (see
   * `onIdentify`); off when UPnP tells us our mapping instead.
   */
  mapObservedIp: boolean
}

export interface ConnectivityStatus {
  /** Relays we hold a reservation on (their node ids). */
  reservedRelays: string[]
  /** True when a public, non-relayed address of ours has been confirmed. */
  publiclyReachable: boolean
  /**
   * Relayed connections that a direct one to the same peer joined since start: DCUtR's hole
   * punches and upgrades (and any direct dial made while relayed).
   */
  directUpgrades: number
}

/** Time DCUtR gets to upgrade a relayed connection itself (a few round trips) before we dial. */
const UPGRADE_GRACE_MS = 2_000

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
  private directUpgrades = 0
  /** External IPs peers saw us at that we have offered to AutoNAT (see onIdentify). */
  private readonly guessedIps = new Set<string>()
  /** Peers reached only through a relay: when we may next try a direct dial (see onPeerUpdate). */
  private readonly nextUpgrade = new Map<string, number>()
  /** Direct dials waiting for DCUtR's own attempt to finish first. */
  private readonly pendingUpgrades = new Map<string, ReturnType<typeof setTimeout>>()
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
    this.components.events.addEventListener('peer:identify', this.onIdentify)
    this.components.events.addEventListener('connection:open', this.onConnectionOpen)
    this.components.events.addEventListener('peer:update', this.onPeerUpdate)
    this.components.events.addEventListener('peer:disconnect', this.onPeerDisconnect)
    // 'always' reserves at once; 'auto' first gives AutoNAT/UPnP a chance to find a public address.
    this.schedule(
      this.init.reservations === 'auto' ? Math.min(this.init.autoDelayMs, this.init.intervalMs) : 0,
    )
  }

  async beforeStop(): Promise<void> {
    this.running = false
    this.components.events.removeEventListener('self:peer:update', this.onSelfUpdate)
    this.components.events.removeEventListener('peer:identify', this.onIdentify)
    this.components.events.removeEventListener('connection:open', this.onConnectionOpen)
    this.components.events.removeEventListener('peer:update', this.onPeerUpdate)
    this.components.events.removeEventListener('peer:disconnect', this.onPeerDisconnect)
    this.nextUpgrade.clear()
    for (const timer of this.pendingUpgrades.values()) clearTimeout(timer)
    this.pendingUpgrades.clear()
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
      directUpgrades: this.directUpgrades,
    }
  }

  /**
   * js-libp2p's identify drops every TCP address a peer observed us at (the source port of an
   * outgoing TCP connection is ephemeral, js-libp2p#2620), so a node behind a NAT never learns
   * its public TCP address from peers, and DCUtR has nothing to offer. Most NATs (Linux's among
   * them) keep a port when they can, so the first public IP a peer sees us at, with each of our
   * private TCP listening ports, is offered as a candidate mapping. It stays unadvertised until
   * AutoNAT has a peer dial it back: a symmetric NAT's candidate is never confirmed.
   */
  private readonly onIdentify = (event: CustomEvent<IdentifyResult>): void => {
    const observed = event.detail.observedAddr
    if (!this.init.mapObservedIp || observed === undefined || isPrivate(observed)) return
    const parts = observed.getComponents().filter((part) => part.name !== 'p2p')
    if (!isTcp(observed) || parts[0]!.name !== 'ip4') return
    const externalIp = parts[0]!.value!
    if (this.guessedIps.has(externalIp)) return
    this.guessedIps.add(externalIp)
    for (const addr of this.components.transportManager.getAddrs()) {
      const listen = addr.getComponents()
      if (!isTcp(addr) || listen[0]!.name !== 'ip4' || !isPrivate(addr) || isLoopback(addr)) continue
      const port = Number(listen[1]!.value)
      this.components.addressManager.addPublicAddressMapping(listen[0]!.value!, port, externalIp, port, 'tcp')
      this.log('peers see us at %s; offering %s:%d to AutoNAT', externalIp, externalIp, port)
    }
  }

  /**
   * DCUtR tries once, when a relayed connection opens; if the peer's public address is confirmed
   * only later (AutoNAT, UPnP), it learns it through identify push and nothing dials it. So when
   * a peer we reach only through relays gains a public TCP address, we dial it directly, as DCUtR's
   * unilateral upgrade does, and close the relayed connections once the direct one is up. DCUtR
   * gets `UPGRADE_GRACE_MS` to do it first; at most one try per peer per maintenance interval.
   */
  private readonly onPeerUpdate = (event: CustomEvent<PeerUpdate>): void => {
    if (!this.running) return
    const { peer } = event.detail
    const id = peer.id.toString()
    if (this.pendingUpgrades.has(id) || (this.nextUpgrade.get(id) ?? 0) > Date.now()) return
    const direct = peer.addresses
      .map(({ multiaddr }) => multiaddr)
      .filter((addr) => !isPrivate(addr) && isTcp(addr))
      .map((addr) => (addr.toString().includes('/p2p/') ? addr : addr.encapsulate(`/p2p/${id}`)))
    if (direct.length === 0 || this.relayedOnly(peer.id) === undefined) return
    const timer = setTimeout(() => {
      this.pendingUpgrades.delete(id)
      const relayed = this.relayedOnly(peer.id)
      if (!this.running || relayed === undefined) return
      this.nextUpgrade.set(id, Date.now() + this.init.intervalMs)
      this.track(this.upgrade(peer.id, direct, relayed))
    }, UPGRADE_GRACE_MS)
    timer.unref?.()
    this.pendingUpgrades.set(id, timer)
  }

  /** Our connections to `peer` when there are some and every one goes through a relay. */
  private relayedOnly(peer: PeerId): Connection[] | undefined {
    const connections = this.components.connectionManager.getConnections(peer)
    return connections.length > 0 && connections.every(isRelayed) ? connections : undefined
  }

  private readonly onPeerDisconnect = (event: CustomEvent<PeerId>): void => {
    this.nextUpgrade.delete(event.detail.toString())
  }

  private async upgrade(peer: PeerId, addrs: Multiaddr[], relayed: Connection[]): Promise<void> {
    const limit = deadline(this.init.dialTimeoutMs, this.abort.signal)
    try {
      const connection = await this.components.connectionManager.openConnection(addrs, {
        signal: limit.signal,
        force: true,
      })
      if (isRelayed(connection)) return
      this.log('direct connection to %p via %a; closing its relayed ones', peer, connection.remoteAddr)
      await Promise.allSettled(relayed.map((r) => r.close({ signal: limit.signal })))
    } catch (err) {
      if (this.running) this.log('direct dial to %p, reached through a relay, failed - %e', peer, err)
    } finally {
      limit.clear()
    }
  }

  private readonly onConnectionOpen = (event: CustomEvent<Connection>): void => {
    const opened = event.detail
    if (isRelayed(opened)) return
    const others = this.components.connectionManager.getConnections(opened.remotePeer)
    if (others.some((connection) => connection.id !== opened.id && isRelayed(connection))) {
      this.directUpgrades++
      this.log('direct connection to %p joins a relayed one', opened.remotePeer)
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

function isRelayed(connection: Connection): boolean {
  return connection.remoteAddr.getComponents().some((part) => part.name === 'p2p-circuit')
}

/** `/ip4|ip6/<host>/tcp/<port>`, optionally `/p2p/<id>`: an address we dial over plain TCP. */
function isTcp(addr: Multiaddr): boolean {
  const parts = addr.getComponents().filter((part) => part.name !== 'p2p')
  return (
    parts.length === 2 && (parts[0]!.name === 'ip4' || parts[0]!.name === 'ip6') && parts[1]!.name === 'tcp'
  )
}

function toTarget(addr: Multiaddr): Target {
  const peerId = addr.getComponents().findLast((component) => component.name === 'p2p')?.value ?? ''
  return { addr, peerId, failures: 0, nextAttempt: 0, busy: false }
}

/** The connectivity service; `createMeshNode` adds it as `services.connectivity`. */
export function connectivity(init: ConnectivityInit): (components: ConnectivityComponents) => Connectivity {
  return (components) => new Connectivity(components, init)
}
