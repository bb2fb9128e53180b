import { setTimeout as sleep } from 'node:timers/promises'
import type { Connection, PeerId } from '@libp2p/interface'
import type { SDKClient } from '../client.ts'
import { DataLimitExceededError, NotConnectedError, PeerRefusedError } from '../errors.ts'
import { peerTarget } from '../internal/helpers.ts'
import type { ByteCounts } from '../traffic.ts'
import {
  type ConnectResult,
  type DiscoveredNode,
  type NatType,
  PING_RETRY_MS,
  type Session,
} from '../types.ts'

export function requireSession(client: SDKClient, what: string): Session {
  const session = client.session
  if (session === undefined) throw new NotConnectedError(what)
  if (session.limit !== undefined) throw session.limit
  return session
}

export async function stopSession(_client: SDKClient, session: Session): Promise<void> {
  session.lifetime.abort(new NotConnectedError('the SDK'))
  for (const timer of session.timers) clearInterval(timer)
  session.timers.length = 0
  for (const job of session.jobs) job.abort(new NotConnectedError('a running job'))
  await session.gate?.stop().catch(() => {})
  await session.node.stop()
}

export function connectResult(_client: SDKClient, session: Session): ConnectResult {
  return {
    nodeId: session.identity.nodeId,
    addresses: session.node.multiaddrs().map(String),
    bootstrap: session.bootstrap.map((b) => ({ ...b })),
    pool: session.pool,
  }
}

/**
 * One libp2p ping, tried a second time after a failure other than a timeout: a peer may still be
 * closing our previous ping stream and reset the next one (its inbound ping streams are capped).
 */
export async function pingPeer(
  _client: SDKClient,
  session: Session,
  peer: PeerId,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<number> {
  const once = () => session.node.ping(peer, { timeoutMs, ...(signal ? { signal } : {}) })
  try {
    return await once()
  } catch (err) {
    if ((err as Error).name === 'PeerTimeoutError' || signal?.aborted) throw err
    await sleep(PING_RETRY_MS, undefined, signal ? { signal } : {})
    return once()
  }
}

export function natType(client: SDKClient, session: Session): NatType {
  if (client.config.p2pConfig.localOnly) return 'local-only'
  const status = session.node.connectivity()
  if (status.publiclyReachable) return 'public'
  if (status.reservedRelays.length > 0) return 'relayed'
  return session.node.options.autoNAT ? 'private' : 'unknown'
}

/** A signal that fires after `ms` without `reset()` or when a parent fires (see idleTimer). */
export interface IdleTimer {
  readonly signal: AbortSignal
  timedOut(): boolean
  reset(): void
  clear(): void
}

export function deadline(client: SDKClient, ms: number, parent?: AbortSignal): IdleTimer {
  return idleTimer(client, ms, [parent])
}

/** An AbortSignal that fires after `ms` without `reset()`, or when a parent fires. */
export function idleTimer(
  _client: SDKClient,
  ms: number,
  parents: Array<AbortSignal | undefined>,
): IdleTimer {
  const controller = new AbortController()
  let expired = false
  const fire = () => {
    expired = true
    controller.abort(new DOMException(`no progress within ${ms} ms`, 'TimeoutError'))
  }
  let timer = setTimeout(fire, ms)
  const onParent = (event: Event) => controller.abort((event.target as AbortSignal).reason)
  for (const parent of parents) {
    if (parent?.aborted) controller.abort(parent.reason)
    else parent?.addEventListener('abort', onParent, { once: true })
  }
  return {
    signal: controller.signal,
    timedOut: () => expired,
    reset: () => {
      clearTimeout(timer)
      if (!controller.signal.aborted) timer = setTimeout(fire, ms)
    },
    clear: () => {
      clearTimeout(timer)
      for (const parent of parents) parent?.removeEventListener('abort', onParent)
    },
  }
}

export function updateRates(_client: SDKClient, session: Session, roll = false): void {
  const { traffic, rates } = session
  if (traffic === undefined) return
  const now = Date.now()
  const seconds = (now - rates.at) / 1000
  if (seconds <= 0) return
  const perSecond = {
    sent: Math.round((traffic.totals.sent - rates.totals.sent) / seconds),
    received: Math.round((traffic.totals.received - rates.totals.received) / seconds),
  }
  if (roll) session.rates = { at: now, totals: { ...traffic.totals }, perSecond }
  else if (rates.perSecond.sent === 0 && rates.perSecond.received === 0) rates.perSecond = perSecond
}

export function dataLimitReached(
  client: SDKClient,
  session: Session,
  limit: string,
  totals: ByteCounts,
): void {
  const value = client.config.p2pConfig.connectionManager[limit as 'maxData']
  session.limit = new DataLimitExceededError(
    `connectionManager.${limit} (${value} bytes) exceeded: ${totals.sent} bytes sent, ${totals.received} received since connect()`,
    { details: { limit, value, ...totals } },
  )
  client.debug('sdk', 'error', session.limit.shortMessage)
  for (const job of session.jobs) job.abort(session.limit)
  for (const connection of session.node.libp2p.getConnections()) connection.abort(session.limit)
}

/** Dials a node, waits for security.authenticate, and exchanges certificates for pool jobs. */
export async function ready(
  client: SDKClient,
  session: Session,
  peer: DiscoveredNode,
  poolId: string | undefined,
  signal: AbortSignal,
): Promise<void> {
  const limit = deadline(client, client.config.p2pConfig.dialTimeout, signal)
  let connection: Connection
  try {
    connection = await session.node.libp2p.dial(peerTarget(peer), { signal: limit.signal })
  } finally {
    limit.clear()
  }
  await requireAccepted(session, peer.nodeId)
  if (poolId !== undefined) await exchange(client, session, connection)
}

/** Waits for security.authenticate's verdict on a connected peer; PeerRefusedError when it refused. */
export async function requireAccepted(session: Session, nodeId: string): Promise<void> {
  const verdict = session.verdicts.get(nodeId)
  if (verdict !== undefined && !(await verdict)) throw new PeerRefusedError(nodeId, 'the hook returned false')
}

/** Certificate exchange over one connection, once (the gate also starts one on each outbound connection). */
export function exchange(client: SDKClient, session: Session, connection: Connection): Promise<string[]> {
  const { gate } = session
  if (gate === undefined) return Promise.resolve([])
  let exchange = session.exchanged.get(connection.id)
  if (exchange === undefined) {
    exchange = gate.exchange(connection.remotePeer).catch((err: Error) => {
      session.exchanged.delete(connection.id)
      client.debug(
        'pool',
        'info',
        `certificate exchange with ${connection.remotePeer} failed: ${err.message}`,
      )
      return []
    })
    session.exchanged.set(connection.id, exchange)
  }
  return exchange
}
