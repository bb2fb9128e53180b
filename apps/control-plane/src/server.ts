import type { Server } from 'node:http'
import { bearerMatches, type NodeEnv, nodeServer, RESPONSE_ALREADY_SENT, readJsonBody } from '@meshnet/http'
import { Hono } from 'hono'
import { bodyErrors, HttpError, jsonResponse, MAX_BODY_BYTES, type Route, streaming } from './http.ts'
import { maintain } from './maintain.ts'
import { deviceRoutes } from './routes/devices.ts'
import { jobRoutes } from './routes/jobs.ts'
import { poolRoutes } from './routes/pools.ts'
import { statsRoutes } from './routes/stats.ts'
import type { ControlPlaneContext } from './state.ts'

/**
 * The control plane's HTTP server (not yet listening): JSON routes on Hono, bearer-token auth on
 * all but `/health`, body cap, 405 with `Allow` for a known path and another method, and
 * `{"error": {"code", "message"}}` for every refusal.
 */
export function createControlPlaneServer(ctx: ControlPlaneContext, token: string): Server {
  return nodeServer(controlPlaneApp(ctx, token))
}

function controlPlaneApp(ctx: ControlPlaneContext, token: string): Hono<NodeEnv> {
  const routes: Route[] = [...statsRoutes(ctx), ...deviceRoutes(ctx), ...poolRoutes(ctx), ...jobRoutes(ctx)]
  const open = new Set(routes.filter((r) => r.public === true).map((r) => `${r.method} ${r.path}`))
  const app = new Hono<NodeEnv>()
  app.use(async (c, next) => {
    const started = performance.now()
    const { incoming: req, outgoing: res } = c.env
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
    if (!open.has(`${c.req.method} ${c.req.path}`) && !bearerMatches(c.req.header('authorization'), token)) {
      throw new HttpError(401, 'ERR_UNAUTHORIZED', 'missing or wrong bearer token', {
        hint: 'send Authorization: Bearer <the token in control-plane.token of the data dir>',
      })
    }
    await next()
  })
  const methods = new Map<string, Set<string>>()
  for (const route of routes) {
    methods.set(route.path, (methods.get(route.path) ?? new Set()).add(route.method))
    app.on(route.method, route.path, async (c) => {
      const { incoming: req, outgoing: res } = c.env
      const params: Record<string, string> = {}
      for (const [name, value] of Object.entries(c.req.param() as Record<string, string>))
        params[name] = decodeSegment(value)
      const body =
        route.method === 'POST'
          ? await readJsonBody(req, { maxBytes: MAX_BODY_BYTES, errors: bodyErrors })
          : undefined
      if (route.public !== true) maintain(ctx)
      const query = new URL(c.req.url).searchParams
      const reply = await route.handler({ params, query, body, req, res })
      return reply === streaming ? RESPONSE_ALREADY_SENT : jsonResponse(reply.status, reply.body)
    })
  }
  for (const [path, allowed] of methods) {
    app.all(path, (c) => {
      const response = refusal(
        new HttpError(405, 'ERR_METHOD_NOT_ALLOWED', `${c.req.path} does not answer ${c.req.method}`),
      )
      response.headers.set('allow', [...allowed].join(', '))
      return response
    })
  }
  app.notFound((c) => refusal(new HttpError(404, 'ERR_NOT_FOUND', `no route ${c.req.method} ${c.req.path}`)))
  app.onError((err, c) => {
    if (err instanceof HttpError) return refusal(err)
    ctx.logger.error({ err, method: c.req.method, path: c.req.path }, 'request failed')
    return jsonResponse(500, {
      error: { code: 'ERR_INTERNAL', message: 'the control plane failed to answer; see control-plane.log' },
    })
  })
  return app
}

/** The JSON body of a refusal; the connection closes after a 413 (the rest of the body is unread). */
function refusal(err: HttpError): Response {
  const details = Object.keys(err.details).length > 0 ? { details: err.details } : {}
  return jsonResponse(
    err.status,
    { error: { code: err.code, message: err.message, ...details } },
    err.status === 413,
  )
}

/** Hono decodes path parameters leniently; a segment that is not valid percent-encoding is refused. */
function decodeSegment(segment: string): string {
  if (!segment.includes('%')) return segment
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new HttpError(400, 'ERR_INVALID_REQUEST', `path segment ${JSON.stringify(segment)} is not valid`)
  }
}
