import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { serveStatic } from '@hono/node-server/serve-static'
import type { Logger } from '@meshnet/core'
import { bearerMatches, type NodeEnv, RESPONSE_ALREADY_SENT, SseWriter } from '@meshnet/http'
import { type Context, Hono, type MiddlewareHandler } from 'hono'
import type { DashboardJobEvent, DashboardState } from './contract.ts'

/** How often the events stream checks whether the state changed (it sends it only then). */
const STATE_INTERVAL_MS = 1000
/** A comment line this often keeps proxies and idle timers from closing a quiet stream. */
const KEEPALIVE_MS = 15_000
/** Events a slow reader may have waiting before its stream is closed (it reconnects and resyncs). */
const MAX_QUEUED_EVENTS = 2048

export interface DashboardInit {
  /** The current state of the agent, as the page shows it. */
  state(): DashboardState | Promise<DashboardState>
  /** Hears every job event; returns the unsubscribe. */
  subscribe(listener: (event: DashboardJobEvent) => void): () => void
  /** The bearer token the data routes require (the API key, or a token of the agent's own). */
  token: string
  /** The built page (default: this package's `dist/web`). */
  assets?: string
  logger?: Logger
}

export interface DashboardApp {
  /** The routes: `/`, `/chat`, `/assets/*`, `/api/dashboard/state` and `/api/dashboard/events`. */
  readonly app: Hono<NodeEnv>
  /** Ends every open events stream (before the server closes). */
  close(): void
}

/** The built page of this package, next to its code in both `src/` and `dist/`. */
export function dashboardAssets(): string {
  return join(import.meta.dirname, '..', 'dist', 'web')
}

/**
 * The dashboard's routes, to mount on an agent's HTTP server: the page (static files that need no
 * token, they hold no data) and its data, behind `Authorization: Bearer <token>`: a snapshot, and
 * a server-sent-events stream of snapshots (when changed, at most once a second) and job events
 * (as they happen).
 */
export function dashboardApp(init: DashboardInit): DashboardApp {
  const assets = init.assets ?? dashboardAssets()
  const streams = new Set<() => void>()
  const app = new Hono<NodeEnv>({ strict: false })

  const authorized = (c: Context<NodeEnv>): Response | undefined => {
    if (bearerMatches(c.req.header('authorization'), init.token)) return undefined
    return c.json(
      {
        error: {
          message: 'the dashboard needs its token: open the link `mesh dashboard` prints',
          code: 'invalid_token',
        },
      },
      401,
      { 'www-authenticate': 'Bearer' },
    )
  }

  app.get('/api/dashboard/state', async (c) => authorized(c) ?? c.json(await init.state()))

  app.get('/api/dashboard/events', (c) => {
    const refused = authorized(c)
    if (refused) return refused
    const res = c.env.outgoing
    const sse = new SseWriter(res)
    let queue = Promise.resolve()
    let queued = 0
    let last = ''
    const send = (event: string, text: string) => {
      if (sse.closed) return
      if (++queued > MAX_QUEUED_EVENTS) {
        // Too slow to keep up: it reconnects and starts again from a fresh state.
        end()
        return
      }
      queue = queue.then(async () => {
        await sse.write(`event: ${event}\ndata: ${text}\n\n`)
        queued--
      })
    }
    const sendState = async () => {
      try {
        const state = await init.state()
        // What changed, apart from when it was taken.
        const seen = JSON.stringify({ ...state, at: '' })
        if (seen !== last) {
          last = seen
          send('state', JSON.stringify(state))
        }
      } catch (err) {
        init.logger?.warn({ err: (err as Error).message }, 'the dashboard state could not be read')
      }
    }
    const unsubscribe = init.subscribe((event) => send('job', JSON.stringify(event)))
    const timer = setInterval(() => void sendState(), STATE_INTERVAL_MS)
    const keepalive = setInterval(() => send('ping', '{}'), KEEPALIVE_MS)
    const end = () => {
      clearInterval(timer)
      clearInterval(keepalive)
      unsubscribe()
      streams.delete(end)
      sse.end()
    }
    streams.add(end)
    res.on('close', end)
    void sendState()
    return RESPONSE_ALREADY_SENT
  })

  // Made once the page is there (serveStatic complains at once about a folder that is not).
  let files: { index: MiddlewareHandler<NodeEnv>; assets: MiddlewareHandler<NodeEnv> } | undefined
  const built = (): typeof files => {
    if (files === undefined && existsSync(join(assets, 'index.html'))) {
      files = {
        index: serveStatic<NodeEnv>({ path: join(assets, 'index.html') }),
        assets: serveStatic<NodeEnv>({ root: assets }),
      }
    }
    return files
  }
  const notBuilt = (c: Context<NodeEnv>) =>
    c.text(
      'The dashboard page is not built: run `pnpm --filter @meshnet/dashboard build` in the Meshnet repository.\n',
      503,
    )
  const page: MiddlewareHandler<NodeEnv> = async (c, next) => {
    const found = built()
    return found === undefined ? notBuilt(c) : found.index(c, next)
  }
  const asset: MiddlewareHandler<NodeEnv> = async (c, next) => {
    const found = built()
    return found === undefined ? notBuilt(c) : found.assets(c, next)
  }
  app.get('/', page)
  app.get('/chat', page)
  app.get('/assets/*', asset)
  app.get('/favicon.svg', asset)

  return {
    app,
    close() {
      for (const end of [...streams]) end()
    },
  }
}
