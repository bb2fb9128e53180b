import type { GossipSub } from '@libp2p/gossipsub'
import { InvalidArgumentError } from '@meshnet/core'
import { type BeaconMessage, createMeshNode, type MeshNode, type Perf, perfService } from '@meshnet/discovery'
import { PoolGate } from '@meshnet/pool'
import { poolRendezvousKey } from '@meshnet/protocols'
import { ringPubsub } from '@meshnet/ring'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import type { AgentContext, AgentPart } from './agent.ts'
import type { BeaconsPart } from './beacons-part.ts'
import { RendezvousSchedule } from './rendezvous.ts'

export type AgentNode = MeshNode<{ pubsub: GossipSub; perf: Perf }>

/** The agent's libp2p node, the certificate gate in front of pool protocols, and peer discovery. */
export interface MeshPart extends AgentPart {
  node(): AgentNode
  readonly gate: () => PoolGate
}

/** Between presence beacons sent in answer to a member we are not connected to. */
const ANSWER_GAP_MS = 500
/**
 * How long the higher node id of two waits for the lower one to dial it, as when the lower one
 * cannot reach it. A handshake on a loaded machine takes seconds (16 agents on two cores: 3 s for
 * half of them, up to 11 s), and a dial started while the other's is still in its handshake opens
 * a second connection: at 5 s, 50 of the 170 connections among 16 agents were such duplicates.
 */
const DIAL_FIRST_MS = 15_000

/**
 * The addresses of a beacon worth dialing: its plain TCP ones when it has any. libp2p tries a
 * peer's addresses one after another, so a TCP handshake that ran out of its time was followed by a
 * WebSocket one to the same agent (the WebSocket listener serves browsers).
 */
export function beaconDialAddresses(addresses: string[]): Multiaddr[] {
  const all = addresses.map((a) => multiaddr(a))
  const tcp = all.filter((address) => {
    const [ip, transport, ...rest] = address.getComponents()
    return ip !== undefined && transport?.name === 'tcp' && rest.every((c) => c.name === 'p2p')
  })
  return tcp.length > 0 ? tcp : all
}

/**
 * Starts the libp2p node from the agent's settings (`--local-only` keeps it on 127.0.0.1 with mDNS,
 * UPnP and AutoNAT off), exchanges certificates with every peer it connects to, records peers in
 * mesh_state.db, and finds pool members three ways: LAN presence beacons carrying addresses, mDNS,
 * and provider records of the pool in the DHT (which also works through a bootstrap relay).
 */
export function meshPart(context: AgentContext, beaconsPart: BeaconsPart | undefined): MeshPart {
  const { config, logger, store, identity } = context
  let node: AgentNode | undefined
  let gate: PoolGate | undefined
  let rendezvous: NodeJS.Timeout | undefined
  const dialing = new Set<string>()
  /** A presence beacon due in answer to members we are not connected to. */
  let answer: NodeJS.Timeout | undefined
  const counts = { beaconDials: 0, dhtDials: 0, provides: 0, lookups: 0 }

  const isConnected = (nodeId: string) =>
    node?.libp2p.getConnections().some((c) => c.remotePeer.toString() === nodeId) === true

  const dial = async (nodeId: string, addresses: string[], via: 'beaconDials' | 'dhtDials') => {
    if (node === undefined || nodeId === identity.nodeId || dialing.has(nodeId)) return
    if (isConnected(nodeId)) return
    dialing.add(nodeId)
    try {
      await node.libp2p.dial(beaconDialAddresses(addresses), { signal: AbortSignal.timeout(10_000) })
      counts[via]++
    } catch (err) {
      logger.debug({ nodeId, err: (err as Error).message }, 'dial failed')
    } finally {
      dialing.delete(nodeId)
    }
  }

  const onPresence = (message: BeaconMessage) => {
    if (message.type !== 'presence' || gate === undefined) return
    const body = message.body as { pools?: unknown; addrs?: unknown }
    const theirs = Array.isArray(body?.pools) ? body.pools : []
    const addrs = Array.isArray(body?.addrs)
      ? body.addrs.filter((a): a is string => typeof a === 'string').slice(0, 16)
      : []
    const shared = gate.pools().some((p) => theirs.includes(p.id))
    if (!shared || addrs.length === 0) return
    const from = message.from.nodeId
    if (isConnected(from)) return
    // A member we are not connected to may not have heard us (it just started): answer with our
    // own presence, so that both know of the other at once. Answers to several members share one
    // beacon, at most one per ANSWER_GAP_MS; one due within the gap is sent when it ends.
    if (beaconsPart !== undefined && answer === undefined) {
      const wait = beaconsPart.beacons.lastPresenceAt + ANSWER_GAP_MS - Date.now()
      answer = setTimeout(
        () => {
          answer = undefined
          if (node !== undefined) beaconsPart.beacons.announce()
        },
        Math.max(0, wait),
      )
      answer.unref()
    }
    // Two members that both dial on hearing the other end up with two connections (two handshakes,
    // identifies and sets of streams). The lower node id dials; the higher one dials only if no
    // connection came by the time a dial should have, as when the other cannot reach it.
    if (identity.nodeId < from) void dial(from, addrs, 'beaconDials')
    else setTimeout(() => void dial(from, addrs, 'beaconDials'), DIAL_FIRST_MS).unref()
  }

  /**
   * Stores the pools' provider records when due, then looks up the other members of each pool and
   * dials those we are not connected to; true when there was one.
   */
  const lookUpPools = async (schedule: RendezvousSchedule): Promise<boolean> => {
    if (node === undefined || gate === undefined || config.dht === false) return false
    let foundNew = false
    for (const pool of gate.pools()) {
      const key = await poolRendezvousKey(pool.id)
      if (schedule.provideDue(pool.id, Date.now())) {
        let reached = 0
        try {
          counts.provides++
          await node.libp2p.contentRouting.provide(key, {
            signal: AbortSignal.timeout(4_000),
            onProgress: (event: { type: string; detail?: unknown }) => {
              const detail = event.detail as { messageName?: string } | undefined
              if (event.type === 'kad-dht:query:peer-response' && detail?.messageName === 'ADD_PROVIDER')
                reached++
            },
          })
        } catch (err) {
          logger.debug({ err: (err as Error).message }, 'pool provider record not stored yet')
        }
        schedule.provided(pool.id, reached, Date.now())
      }
      try {
        counts.lookups++
        for await (const provider of node.libp2p.contentRouting.findProviders(key, {
          signal: AbortSignal.timeout(4_000),
        })) {
          const nodeId = provider.id.toString()
          const addrs = provider.multiaddrs.map((a) => `${a.toString()}/p2p/${nodeId}`)
          if (addrs.length === 0 || nodeId === identity.nodeId || isConnected(nodeId)) continue
          foundNew = true
          void dial(nodeId, addrs, 'dhtDials')
        }
      } catch (err) {
        logger.debug({ err: (err as Error).message }, 'pool provider lookup ended')
      }
    }
    return foundNew
  }

  return {
    name: 'libp2p',
    node: () => {
      if (node === undefined) throw new Error('the libp2p node is not started')
      return node
    },
    gate: () => {
      if (gate === undefined) throw new Error('the pool gate is not started')
      return gate
    },
    async start() {
      if (config.bootstrap === true && config.dht === false) {
        throw new InvalidArgumentError(
          'bootstrap: true makes this node a bootstrap node, which needs the DHT on',
          {
            hint: 'remove dht: false (or --no-dht), or set bootstrap to a list of peers instead',
          },
        )
      }
      node = await createMeshNode({
        identity,
        dataDir: context.layout.root,
        localOnly: config.localOnly === true,
        // `/p2p-circuit` alone means: no socket of our own, reachable only through the relays.
        ...(config.listen ? { listen: config.listen.filter((a) => a !== '/p2p-circuit') } : {}),
        bootstrap: Array.isArray(config.bootstrap) ? config.bootstrap : [],
        ...(config.mdns === undefined ? {} : { mdns: config.mdns }),
        dhtMode: config.dht === false ? 'off' : 'server',
        relays: config.relay ?? [],
        upnp: config.upnp === true,
        // Relays the user names are used at once, not only after AutoNAT finds us unreachable.
        ...(config.relay?.length ? { relayReservations: 'always' as const } : {}),
        logger,
        // perf: anyone may measure throughput to an agent (`/perf/1.0.0`, capped per stream).
        services: {
          pubsub: ringPubsub((peerId) => gate?.isMemberOfAny(peerId) === true),
          perf: perfService(),
        },
      })
      gate = new PoolGate({ node, dataDir: context.layout.root, logger })
      await gate.start()
      node.libp2p.addEventListener('peer:identify', (event) => {
        const { peerId, listenAddrs } = event.detail
        store.upsertPeer(peerId.toString(), { addresses: listenAddrs.map(String) })
      })
      beaconsPart?.addPresence(() => ({ addrs: node ? node.multiaddrs().map(String).slice(0, 8) : [] }))
      if (beaconsPart) beaconsPart.beacons.onMessage(onPresence)
      // The beacon sent when the beacons started carried no addresses yet: tell the LAN now.
      beaconsPart?.beacons.announce()
      // Provide and look up at once, then on the schedule's backoff (see RendezvousSchedule).
      const schedule = new RendezvousSchedule()
      const round = async () => {
        const foundNew = await lookUpPools(schedule)
        if (node === undefined) return
        const memberConnected = node.libp2p
          .getConnections()
          .some((c) => gate?.isMemberOfAny(c.remotePeer.toString()) === true)
        rendezvous = setTimeout(() => void round(), schedule.nextRoundMs(foundNew, memberConnected))
      }
      rendezvous = setTimeout(() => void round(), 0)
      logger.info({ addresses: node.multiaddrs().map(String) }, 'libp2p node listening')
    },
    async stop() {
      clearTimeout(rendezvous)
      clearTimeout(answer)
      await gate?.stop()
      const stopping = node
      node = undefined
      await stopping?.stop()
    },
    status: () =>
      node === undefined
        ? {}
        : {
            addresses: node.multiaddrs().map(String),
            connections: node.libp2p.getConnections().length,
            // Each connection: to whom, over which address, and whether a relay carries it.
            links: node.libp2p.getConnections().map((c) => ({
              peer: c.remotePeer.toString(),
              address: c.remoteAddr.toString(),
              relayed: c.remoteAddr.getComponents().some((part) => part.name === 'p2p-circuit'),
              direction: c.direction,
            })),
            peers: node.libp2p.getPeers().map(String),
            gate: gate?.stats(),
            // Requests reset before an answer (oversized, too slow, broken), by error name.
            requestDrops: node.requestDrops(),
            discovery: counts,
            connectivity: node.connectivity(),
          },
  }
}
