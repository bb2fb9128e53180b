import { timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { HttpError, type Route, readJsonBody, sendJson, streaming } from './http.ts'
import { maintain } from './maintain.ts'
import { deviceRoutes } from './routes/devices.ts'
import { jobRoutes } from './routes/jobs.ts'
import { poolRoutes } from './routes/pools.ts'
import { statsRoutes } from './routes/stats.ts'
import type { ControlPlaneContext } from './state.ts'

interface CompiledRoute extends Route {
  pattern: RegExp
  names: string[]
}

function compile(route: Route): CompiledRoute {
  const names: string[] = []
  const source = route.path.replace(/:([A-Za-z]+)/g, (_, name: string) => {
    names.push(name)
    return '([^/]+)'
  })
  return { ...route, pattern: new RegExp(`^${source}$`), names }
}

/**
 * The control plane's HTTP server (not yet listening): JSON routes, bearer-token auth on all but
 * `/health`, body cap, and `{"error": {"code", "message"}}` for every refusal.
 */
export function createControlPlaneServer(ctx: ControlPlaneContext, token: string): Server {
  const routes = [...statsRoutes(ctx), ...deviceRoutes(ctx), ...poolRoutes(ctx), ...jobRoutes(ctx)].map(
    compile,
  )
  const expected = Buffer.from(`Bearer ${token}`)
  const authorized = (req: IncomingMessage) => {
    const given = Buffer.from(req.headers.authorization ?? '')
    return given.length === expected.length && timingSafeEqual(given, expected)
  }
  const server = createServer((req, res) => {
    const started = performance.now()
    res.on('finish', () =>
      ctx.logger.debug(
        {
          method: req.method,
          path: req.url,
          status: res.statusCode,
          ms: Math.round(performance.now() - started),
        },
        'request',
      ),
    )
    void handle(ctx, routes, authorized, req, res)
  })
  server.on('clientError', (_err, socket) => socket.destroy())
  return server
}

async function handle(
  ctx: ControlPlaneContext,
  routes: CompiledRoute[],
  authorized: (req: IncomingMessage) => boolean,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  try {
    const url = new URL(req.url ?? '/', 'http://control-plane')
    const matching = routes.filter((route) => route.pattern.test(url.pathname))
    const route = matching.find((candidate) => candidate.method === req.method)
    if (route?.public !== true && !authorized(req)) {
      throw new HttpError(401, 'ERR_UNAUTHORIZED', 'missing or wrong bearer token', {
        hint: 'send Authorization: Bearer <the token in control-plane.token of the data dir>',
      })
    }
    if (route === undefined) {
      if (matching.length === 0) {
        throw new HttpError(404, 'ERR_NOT_FOUND', `no route ${req.method} ${url.pathname}`)
      }
      res.setHeader('allow', [...new Set(matching.map((r) => r.method))].join(', '))
      throw new HttpError(405, 'ERR_METHOD_NOT_ALLOWED', `${url.pathname} does not answer ${req.method}`)
    }
    const match = route.pattern.exec(url.pathname)!
    const params: Record<string, string> = {}
    for (const [i, name] of route.names.entries()) params[name] = decodeSegment(match[i + 1]!)
    const body = req.method === 'POST' ? await readJsonBody(req) : undefined
    if (route.public !== true) maintain(ctx)
    const reply = await route.handler({ params, query: url.searchParams, body, req, res })
    if (reply !== streaming) sendJson(res, reply.status, reply.body)
  } catch (err) {
    if (err instanceof HttpError) {
      const details = Object.keys(err.details).length > 0 ? { details: err.details } : {}
      sendJson(
        res,
        err.status,
        { error: { code: err.code, message: err.message, ...details } },
        err.status === 413,
      )
    } else {
      ctx.logger.error({ err, method: req.method, path: req.url }, 'request failed')
      sendJson(res, 500, {
        error: { code: 'ERR_INTERNAL', message: 'the control plane failed to answer; see control-plane.log' },
      })
    }
  }
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new HttpError(400, 'ERR_INVALID_REQUEST', `path segment ${JSON.stringify(segment)} is not valid`)
  }
}
