import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createAdaptorServer, type HttpBindings } from '@hono/node-server'
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response'
import type { Hono } from 'hono'

export { RESPONSE_ALREADY_SENT }

/** The Hono environment of a Meshnet server: the raw Node request and response are at hand. */
export type NodeEnv = { Bindings: HttpBindings }

/** A listening server. */
export interface ListeningServer {
  readonly port: number
  readonly host: string
  /** Stops listening and closes every connection, idle or not. */
  close(): Promise<void>
}

/**
 * Serves `app` on `host:port` (default 127.0.0.1 and a port the OS picks) through
 * @hono/node-server. Malformed HTTP from a client closes its socket and nothing else.
 */
export async function listen(
  app: Hono<NodeEnv>,
  options: { host?: string; port?: number } = {},
): Promise<ListeningServer> {
  const host = options.host ?? '127.0.0.1'
  const server = nodeServer(app)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, host, () => {
      server.removeListener('error', reject)
      resolve()
    })
  })
  return {
    port: (server.address() as AddressInfo).port,
    host,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

/** The server as a plain Node request listener (for a server the caller makes itself). */
export function nodeServer(app: Hono<NodeEnv>): Server {
  const server = createAdaptorServer({ fetch: app.fetch }) as Server
  server.on('clientError', (_err, socket) => socket.destroy())
  return server
}
