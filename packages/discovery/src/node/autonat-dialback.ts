import { autoNAT } from '@libp2p/autonat'
import type { ConnectionManager } from '@libp2p/interface-internal'
import { isMultiaddr } from '@multiformats/multiaddr'

/**
 * `@libp2p/autonat` (v1) with its server's dial-back on a connection of its own.
 *
 * The server dials the requester back with `openConnection(addr)` and no `force`, so libp2p hands
 * it the connection the request came on. That connection's remote address is the port the
 * requester dialed from (ephemeral, and rewritten by any NAT), never the listening address to
 * verify: the check fails, and the server then closes the requester's connection (@libp2p/autonat
 * 3.0.28). So a node that dialed out (one behind NAT always has) never gets an address confirmed,
 * and each attempt costs it the connection (to its relay, in a loop). Here the server's
 * connection manager forces a new connection whenever it dials a single address, which in this
 * service is only the dial-back (its random walk dials lists of addresses).
 */
export function autoNATWithDialBack(): (components: object) => unknown {
  const factory = autoNAT() as (components: object) => unknown
  return (components) => {
    const { connectionManager } = components as { connectionManager: ConnectionManager }
    const dialingAfresh = new Proxy(connectionManager, {
      get(target, prop) {
        if (prop === 'openConnection') {
          return (peer: Parameters<ConnectionManager['openConnection']>[0], options = {}) =>
            target.openConnection(peer, isMultiaddr(peer) ? { ...options, force: true } : options)
        }
        const value = Reflect.get(target, prop)
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
    return factory(
      new Proxy(components, {
        get: (target, prop) => (prop === 'connectionManager' ? dialingAfresh : Reflect.get(target, prop)),
      }),
    )
  }
}
