import { collectDiagnosis } from '@meshnet/discovery'
import type { AgentPart } from './agent.ts'
import type { MeshPart } from './mesh-part.ts'
import type { RingPart } from './ring-part.ts'

/**
 * `GET /doctor` (`mesh doctor`): the node's addresses, NAT type, UPnP and relay reservations, each
 * connected peer and each ring or pool member (also one that left the ring: offline, or cut off)
 * with its link and a round trip measured now, and advice.
 */
export function doctorPart(parts: { mesh: MeshPart; ring: RingPart }): AgentPart {
  return {
    name: 'doctor',
    async start() {},
    async stop() {},
    routes: {
      'GET /doctor': (_body, _params, { signal }) =>
        collectDiagnosis(parts.mesh.node(), { signal, members: knownMembers(parts.ring) }),
    },
  }
}

/** Every member of every ring this node is in, as gossip knows them (connected or not). */
export function ringMembers(ring: RingPart): Set<string> {
  const members = new Set<string>()
  for (const gossip of ring.rings().values()) for (const m of gossip.view().members) members.add(m.nodeId)
  return members
}

/** The ring members, and the pool members seen in a ring since start that have left it since. */
export function knownMembers(ring: RingPart): Set<string> {
  return new Set([...ringMembers(ring), ...ring.knownMembers()])
}
