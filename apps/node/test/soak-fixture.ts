import { randomBytes } from 'node:crypto'
import { createSocket, type Socket } from 'node:dgram'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { GossipSub, Message } from '@libp2p/gossipsub'
import { createMeshNode, DEFAULT_BEACON_GROUP, type MeshNode } from '@meshnet/discovery'
import { generateIdentity, type NodeIdentity } from '@meshnet/identity'
import { type Certificate, encodeCertificate, POOL_CERT_PROTOCOL } from '@meshnet/pool'
import { frameStream } from '@meshnet/protocols'
import { ringPubsub } from '@meshnet/ring'
import { multiaddr } from '@multiformats/multiaddr'
import { decode, encode } from 'cborg'

// The attacker's side of the soak test (soak.test.ts): libp2p nodes outside the pool that speak
// every protocol by hand, a UDP sender on the beacon group, and what the test reads of the agents.

/** An agent as an attacker sees it. */
export interface Target {
  name: string
  nodeId: string
  /** Its first libp2p address, ending in /p2p/<node id>. */
  address: string
  /** Its raw Ed25519 public key (from the noise handshake). */
  publicKey?: Uint8Array
}

export const garbage = (max: number, min = 1) =>
  randomBytes(min + Math.floor(Math.random() * (max - min + 1)))

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** A gossipsub message as it went over the wire: what a replay resends verbatim. */
interface RawMessage {
  from: Uint8Array
  data: Uint8Array
  seqno: Uint8Array
  topic: string
  signature: Uint8Array
}

/** Gossipsub's own sender: private in its types, used here to resend captured messages untouched. */
interface RpcSender {
  sendRpc(peer: string, rpc: { subscriptions: never[]; messages: RawMessage[] }): boolean
}

export type Attacker = Awaited<ReturnType<typeof attacker>>

/**
 * A libp2p node with the ring's gossipsub (it scores everyone as a member, so it takes whatever
 * the agents send it) connected to `targets`. Every method answers whether the target replied, and
 * throws only when the stream could not be opened or was reset, which is what an attack expects.
 */
export async function attacker(targets: Target[], identity: NodeIdentity = generateIdentity()) {
  const node: MeshNode<{ pubsub: GossipSub }> = await createMeshNode({
    identity,
    localOnly: true,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    websockets: false,
    dhtMode: 'off',
    services: { pubsub: ringPubsub(() => true) },
  })
  /** Gossip it received while it was trusted, by topic. */
  const captured = new Map<string, Message[]>()
  node.libp2p.services.pubsub.addEventListener('message', (event) => {
    const list = captured.get(event.detail.topic) ?? []
    list.push(event.detail)
    if (list.length > 64) list.shift()
    captured.set(event.detail.topic, list)
  })

  /** Dials `target` again when it has no connection (a revocation hangs the peer up). */
  const connect = async (target: Target) => {
    const open = node.libp2p.getConnections().find((c) => c.remotePeer.toString() === target.nodeId)
    if (open !== undefined) return
    const connection = await node.libp2p.dial(multiaddr(target.address), {
      signal: AbortSignal.timeout(10_000),
    })
    target.publicKey ??= connection.remotePeer.publicKey?.raw
  }
  for (const target of targets) await connect(target)

  return {
    node,
    identity,
    captured,
    connect,

    /** One request on a request/response protocol (pool-cert, pool-ring); the reply. */
    request: (target: Target, protocol: string, payload: Uint8Array) =>
      node.request(target.address, protocol, payload, {
        timeoutMs: 10_000,
        maxRequestBytes: Math.max(payload.byteLength, 1),
        maxResponseBytes: 1 << 20,
      }),

    /** Presents certificates on `/meshnet/pool-cert/1.0.0`; returns those the target answered with. */
    async present(target: Target, certs: Array<Certificate | Uint8Array>): Promise<Uint8Array[]> {
      const message = encode({
        v: 1,
        certs: certs.map((c) => (c instanceof Uint8Array ? c : encodeCertificate(c))),
      })
      const reply = await node.request(target.address, POOL_CERT_PROTOCOL, message, { timeoutMs: 10_000 })
      return (decode(reply) as { certs: Uint8Array[] }).certs
    },

    /**
     * Opens a stream of `protocol`, writes `frames` (length-prefixed) and returns the first frame the
     * target answers, or undefined when it closed or reset the stream without one.
     */
    async stream(target: Target, protocol: string, frames: Uint8Array[]): Promise<Uint8Array | undefined> {
      const stream = await node.dialProtocol(target.address, protocol, { timeoutMs: 10_000 })
      const channel = frameStream(stream, { maxFrameBytes: 4 << 20 })
      const signal = AbortSignal.timeout(15_000)
      try {
        for (const frame of frames) await channel.write(frame, { signal })
        return await channel.read({ signal })
      } catch {
        return undefined
      } finally {
        await stream
          .close({ signal: AbortSignal.timeout(2_000) })
          .catch(() => stream.abort(new Error('done')))
      }
    },

    /** Publishes under this node's own gossipsub signature, to every connected peer on the topic. */
    async publish(topic: string, data: Uint8Array): Promise<number> {
      const result = await node.libp2p.services.pubsub.publish(topic, data).catch(() => undefined)
      return result?.recipients.length ?? 0
    },

    /**
     * Resends a captured gossipsub message to `target` exactly as its origin signed it: same origin,
     * sequence number and signature (a true replay, not a re-publication).
     */
    replayRaw(target: Target, message: Message): boolean {
      if (message.type !== 'signed') return false
      const seqno = new Uint8Array(8)
      new DataView(seqno.buffer).setBigUint64(0, message.sequenceNumber)
      const raw: RawMessage = {
        from: message.from.toMultihash().bytes,
        data: message.data,
        seqno,
        topic: message.topic,
        signature: message.signature,
      }
      const pubsub = node.libp2p.services.pubsub as unknown as RpcSender
      return pubsub.sendRpc(target.nodeId, { subscriptions: [], messages: [raw] })
    },

    stop: () => node.stop(),
  }
}

/**
 * UDP on the agents' beacon group over loopback, as agent-fuzz.test.ts sends it: one socket that
 * sends (from an ephemeral port), one bound to the group that records what the agents send (from
 * the beacon port) so that it can be replayed.
 */
export async function beaconAttacker(port: number) {
  const sender = createSocket({ type: 'udp4', reuseAddr: true })
  await new Promise<void>((resolve) => sender.bind(0, '127.0.0.1', resolve))
  sender.setMulticastInterface('127.0.0.1')
  sender.setMulticastTTL(0)
  const listener: Socket = createSocket({ type: 'udp4', reuseAddr: true })
  await new Promise<void>((resolve) => listener.bind(port, DEFAULT_BEACON_GROUP, resolve))
  listener.addMembership(DEFAULT_BEACON_GROUP, '127.0.0.1')
  /** The agents' latest beacons. */
  const captured: Buffer[] = []
  listener.on('message', (data, from) => {
    if (from.port !== port) return // ours, not an agent's
    captured.push(data)
    if (captured.length > 8) captured.shift()
  })
  return {
    captured,
    send: (data: Uint8Array) =>
      new Promise<void>((resolve, reject) =>
        sender.send(data, port, DEFAULT_BEACON_GROUP, (err) => (err ? reject(err) : resolve())),
      ),
    close() {
      sender.close()
      listener.close()
    },
  }
}

/** VmRSS and VmHWM (peak) of a process, in MiB. */
export async function memoryOf(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kib = (field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN)
  return { rss: kib('VmRSS') / 1024, hwm: kib('VmHWM') / 1024 }
}

export interface JobEnd {
  jobId: string
  tokens: number[]
  text: string
  mode: string
  stats: { failovers: number; members: string[] }
}

/** Runs a job through the agent's control API (`POST /jobs`, what `mesh inference` calls). */
export async function runJob(
  dataDir: string,
  request: Record<string, unknown>,
  timeoutMs = 120_000,
): Promise<JobEnd> {
  const { port } = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { port: number }
  const token = (await readFile(join(dataDir, 'control.token'), 'utf8')).trim()
  const response = await fetch(`http://127.0.0.1:${port}/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(request),
    signal: AbortSignal.timeout(timeoutMs),
  })
  const text = await response.text()
  const lines = text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as { type?: string; result?: JobEnd; error?: { message: string } })
  const end = lines.find((line) => line.type === 'end')?.result
  if (!response.ok || end === undefined) {
    const error = lines.find((line) => line.type === 'error' || line.error !== undefined)?.error
    throw new Error(`job failed (HTTP ${response.status}): ${error?.message ?? text.slice(0, 500)}`)
  }
  return end
}
