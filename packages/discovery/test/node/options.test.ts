import { generateIdentity } from '@meshnet/identity'
import { isMeshnetProtocol, meshnetProtocol } from '@meshnet/protocols'
import { describe, expect, it } from 'vitest'
import {
  DEFAULT_DHT_PROTOCOL,
  DEFAULT_LISTEN,
  DEFAULT_LOCAL_LISTEN,
  DEFAULT_MDNS_SERVICE_TAG,
} from '../../src/node/defaults.ts'
import { resolveMeshNodeOptions } from '../../src/node/options.ts'

const identity = generateIdentity()
const other = generateIdentity()
const relayAddr = `/ip4/127.0.0.1/tcp/4610/p2p/${other.nodeId}`

function fieldOf(options: Record<string, unknown>): string {
  try {
    resolveMeshNodeOptions({ identity, ...options })
  } catch (err) {
    expect(err).toMatchObject({ name: 'InvalidArgumentError', code: 'ERR_INVALID_ARGUMENT' })
    return String((err as { details: { field: string } }).details.field)
  }
  throw new Error('options were accepted')
}

describe('mesh node options', () => {
  it('fills in LAN defaults: all interfaces, mDNS and AutoNAT on, UPnP off, DHT server', () => {
    const options = resolveMeshNodeOptions({ identity })
    expect(options.listen).toEqual(DEFAULT_LISTEN)
    expect(options).toMatchObject({
      localOnly: false,
      mdns: true,
      mdnsServiceTag: DEFAULT_MDNS_SERVICE_TAG,
      autoNAT: true,
      upnp: false,
      dcutr: true,
      dhtMode: 'server',
      dhtProtocol: DEFAULT_DHT_PROTOCOL,
      relayReservations: 'auto',
      relayServer: false,
    })
    expect(options.relayServerLimits.maxReservations).toBeGreaterThan(0)
  })

  it('localOnly turns mDNS and AutoNAT off and listens on loopback with OS-chosen ports', () => {
    const options = resolveMeshNodeOptions({ identity, localOnly: true })
    expect(options).toMatchObject({ mdns: false, autoNAT: false, upnp: false })
    expect(options.listen).toEqual(DEFAULT_LOCAL_LISTEN)
  })

  it('localOnly refuses anything that would leave the machine, naming the field', () => {
    expect(fieldOf({ localOnly: true, mdns: true })).toBe('mdns')
    expect(fieldOf({ localOnly: true, autoNAT: true })).toBe('autoNAT')
    expect(fieldOf({ localOnly: true, upnp: true })).toBe('upnp')
    expect(fieldOf({ localOnly: true, listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/0.0.0.0/tcp/0'] })).toBe(
      'listen[1]',
    )
    expect(fieldOf({ localOnly: true, announce: ['/ip4/192.168.1.2/tcp/4610'] })).toBe('announce[0]')
    expect(fieldOf({ localOnly: true, bootstrap: [`/ip4/10.0.0.1/tcp/1/p2p/${other.nodeId}`] })).toBe(
      'bootstrap[0]',
    )
  })

  it('names the field of a malformed value', () => {
    expect(fieldOf({ listen: ['not-a-multiaddr'] })).toBe('listen[0]')
    expect(fieldOf({ bootstrap: ['/ip4/1.2.3.4/tcp/4610'] })).toBe('bootstrap[0]')
    expect(fieldOf({ relays: [relayAddr, '/ip4/1.2.3.4/tcp/1'] })).toBe('relays[1]')
    expect(fieldOf({ denyPeers: ['nobody'] })).toBe('denyPeers[0]')
    expect(fieldOf({ denyAddresses: ['/ip4/10.0.0.1/tcp/5'] })).toBe('denyAddresses[0]')
    expect(fieldOf({ maxConnections: 0 })).toBe('maxConnections')
    expect(fieldOf({ dialTimeoutMs: 1.5 })).toBe('dialTimeoutMs')
    expect(fieldOf({ dhtMode: 'fast' })).toBe('dhtMode')
    expect(fieldOf({ dhtProtocol: '/ipfs/kad/1.0.0' })).toBe('dhtProtocol')
    expect(fieldOf({ mdnsServiceTag: 'meshnet' })).toBe('mdnsServiceTag')
    expect(fieldOf({ relayServerLimits: { maxReservations: -1 } })).toBe('relayServerLimits.maxReservations')
    expect(fieldOf({ preSharedKey: 'secret' })).toBe('preSharedKey')
    expect(fieldOf({ listne: [] })).toBe('listne')
    expect(fieldOf({ identity: { nodeId: 'x' } })).toBe('identity')
  })

  it('refuses combinations that cannot work', () => {
    expect(fieldOf({ relayReservations: 'always' })).toBe('relays')
    expect(fieldOf({ relayServer: true, dhtMode: 'client' })).toBe('dhtMode')
    expect(fieldOf({ websockets: false, listen: ['/ip4/0.0.0.0/tcp/1/ws'] })).toBe('listen[0]')
    expect(fieldOf({ services: { dht: () => ({}) } })).toBe('services.dht')
  })

  it('makes a relay server a DHT server', () => {
    expect(resolveMeshNodeOptions({ identity, relayServer: true, dhtMode: 'auto' }).dhtMode).toBe('server')
  })

  it('accepts a swarm key as text or bytes', () => {
    const key = `/key/swarm/psk/1.0.0/\n/base16/\n${'ab'.repeat(32)}\n`
    expect(resolveMeshNodeOptions({ identity, preSharedKey: key }).preSharedKey).toBe(key)
    expect(
      resolveMeshNodeOptions({ identity, preSharedKey: new TextEncoder().encode(key) }).preSharedKey,
    ).toBe(key)
  })
})

describe('protocol ids', () => {
  it('are /meshnet/<name>/<semver>', () => {
    expect(meshnetProtocol('pool/cert', '1.0.0')).toBe('/meshnet/pool/cert/1.0.0')
    expect(isMeshnetProtocol('/meshnet/kad/1.0.0')).toBe(true)
    expect(isMeshnetProtocol('/ipfs/kad/1.0.0')).toBe(false)
    expect(() => meshnetProtocol('Pool', '1')).toThrow(/not of the form/)
  })
})
