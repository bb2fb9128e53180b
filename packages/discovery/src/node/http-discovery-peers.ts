import type { PeerId, PeerInfo } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import type { HttpDiscoveryDropReason } from './http-discovery.ts'

/** Most addresses taken per peer. */
const MAX_ADDRESSES_PER_PEER = 16

/** Peers of a response, and what was dropped from it. */
export interface PeerList {
  peers: PeerInfo[]
  dropped: Partial<Record<HttpDiscoveryDropReason, number>>
}

const entrySchema = z.union([
  z.string().max(1_024),
  z.object({
    id: z.string().max(128),
    multiaddrs: z.array(z.string().max(1_024)).min(1).max(MAX_ADDRESSES_PER_PEER),
  }),
])
const bodySchema = z.union([z.array(z.unknown()), z.object({ peers: z.array(z.unknown()) })])

/**
 * Reads a response body (already size-capped) into peers: entries of the wrong shape, addresses
 * that are not multiaddrs or lack the peer id, our own id and entries past `maxPeers` are dropped.
 * Returns `{ error }` when the body as a whole is unusable.
 */
export function parsePeerList(
  body: string,
  self: PeerId,
  maxPeers: number,
): PeerList | { error: 'not-json' | 'bad-schema' } {
  let json: unknown
  try {
    json = JSON.parse(body)
  } catch {
    return { error: 'not-json' }
  }
  const parsed = bodySchema.safeParse(json)
  if (!parsed.success) return { error: 'bad-schema' }
  const entries = Array.isArray(parsed.data) ? parsed.data : parsed.data.peers
  const dropped: PeerList['dropped'] = {}
  const drop = (reason: HttpDiscoveryDropReason, count = 1) => {
    dropped[reason] = (dropped[reason] ?? 0) + count
  }
  const found = new Map<string, PeerInfo>()
  for (const raw of entries) {
    const entry = entrySchema.safeParse(raw)
    if (!entry.success) {
      drop('bad-entry')
      continue
    }
    const peer = toPeer(entry.data, drop)
    if (peer === undefined) continue
    if (peer.id.equals(self)) {
      drop('self')
      continue
    }
    const key = peer.id.toString()
    const known = found.get(key)
    if (known !== undefined) {
      const seen = new Set(known.multiaddrs.map(String))
      for (const addr of peer.multiaddrs) if (!seen.has(addr.toString())) known.multiaddrs.push(addr)
      known.multiaddrs.splice(MAX_ADDRESSES_PER_PEER)
      continue
    }
    if (found.size >= maxPeers) {
      drop('over-limit')
      continue
    }
    found.set(key, peer)
  }
  return { peers: [...found.values()], dropped }
}

function toPeer(
  entry: z.output<typeof entrySchema>,
  drop: (reason: HttpDiscoveryDropReason, count?: number) => void,
): PeerInfo | undefined {
  const addresses = typeof entry === 'string' ? [entry] : entry.multiaddrs
  let id: PeerId | undefined
  if (typeof entry !== 'string') {
    id = peerIdOf(entry.id)
    if (id === undefined) {
      drop('no-peer-id')
      return undefined
    }
  }
  const multiaddrs: Multiaddr[] = []
  for (const text of addresses) {
    let addr: Multiaddr
    try {
      addr = multiaddr(text)
    } catch {
      drop('bad-multiaddr')
      continue
    }
    const last = addr.getComponents().findLast((component) => component.name === 'p2p')?.value
    const addrId = last === undefined ? undefined : peerIdOf(last)
    if (last !== undefined && addrId === undefined) {
      drop('no-peer-id')
      continue
    }
    if (id === undefined) {
      if (addrId === undefined) {
        drop('no-peer-id')
        continue
      }
      id = addrId
    } else if (addrId !== undefined && !addrId.equals(id)) {
      drop('mismatched-peer-id')
      continue
    }
    multiaddrs.push(addr)
  }
  if (id === undefined || multiaddrs.length === 0) return undefined
  return { id, multiaddrs }
}

function peerIdOf(text: string): PeerId | undefined {
  try {
    return peerIdFromString(text)
  } catch {
    return undefined
  }
}
