import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { MeshNode } from '@meshnet/discovery'
import { type MemberRef, SHARD_PROTOCOL } from '@meshnet/protocols'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { PoolAccessError } from './errors.ts'

/**
 * Who may use a pool's shard protocol: `@meshnet/ring`'s `PoolGate` (certificates exchanged on
 * every connection) fits as it is. `exchange` is called once when a peer has not presented a
 * certificate yet (the exchange of a fresh connection may still be in flight).
 */
/** Certificate roles (`@meshnet/pool`'s `PoolRole`). */
export type GateRole = 'admin' | 'member' | 'client'

export interface ShardGate {
  /**
   * Throws unless `peer` holds a valid certificate of `poolId` of one of `roles` (default: member or
   * admin; a `client` certificate runs jobs only, so only the job protocol passes every role).
   */
  requireMember(peer: string, poolId: string, roles?: readonly GateRole[]): void
  exchange?(peer: PeerId): Promise<unknown>
  /**
   * `revoked` events (`detail: { nodeId, poolId, reason }`) when a connected peer loses a pool:
   * the shard server ends the sessions it takes part in.
   */
  addEventListener?(type: 'revoked', listener: (event: Event) => void): void
  removeEventListener?(type: 'revoked', listener: (event: Event) => void): void
}

/** Peers we asked for a certificate lately (so a stranger cannot make us dial it in a loop). */
const EXCHANGE_BACKOFF_MS = 5_000
const MAX_REMEMBERED = 1024

export class MembershipCheck {
  readonly #gate: ShardGate
  /** When we last asked a peer for its certificates. */
  readonly #asked = new Map<string, number>()
  /** Exchanges in flight, so that streams opened together wait for one exchange. */
  readonly #inflight = new Map<string, Promise<void>>()

  constructor(gate: ShardGate) {
    this.#gate = gate
  }

  /** Throws PoolAccessError (with the gate's reason) unless `peer` holds a valid certificate of `poolId`. */
  async require(peer: PeerId, poolId: string): Promise<void> {
    const id = peer.toString()
    try {
      this.#gate.requireMember(id, poolId)
      return
    } catch (err) {
      let pending = this.#inflight.get(id)
      if (pending === undefined) {
        const exchange = this.#gate.exchange
        if (exchange === undefined || Date.now() - (this.#asked.get(id) ?? 0) < EXCHANGE_BACKOFF_MS) {
          throw access(err, id, poolId)
        }
        if (this.#asked.size >= MAX_REMEMBERED) this.#asked.delete(this.#asked.keys().next().value!)
        this.#asked.set(id, Date.now())
        pending = exchange
          .call(this.#gate, peer)
          .then(
            () => {},
            () => {},
          )
          .finally(() => this.#inflight.delete(id))
        this.#inflight.set(id, pending)
      }
      await pending
    }
    try {
      this.#gate.requireMember(id, poolId)
    } catch (err) {
      throw access(err, id, poolId)
    }
  }
}

function access(err: unknown, peer: string, poolId: string): Error {
  if ((err as Error)?.name === 'PoolAccessError') return err as Error
  return new PoolAccessError(`peer ${peer} may not use pool ${poolId}: ${(err as Error)?.message ?? err}`)
}

/** Dial targets for a member: its multiaddrs (each ending in its /p2p/ id), or its node id. */
export function dialTarget(ref: MemberRef): string | Multiaddr[] {
  const addrs: Multiaddr[] = []
  for (const text of ref.addrs) {
    try {
      const addr = multiaddr(text)
      const p2p = addr.getComponents().findLast((c) => c.name === 'p2p')?.value
      if (p2p === undefined) addrs.push(addr.encapsulate(`/p2p/${ref.nodeId}`))
      else if (p2p === ref.nodeId) addrs.push(addr)
    } catch {}
  }
  return addrs.length > 0 ? addrs : ref.nodeId
}

/** Opens a shard stream to a member and returns it with the connection it runs on. */
export async function dialMember(
  node: MeshNode,
  ref: MemberRef,
  options: { timeoutMs: number; signal?: AbortSignal | undefined },
): Promise<{ stream: Stream; connection: Connection }> {
  // A relayed (limited) connection carries shards when it is the only path to the member: libp2p
  // still prefers a direct connection when one is open (after DCUtR, UPnP, or on a LAN).
  const stream = await node.dialProtocol(dialTarget(ref), SHARD_PROTOCOL, {
    timeoutMs: options.timeoutMs,
    runOnLimitedConnection: true,
    ...(options.signal ? { signal: options.signal } : {}),
  })
  const connections = node.libp2p.getConnections().filter((c) => c.remotePeer.toString() === ref.nodeId)
  const connection = connections.find((c) => c.streams.includes(stream)) ?? connections[0]
  if (connection === undefined) {
    stream.abort(new Error('no connection'))
    throw new PoolAccessError(`the connection to ${ref.nodeId} closed while opening a shard stream`)
  }
  return { stream, connection }
}

/** The IP a direct channel to this peer can use: the one of a direct (not relayed) TCP connection. */
export function directHost(connection: Connection): string | undefined {
  if (connection.limits !== undefined) return undefined
  const parts = connection.remoteAddr.getComponents()
  if (parts.some((c) => c.name === 'p2p-circuit')) return undefined
  return parts.find((c) => c.name === 'ip4' || c.name === 'ip6')?.value
}

/** Addresses of a peer from our peer store, for other members to dial. */
export async function knownAddrs(node: MeshNode, peer: PeerId): Promise<string[]> {
  try {
    const info = await node.libp2p.peerStore.get(peer)
    return info.addresses
      .map((a) => a.multiaddr.toString())
      .filter((a) => !a.includes('/p2p-circuit'))
      .slice(0, 16)
  } catch {
    return []
  }
}
