import { createHash } from 'node:crypto'
import type { IncomingMessage, Server } from 'node:http'
import { Readable } from 'node:stream'
import { bearerMatches, type NodeEnv, nodeServer, RESPONSE_ALREADY_SENT, readJsonBody } from '@meshnet/http'
import { controlPlaneId, nodeIdSchema } from '@meshnet/protocols'
import { Hono } from 'hono'
import { deviceAuth } from './device-auth.ts'
import { bodyErrors, HttpError, jsonResponse, MAX_BODY_BYTES, type Route, streaming } from './http.ts'
import { maintain } from './maintain.ts'
import { deviceRoutes } from './routes/devices.ts'
import { jobRoutes } from './routes/jobs.ts'
import { poolRoutes } from './routes/pools.ts'
import { statsRoutes } from './routes/stats.ts'
import type { ControlPlaneContext } from './state.ts'

/** How device requests are checked (see `deviceAuth`). */
export interface DeviceAuthSettings {
  requestSkewMs: number
  deviceRequestsPerMinute: number
}

/**
 * The control plane's HTTP server (not yet listening): JSON routes on Hono, bearer-token auth on
 * all but `/health`, device signatures on the routes that act for a device, body cap, 405 with
 * `Allow` for a known path and another method, and `{"error": {"code", "message"}}` for every
 * refusal.
 */
export function createControlPlaneServer(
  ctx: ControlPlaneContext,
  token: string,
  settings: DeviceAuthSettings,
): Server {
  return nodeServer(controlPlaneApp(ctx, token, settings))
}

function controlPlaneApp(
  ctx: ControlPlaneContext,
  token: string,
  settings: DeviceAuthSettings,
): Hono<NodeEnv> {
  const routes: Route[] = [...statsRoutes(ctx), ...deviceRoutes(ctx), ...poolRoutes(ctx), ...jobRoutes(ctx)]
  const authenticate = deviceAuth({
    planeId: controlPlaneId(token),
    skewMs: settings.requestSkewMs,
    requestsPerMinute: settings.deviceRequestsPerMinute,
    now: ctx.now,
  })
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
      const { body, sha256 } =
        route.method === 'POST' ? await readBody(req) : { body: undefined, sha256: EMPTY_SHA256 }
      const actsFor = route.actsFor?.({ params, body })
      // A request that names no valid node id acts for no device: the handler refuses it (400).
      if (route.actsFor !== undefined && nodeIdSchema.safeParse(actsFor).success) {
        await authenticate({
          method: route.method,
          path: req.url ?? c.req.path,
          bodySha256: sha256,
          header: (name) => c.req.header(name),
          actsFor,
        })
      }
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

const EMPTY_SHA256 = createHash('sha256').digest('hex')

/**
 * Reads the JSON body with readJsonBody (its cap and errors) and hashes its bytes on the way in,
 * for the signature of a device request.
 */
async function readBody(req: IncomingMessage): Promise<{ body: unknown; sha256: string }> {
  const hash = createHash('sha256')
  async function* hashed() {
    for await (const chunk of req) {
      hash.update(chunk as Buffer)
      yield chunk as Buffer
    }
  }
  // readJsonBody reads only `headers` (Content-Length) and the chunks of the request.
  const counted = Object.assign(Readable.from(hashed()), {
    headers: req.headers,
  }) as unknown as IncomingMessage
  const body = await readJsonBody(counted, { maxBytes: MAX_BODY_BYTES, errors: bodyErrors })
  return { body, sha256: hash.digest('hex') }
}

/**
 * The JSON body of a refusal; the connection closes after a 413 (the rest of the body is unread),
 * and a 429 says when to retry.
 */
function refusal(err: HttpError): Response {
  const details = Object.keys(err.details).length > 0 ? { details: err.details } : {}
  const response = jsonResponse(
    err.status,
    { error: { code: err.code, message: err.message, ...details } },
    err.status === 413,
  )
  const retryAfterMs = err.details.retryAfterMs
  if (err.status === 429 && typeof retryAfterMs === 'number') {
    response.headers.set('retry-after', String(Math.ceil(retryAfterMs / 1000)))
  }
  return response
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
