import { generateIdentity } from '@meshnet/identity'
import { multiaddr } from '@multiformats/multiaddr'
import { describe, expect, it } from 'vitest'
import { dhtAddressMapper, inAddressScope, meshGater } from '../../src/node/gater.ts'

const lan = multiaddr('/ip4/192.168.1.20/tcp/4610')
const loop = multiaddr('/ip4/127.0.0.1/tcp/4610')
const pub = multiaddr('/ip4/8.8.8.8/tcp/4610')
const dns = multiaddr('/dns4/relay.example.org/tcp/4610')

describe('address scopes', () => {
  it('keeps LAN addresses in the default DHT scope, unlike libp2p, and drops loopback', () => {
    expect([lan, loop, pub, dns].map((addr) => inAddressScope(addr, 'routable'))).toEqual([
      true,
      false,
      true,
      true,
    ])
    expect([lan, loop, pub, dns].map((addr) => inAddressScope(addr, 'private'))).toEqual([
      true,
      false,
      false,
      false,
    ])
    expect([lan, loop, pub, dns].map((addr) => inAddressScope(addr, 'public'))).toEqual([
      false,
      false,
      true,
      true,
    ])
    expect([lan, loop, pub, dns].map((addr) => inAddressScope(addr, 'loopback'))).toEqual([
      false,
      true,
      false,
      false,
    ])
  })

  it('maps DHT peer records to the scope', () => {
    const id = generateIdentity().peerId
    expect(dhtAddressMapper('routable')({ id, multiaddrs: [lan, loop, pub] }).multiaddrs).toEqual([lan, pub])
  })
})

describe('mesh connection gater', () => {
  const friend = generateIdentity().peerId
  const foe = generateIdentity().peerId

  it('refuses denied peers at every gate and lets others through', () => {
    const { gater } = meshGater({ allowPeers: undefined, denyPeers: [foe], denyAddresses: [], scope: 'all' })
    expect(gater.denyDialPeer?.(foe)).toBe(true)
    expect(gater.denyDialPeer?.(friend)).toBe(false)
    expect(gater.denyInboundRelayReservation?.(foe)).toBe(true)
    expect(gater.denyOutboundRelayedConnection?.(friend, foe)).toBe(true)
  })

  it('with an allow list, refuses everyone else', () => {
    const gate = meshGater({ allowPeers: [friend], denyPeers: [], denyAddresses: [], scope: 'all' })
    expect(gate.isDenied(friend)).toBe(false)
    expect(gate.isDenied(foe)).toBe(true)
  })

  it('refuses denied networks and, in loopback scope, everything off this machine', () => {
    const { gater } = meshGater({
      allowPeers: undefined,
      denyPeers: [],
      denyAddresses: ['/ip4/192.168.0.0/ipcidr/16'],
      scope: 'all',
    })
    expect(gater.denyDialMultiaddr?.(lan)).toBe(true)
    expect(gater.denyDialMultiaddr?.(pub)).toBe(false)
    const local = meshGater({
      allowPeers: undefined,
      denyPeers: [],
      denyAddresses: [],
      scope: 'loopback',
    }).gater
    expect(local.denyDialMultiaddr?.(loop)).toBe(false)
    expect(local.denyDialMultiaddr?.(lan)).toBe(true)
    expect(local.filterMultiaddrForPeer?.(friend, dns)).toBe(false)
  })
})
