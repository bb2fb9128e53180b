import { setTimeout as sleep } from 'node:timers/promises'
import { type PeerId, peerDiscoverySymbol } from '@libp2p/interface'
import { createMeshNode } from '@meshnet/discovery'
import { dataDirLayout, generateIdentity, loadOrCreateIdentity } from '@meshnet/identity'
import { PoolGate } from '@meshnet/pool'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { SDKClient } from '../client.ts'
import { debugComponentLogger } from '../debug-log.ts'
import { BootstrapUnreachableError, type PoolCertificateError, SDKConfigError } from '../errors.ts'
import { bootstrapFailureMessage, bootstrapFailureReason } from '../internal/bootstrap-failure.ts'
import { watchEventLoop } from '../internal/event-loop.ts'
import { abortion, lastPeerId, transportOf } from '../internal/helpers.ts'
import {
  connectResult,
  dataLimitReached,
  deadline,
  pingPeer,
  requireAccepted,
  stopSession,
  updateRates,
} from '../internal/session.ts'
import { discoveryServiceName, meshNodeOptionsOf } from '../node-options.ts'
import { loadSDKPool } from '../pool.ts'
import { TrafficMetrics } from '../traffic.ts'
import { type BootstrapResult, type ConnectResult, NO_MODEL, type Session } from '../types.ts'
import { discover } from './discoverNodes.ts'

export type ConnectParameters = undefined
export type ConnectReturnType = ConnectResult
export type ConnectErrorType = BootstrapUnreachableError | SDKConfigError | PoolCertificateError

/**
 * Starts the node and dials the bootstrap nodes, `maxRetries` more rounds `retryDelay` apart.
 * Throws BootstrapUnreachableError when bootstrap nodes are configured and none answered.
 */
export async function connect(client: SDKClient): Promise<ConnectReturnType> {
  if (client.session !== undefined) return connectResult(client, client.session)
  client.connecting ??= openSession(client).finally(() => {
    client.connecting = undefined
  })
  return client.connecting
}

async function openSession(client: SDKClient): Promise<ConnectResult> {
  const { config } = client
  const p2p = config.p2pConfig
  const identity =
    config.identity ??
    (config.dataDir === undefined
      ? generateIdentity()
      : (await loadOrCreateIdentity(dataDirLayout(config.dataDir).identityKey)).identity)
  const pool =
    config.dataDir === undefined ? undefined : await loadSDKPool(config.dataDir, config.poolId, identity)

  let session: Session | undefined
  const traffic = p2p.metrics.enabled
    ? new TrafficMetrics({
        limits: p2p.connectionManager,
        onLimit: (limit, totals) => {
          if (session !== undefined) dataLimitReached(client, session, limit, totals)
        },
      })
    : undefined
  const componentLogger = p2p.debug.enabled
    ? debugComponentLogger({
        subsystems: p2p.debug.subsystems,
        level: client.level,
        verbose: p2p.debug.verbose,
        emit: (event) => client.emit('p2p:debug', event),
      })
    : undefined
  const node = await createMeshNode(
    meshNodeOptionsOf(config, identity, {
      ...(traffic ? { metrics: () => traffic } : {}),
      ...(componentLogger ? { componentLogger } : {}),
    }),
  )
  const now = Date.now()
  session = {
    node,
    identity,
    gate: undefined,
    pool,
    traffic,
    startedAt: now,
    timers: [],
    lifetime: new AbortController(),
    verdicts: new Map(),
    exchanged: new Map(),
    jobs: new Set(),
    discovered: new Map(),
    bootstrap: [],
    limit: undefined,
    autoDialing: false,
    rates: { at: now, totals: { sent: 0, received: 0 }, perSecond: { sent: 0, received: 0 } },
  }
  try {
    p2p.peerDiscovery.forEach((factory, index) => {
      if (typeof factory !== 'function') return
      const service = (node.libp2p.services as Record<string, unknown>)[discoveryServiceName(index)]
      if ((service as { [peerDiscoverySymbol]?: unknown } | undefined)?.[peerDiscoverySymbol] === undefined) {
        throw new SDKConfigError(
          `p2pConfig.peerDiscovery[${index}]`,
          'built a service without a peer discovery interface (peerDiscoverySymbol); pass a libp2p peer-discovery factory',
        )
      }
    })
    for (const protocol of p2p.protocols) {
      await node.libp2p.handle(protocol.id, protocol.handler, {
        maxInboundStreams: protocol.maxInboundStreams,
        runOnLimitedConnection: protocol.runOnLimitedConnection,
      })
    }
    listen(client, session)
    watchEventLoop(client, session)
    if (pool !== undefined && config.dataDir !== undefined) {
      session.gate = new PoolGate({
        node,
        dataDir: config.dataDir,
        ...(config.logger ? { logger: config.logger } : {}),
      })
      await session.gate.start()
    }
    session.bootstrap = await dialBootstrap(client, session)
    if (session.bootstrap.length > 0 && !session.bootstrap.some((b) => b.reachable)) {
      throw new BootstrapUnreachableError(bootstrapFailureMessage(session.bootstrap, p2p.maxRetries + 1), {
        details: { attempts: session.bootstrap },
      })
    }
  } catch (err) {
    await stopSession(client, session)
    throw err
  }
  client.session = session
  startTimers(client, session)
  client.debug(
    'sdk',
    'info',
    `connected as ${identity.nodeId}${pool ? ` (pool ${pool.poolId}, ${pool.role})` : ''}`,
  )
  return connectResult(client, session)
}

/** Stops every job, timer and connection and the node. Safe to call twice. */
export type DisconnectReturnType = undefined

/** Stops every job, timer and connection and the node. Safe to call twice. */
export async function disconnect(client: SDKClient): Promise<void> {
  await client.connecting?.catch(() => {})
  const session = client.session
  client.session = undefined
  if (session === undefined) return
  await stopSession(client, session)
  client.debug('sdk', 'info', 'disconnected')
}

export async function dialBootstrap(client: SDKClient, session: Session): Promise<BootstrapResult[]> {
  const p2p = client.config.p2pConfig
  const results: BootstrapResult[] = p2p.bootstrapNodes.map((address) => ({
    address,
    nodeId: lastPeerId(address),
    reachable: false,
    attempts: 0,
  }))
  if (results.length === 0) return results
  // Refused by security.authenticate: closed and denied until disconnect(), so not dialled again.
  const refused = new Set<BootstrapResult>()
  for (let round = 0; round <= p2p.maxRetries; round++) {
    if (round > 0) await sleep(p2p.retryDelay)
    await Promise.all(
      results
        .filter((result) => !result.reachable && !refused.has(result))
        .map(async (result) => {
          result.attempts++
          const limit = deadline(client, p2p.dialTimeout)
          try {
            const connection = await session.node.libp2p.dial(multiaddr(result.address), {
              signal: limit.signal,
            })
            await requireAccepted(session, connection.remotePeer.toString())
            result.reachable = true
            delete result.error
            client.debug('sdk', 'debug', `bootstrap node ${result.address} reachable`)
          } catch (err) {
            // The hook may refuse the node, and close its connection, before the dial returns.
            const refusal =
              (err as Error).name === 'PeerRefusedError'
                ? (err as Error)
                : await requireAccepted(session, result.nodeId).then(
                    () => undefined,
                    (e: Error) => e,
                  )
            if (refusal !== undefined) refused.add(result)
            result.error = bootstrapFailureReason(refusal ?? err, limit.timedOut(), p2p.dialTimeout)
            client.debug('sdk', 'info', `bootstrap node ${result.address} failed: ${result.error}`)
          } finally {
            limit.clear()
          }
        }),
    )
    if (results.some((result) => result.reachable)) break
  }
  return results
}

export function listen(client: SDKClient, session: Session): void {
  const { node } = session
  const { security, transports, connectionManager } = client.config.p2pConfig
  node.libp2p.addEventListener('peer:connect', (event) => {
    const peerId = event.detail.toString()
    const address = node.libp2p.getConnections(event.detail)[0]?.remoteAddr.toString()
    client.debug('sdk', 'debug', `peer ${peerId} connected`)
    client.emit('peer:connect', { peerId, ...(address ? { address } : {}) })
  })
  node.libp2p.addEventListener('peer:disconnect', (event) => {
    client.emit('peer:disconnect', { peerId: event.detail.toString() })
  })
  node.libp2p.addEventListener('peer:discovery', (event) => {
    const peerId = event.detail.id.toString()
    client.debug('sdk', 'debug', `discovered peer ${peerId}`)
    if (connectionManager.autoDial && session.limit === undefined) void autoDial(client, session)
  })
  node.libp2p.addEventListener('connection:open', (event) => {
    const connection = event.detail
    for (const [name, transport] of [
      ['websocket', transports.websocket],
      ['tcp', transports.tcp],
    ] as const) {
      if (transport.maxConnections === undefined || transportOf(connection.remoteAddr) !== name) continue
      const open = node.libp2p.getConnections().filter((c) => transportOf(c.remoteAddr) === name)
      if (open.length > transport.maxConnections) {
        client.debug('sdk', 'info', `closing a ${name} connection over transports.${name}.maxConnections`)
        void connection.close().catch(() => connection.abort(new Error('over the transport connection cap')))
        return
      }
    }
    const hook = security.authenticate
    if (hook === undefined) return
    const peer = connection.remotePeer.toString()
    const verdict = (async () => {
      const limit = deadline(client, client.config.p2pConfig.requestTimeout)
      try {
        return (
          (await Promise.race([hook(connection.remotePeer, connection), abortion(limit.signal)])) === true
        )
      } catch (err) {
        client.debug('sdk', 'info', `security.authenticate threw for ${peer}: ${(err as Error).message}`)
        return false
      } finally {
        limit.clear()
      }
    })()
    session.verdicts.set(peer, verdict)
    void verdict.then(async (ok) => {
      // Also during connect(), before the session is the client's: a refused bootstrap node too.
      if (ok || session.lifetime.signal.aborted) return
      client.debug('sdk', 'info', `security.authenticate refused ${peer}; closing and denying it`)
      await node.denyPeer(peer).catch(() => {})
    })
  })
}

export function startTimers(client: SDKClient, session: Session): void {
  const p2p = client.config.p2pConfig
  const every = (ms: number, task: () => Promise<unknown>) => {
    let running = false
    const timer = setInterval(() => {
      if (running || session.lifetime.signal.aborted) return
      running = true
      void task()
        .catch((err: Error) => client.debug('sdk', 'debug', `background task failed: ${err.message}`))
        .finally(() => {
          running = false
        })
    }, ms)
    timer.unref()
    session.timers.push(timer)
  }
  if (p2p.keepAlive.enabled) every(p2p.keepAlive.interval, () => keepAlive(client, session))
  if (p2p.connectionManager.autoDial)
    every(p2p.connectionManager.autoDialInterval, () => autoDial(client, session))
  const dht = session.node.libp2p.services.dht
  if (dht !== undefined)
    every(p2p.dhtOptions.refreshInterval, () => dht.refreshRoutingTable({ signal: session.lifetime.signal }))
  if (p2p.discoveryOptions.interval > 0)
    every(p2p.discoveryOptions.interval, () => rediscover(client, session))
  if (session.traffic !== undefined) {
    every(p2p.metrics.movingAverageInterval, async () => updateRates(client, session, true))
  }
}

/** Pings every connected peer; one that does not answer within keepAlive.timeout is hung up on. */
export async function keepAlive(client: SDKClient, session: Session): Promise<void> {
  const { node } = session
  const { keepAlive } = client.config.p2pConfig
  await Promise.all(
    node.libp2p.getPeers().map(async (peer) => {
      try {
        await pingPeer(client, session, peer, keepAlive.timeout, session.lifetime.signal)
      } catch (err) {
        if (session.lifetime.signal.aborted) return
        client.debug(
          'sdk',
          'info',
          `keep-alive ping to ${peer} failed (${(err as Error).message}); hanging up`,
        )
        await node.libp2p.hangUp(peer).catch(() => {})
      }
    }),
  )
}

/** Tops connections up to connectionManager.minConnections: bootstrap nodes first, then known peers. */
export async function autoDial(client: SDKClient, session: Session): Promise<void> {
  const { node } = session
  const p2p = client.config.p2pConfig
  if (session.limit !== undefined || session.lifetime.signal.aborted || session.autoDialing) return
  const connected = new Set(node.libp2p.getPeers().map(String))
  const missing = p2p.connectionManager.minConnections - connected.size
  if (missing <= 0) return
  session.autoDialing = true
  try {
    await dialUpTo(client, session, connected, missing)
  } finally {
    session.autoDialing = false
  }
}

export async function dialUpTo(
  client: SDKClient,
  session: Session,
  connected: Set<string>,
  wanted: number,
): Promise<void> {
  const { node } = session
  const p2p = client.config.p2pConfig
  let missing = wanted
  const targets: Array<Multiaddr | PeerId> = []
  for (const address of p2p.bootstrapNodes) {
    if (!connected.has(lastPeerId(address))) targets.push(multiaddr(address))
  }
  for (const peer of await node.libp2p.peerStore.all()) {
    const id = peer.id.toString()
    if (connected.has(id) || id === session.identity.nodeId || peer.addresses.length === 0) continue
    if (p2p.bootstrapNodes.some((address) => lastPeerId(address) === id)) continue
    targets.push(peer.id)
  }
  for (const target of targets) {
    if (missing <= 0 || session.lifetime.signal.aborted) break
    const limit = deadline(client, p2p.dialTimeout, session.lifetime.signal)
    try {
      await node.libp2p.dial(target, { signal: limit.signal })
      missing--
      client.debug('sdk', 'debug', `auto-dialed ${target.toString()}`)
    } catch (err) {
      client.debug('sdk', 'debug', `auto-dial of ${target.toString()} failed: ${(err as Error).message}`)
    } finally {
      limit.clear()
    }
  }
}

/** Re-runs the discoveries asked for so far; emits `nodes:discovered` only when the set changed. */
export async function rediscover(client: SDKClient, session: Session): Promise<void> {
  for (const key of [...session.discovered.keys()]) {
    const [model, poolId] = key.split('\u0000')
    await discover(
      client,
      session,
      { ...(model === NO_MODEL ? {} : { model }), ...(poolId ? { poolId } : {}), forceRefresh: true },
      'changed',
    ).catch((err: Error) => client.debug('sdk', 'debug', `rediscovery failed: ${err.message}`))
  }
}
