import { describe, expect, it } from 'vitest'
import { beaconDialAddresses } from '../src/agent/mesh-part.ts'

const peer = '12D3KooWAS9EZGVzXHnTuyJo6jXNrHPWBWGdtYnBwUXbS7dkqmfT'
const strings = (addresses: string[]) => beaconDialAddresses(addresses).map(String)

describe('beaconDialAddresses', () => {
  it('dials only the plain TCP addresses of a beacon that has some', () => {
    const tcp = `/ip4/192.168.1.5/tcp/4001/p2p/${peer}`
    const bare = '/ip4/10.0.0.5/tcp/4001'
    expect(
      strings([
        `/ip4/192.168.1.5/tcp/4002/ws/p2p/${peer}`,
        tcp,
        `/ip4/1.2.3.4/tcp/4001/p2p/${peer}/p2p-circuit/p2p/${peer}`,
        bare,
      ]),
    ).toEqual([tcp, bare])
  })

  it('falls back to every address when none is plain TCP', () => {
    const addresses = [
      `/ip4/192.168.1.5/tcp/4002/ws/p2p/${peer}`,
      `/ip4/1.2.3.4/tcp/4001/p2p/${peer}/p2p-circuit/p2p/${peer}`,
    ]
    expect(strings(addresses)).toEqual(addresses)
  })
})
