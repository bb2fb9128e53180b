import { timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { chat, complete } from './openai-generate.ts'
import {
  ApiError,
  apiError,
  chatSchema,
  completionSchema,
  findModel,
  modelObject,
  parseRequest,
  sendJson,
} from './openai-schemas.ts'
import {
  digest,
  MAX_OPENAI_BODY,
  type OpenAiApi,
  type OpenAiApiOptions,
  type ServerState,
} from './openai-types.ts'

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
    keyDigest: options.apiKey === undefined ? undefined : digest(options.apiKey),
    templates: new Map(),
    running: new Set(),
    closing: false,
  }
  const server = createServer((req, res) => {
    const done = handle(req, res, state).catch((err: unknown) => {
      logger.error({ err }, 'OpenAI API request failed')
      res.destroy()
    })
    state.running.add(done)
    void done.finally(() => state.running.delete(done))
  })
  server.on('clientError', (_err, socket) => socket.destroy())
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, host, () => {
      server.removeListener('error', reject)
      resolve()
    })
  })
  const port = (server.address() as AddressInfo).port
  logger.debug({ host, port }, 'OpenAI-compatible API listening')
  return {
    port,
    host,
    async close() {
      state.closing = true
      await closeServer(server)
      await Promise.allSettled([...state.running])
    },
  }
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}

// ---------------------------------------------------------------------------------------------
// Requests

async function handle(req: IncomingMessage, res: ServerResponse, state: ServerState): Promise<void> {
  const controller = new AbortController()
  // The client went away before the response ended: stop the generation.
  res.on('close', () => {
    if (!res.writableFinished) controller.abort()
  })
  const method = req.method ?? 'GET'
  const path = (req.url ?? '/').split('?')[0]!.replace(/\/+$/, '')
  try {
    if (state.closing) throw new ApiError(503, 'the agent is shutting down', { code: 'shutting_down' })
    authorize(req, state.keyDigest)
    const modelPath = /^\/v1\/models\/(.+)$/.exec(path)
    if (path === '/v1/models' || modelPath !== null) {
      if (method !== 'GET') throw methodNotAllowed(method, path, 'GET')
      const models = state.backend.models()
      if (modelPath === null) {
        sendJson(res, 200, { object: 'list', data: models.map(modelObject) })
        return
      }
      sendJson(res, 200, modelObject(findModel(models, decodePathSegment(modelPath[1]!))))
      return
    }
    if (path === '/v1/completions' || path === '/v1/chat/completions') {
      if (method !== 'POST') throw methodNotAllowed(method, path, 'POST')
      const body = await readJsonBody(req)
      if (path === '/v1/completions')
        await complete(parseRequest(completionSchema, body), res, state, controller)
      else await chat(parseRequest(chatSchema, body), res, state, controller)
      return
    }
    throw new ApiError(404, `Invalid URL (${method} ${path || '/'})`, { code: 'unknown_url' })
  } catch (err) {
    const error = apiError(err, state.logger)
    if (!res.headersSent) {
      sendJson(res, error.status, error.toJSON(), error.headers)
    } else if (!res.writableEnded && !res.destroyed) {
      // Mid-stream: one last event with the error, and no [DONE].
      res.end(`data: ${JSON.stringify(error.toJSON())}\n\n`)
    }
    state.logger.debug(
      { method, path, status: error.status, err: error.message },
      'OpenAI API request refused',
    )
  }
}

function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

function authorize(req: IncomingMessage, keyDigest: Buffer | undefined): void {
  if (keyDigest === undefined) return
  const header = req.headers.authorization
  const headers = { 'www-authenticate': 'Bearer' }
  if (header === undefined || header === '') {
    throw new ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", {
      code: 'invalid_api_key',
      headers,
    })
  }
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
  if (match === null || !timingSafeEqual(digest(match[1]!), keyDigest)) {
    throw new ApiError(401, 'Incorrect API key provided.', { code: 'invalid_api_key', headers })
  }
}

function methodNotAllowed(method: string, path: string, allowed: string): ApiError {
  return new ApiError(405, `${method} is not allowed on ${path}; use ${allowed}`, {
    code: 'method_not_allowed',
    headers: { allow: allowed },
  })
}

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const tooLarge = () =>
    new ApiError(413, `the request body is larger than ${MAX_OPENAI_BODY} bytes`, {
      code: 'request_too_large',
      headers: { connection: 'close' },
    })
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > MAX_OPENAI_BODY) throw tooLarge()
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length
      if (size > MAX_OPENAI_BODY) throw tooLarge()
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (err instanceof ApiError) throw err
    throw new ApiError(400, 'the request body was cut short', { code: 'invalid_request_body' })
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new ApiError(400, 'the request body is not valid JSON', { code: 'invalid_json' })
  }
}
