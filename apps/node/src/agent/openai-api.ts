import type { IncomingMessage, ServerResponse } from 'node:http'
import { bearerMatches, listen, type NodeEnv, RESPONSE_ALREADY_SENT, readJsonBody } from '@meshnet/http'
import { type Context, Hono, type MiddlewareHandler } from 'hono'
import { chat } from './openai-chat.ts'
import { complete } from './openai-generate.ts'
import {
  ApiError,
  apiBodyErrors,
  apiError,
  chatSchema,
  completionSchema,
  findModel,
  modelObject,
  parseRequest,
  sendJson,
} from './openai-schemas.ts'
import { MAX_OPENAI_BODY, type OpenAiApi, type OpenAiApiOptions, type ServerState } from './openai-types.ts'

/**
 * Serves the OpenAI-compatible HTTP API over `backend`: `GET /v1/models`, `POST /v1/completions` and
 * `POST /v1/chat/completions`, streaming as server-sent events. See docs/openai-api.md.
 */
export async function startOpenAiApi(options: OpenAiApiOptions): Promise<OpenAiApi> {
  const host = options.host ?? '127.0.0.1'
  const { logger } = options
  if (options.apiKey === undefined && !isLoopback(host)) {
    logger.warn({ host }, 'the OpenAI-compatible API listens beyond this machine without an API key')
  }
  const state: ServerState = {
    backend: options.backend,
    logger,
    apiKey: options.apiKey,
    templates: new Map(),
    running: new Set(),
    closing: false,
  }
  const app = openAiApp(state, host, options.routes, options.apiRoutes ?? [], options.corsOrigins ?? [])
  const server = await listen(app, { host, port: options.port })
  const also =
    options.alsoPort === undefined || options.alsoPort === server.port
      ? undefined
      : await listen(app, { host, port: options.alsoPort }).catch(async (err: unknown) => {
          await server.close()
          throw err
        })
  logger.debug({ host, port: server.port, alsoPort: also?.port }, 'OpenAI-compatible API listening')
  return {
    port: server.port,
    alsoPort: also?.port,
    host,
    async close() {
      state.closing = true
      await Promise.all([server.close(), also?.close()])
      await Promise.allSettled([...state.running])
    },
  }
}

/** The routes on Hono; every answer is written to the Node response as OpenAI's API writes it. */
function openAiApp(
  state: ServerState,
  host: string,
  routes: Hono<NodeEnv> | undefined,
  apiRoutes: Hono<NodeEnv>[],
  corsOrigins: string[],
): Hono<NodeEnv> {
  const app = new Hono<NodeEnv>({ strict: false })
  app.use(async (c, next) => {
    if (state.closing) throw new ApiError(503, 'the agent is shutting down', { code: 'shutting_down' })
    // Bound to this machine only: a request naming another host is a web page of another site
    // reaching in through DNS rebinding, not a local client.
    if (isLoopback(host) && !isLoopback(hostName(c.req.header('host')))) {
      throw new ApiError(421, 'this server answers only requests addressed to 127.0.0.1 or localhost', {
        code: 'misdirected_request',
      })
    }
    await next()
  })
  if (corsOrigins.length > 0) app.use(cors(corsOrigins))
  if (routes !== undefined) app.route('/', routes)
  app.use(async (c, next) => {
    authorize(c.req.header('authorization') ?? bearerOf(c.req.header('x-api-key')), state.apiKey)
    const done = next()
    state.running.add(done)
    await done.finally(() => state.running.delete(done))
  })
  for (const more of apiRoutes) app.route('/', more)
  app.get('/v1/models', (c) => {
    sendJson(c.env.outgoing, 200, { object: 'list', data: state.backend.models().map(modelObject) })
    return RESPONSE_ALREADY_SENT
  })
  app.get('/v1/models/:id{.+}', (c) => {
    sendJson(c.env.outgoing, 200, modelObject(findModel(state.backend.models(), c.req.param('id'))))
    return RESPONSE_ALREADY_SENT
  })
  app.post('/v1/completions', async (c) => {
    const { res, controller } = generation(c)
    await complete(parseRequest(completionSchema, await body(c.env.incoming)), res, state, controller)
    return RESPONSE_ALREADY_SENT
  })
  app.post('/v1/chat/completions', async (c) => {
    const { res, controller } = generation(c)
    await chat(parseRequest(chatSchema, await body(c.env.incoming)), res, state, controller)
    return RESPONSE_ALREADY_SENT
  })
  for (const [path, allowed] of [
    ['/v1/models', 'GET'],
    ['/v1/models/:id{.+}', 'GET'],
    ['/v1/completions', 'POST'],
    ['/v1/chat/completions', 'POST'],
  ] as const) {
    app.all(path, (c) => {
      throw new ApiError(405, `${c.req.method} is not allowed on ${trimmed(c)}; use ${allowed}`, {
        code: 'method_not_allowed',
        headers: { allow: allowed },
      })
    })
  }
  app.notFound((c) =>
    refuse(
      c,
      state,
      new ApiError(404, `Invalid URL (${c.req.method} ${trimmed(c) || '/'})`, { code: 'unknown_url' }),
    ),
  )
  app.onError((err, c) => refuse(c, state, err))
  return app
}

/** The path without trailing slashes, as errors name it. */
const trimmed = (c: Context<NodeEnv>) => c.req.path.replace(/\/+$/, '')

/** The response, and an abort for the generation when the client goes away before it ends. */
function generation(c: Context<NodeEnv>): { res: ServerResponse; controller: AbortController } {
  const res = c.env.outgoing
  const controller = new AbortController()
  res.on('close', () => {
    if (!res.writableFinished) controller.abort()
  })
  return { res, controller }
}

/** Answers a refused or failed request in OpenAI's error shape (mid-stream: one last event). */
function refuse(c: Context<NodeEnv>, state: ServerState, err: unknown): Response {
  const res = c.env.outgoing
  const error = apiError(err, state.logger)
  if (!res.headersSent) {
    sendJson(res, error.status, error.toJSON(), error.headers)
  } else if (!res.writableEnded && !res.destroyed) {
    // Mid-stream: one last event with the error, and no [DONE].
    res.end(`data: ${JSON.stringify(error.toJSON())}\n\n`)
  }
  state.logger.debug(
    { method: c.req.method, path: trimmed(c), status: error.status, err: error.message },
    'OpenAI API request refused',
  )
  return RESPONSE_ALREADY_SENT
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

/** The host name of a `Host` header (`127.0.0.1:8080` → `127.0.0.1`, `[::1]:80` → `::1`). */
function hostName(header: string | undefined): string {
  const value = (header ?? '').trim().toLowerCase()
  if (value.startsWith('[')) return value.slice(1, value.indexOf(']'))
  return value.replace(/:\d*$/, '')
}

/** Request headers a browser page may send (what the OpenAI, Anthropic and Ollama clients send). */
const CORS_HEADERS = [
  'authorization',
  'content-type',
  'x-api-key',
  'anthropic-version',
  'anthropic-beta',
  'anthropic-dangerous-direct-browser-access',
  'openai-organization',
  'openai-project',
  'x-stainless-arch',
  'x-stainless-lang',
  'x-stainless-os',
  'x-stainless-package-version',
  'x-stainless-retry-count',
  'x-stainless-runtime',
  'x-stainless-runtime-version',
  'x-stainless-timeout',
].join(', ')

/**
 * CORS for the listed origins: their preflights are answered here (before the key check, since
 * browsers send no key in a preflight) and their responses carry `Access-Control-Allow-Origin`.
 * Set on the raw Node response, because the API's routes write to it directly. Another origin gets
 * no CORS header, so the browser keeps the answer from its page.
 */
function cors(origins: readonly string[]): MiddlewareHandler<NodeEnv> {
  const any = origins.includes('*')
  const allowed = new Set(origins.map((o) => o.replace(/\/+$/, '').toLowerCase()))
  return async (c, next) => {
    const origin = c.req.header('origin')
    const res = c.env.outgoing
    res.setHeader('vary', 'Origin')
    if (origin === undefined || !(any || allowed.has(origin.toLowerCase()))) return next()
    res.setHeader('access-control-allow-origin', any ? '*' : origin)
    if (c.req.method === 'OPTIONS' && c.req.header('access-control-request-method') !== undefined) {
      res.writeHead(204, {
        'access-control-allow-methods': 'GET, POST, OPTIONS',
        'access-control-allow-headers': CORS_HEADERS,
        'access-control-max-age': '600',
      })
      res.end()
      return RESPONSE_ALREADY_SENT
    }
    return next()
  }
}

/** Anthropic's clients send the key as `x-api-key: <key>`: the same key, in another header. */
function bearerOf(key: string | undefined): string | undefined {
  return key === undefined ? undefined : `Bearer ${key}`
}

/** The API key check: none without a key; OpenAI's 401 messages with one. */
function authorize(header: string | undefined, apiKey: string | undefined): void {
  if (apiKey === undefined) return
  const headers = { 'www-authenticate': 'Bearer' }
  if (header === undefined || header === '') {
    throw new ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", {
      code: 'invalid_api_key',
      headers,
    })
  }
  if (!bearerMatches(header, apiKey)) {
    throw new ApiError(401, 'Incorrect API key provided.', { code: 'invalid_api_key', headers })
  }
}

const bodyErrors = apiBodyErrors(MAX_OPENAI_BODY)

/** The JSON body of a completion request (an empty one is not JSON either). */
async function body(req: IncomingMessage): Promise<unknown> {
  const value = await readJsonBody(req, { maxBytes: MAX_OPENAI_BODY, errors: bodyErrors })
  if (value === undefined) throw bodyErrors.badJson(new Error('empty body'))
  return value
}
