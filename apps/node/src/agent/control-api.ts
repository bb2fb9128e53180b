import { randomBytes, timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { isMeshError, type Logger, MeshError } from '@meshnet/core'
import { type DataDirLayout, writeFileAtomic } from '@meshnet/identity'
import { z } from 'zod'

/** Largest request body the control API reads. */
export const MAX_CONTROL_BODY = 64 * 1024

/** No agent answers for this data dir. */
export class AgentNotRunningError extends MeshError {
  override name = 'AgentNotRunningError' as const
  constructor(dataDir: string, cause?: unknown) {
    super('ERR_AGENT_NOT_RUNNING', `no agent is running for data dir ${dataDir}`, {
      cause,
      hint: `start one with \`mesh start --data-dir ${dataDir}\``,
    })
  }
}

/** The agent answered a control request with an error. */
export class ControlRequestError extends MeshError {
  override name = 'ControlRequestError' as const
  readonly status: number
  constructor(status: number, code: string, message: string) {
    super(code, message)
    this.status = status
  }
}

/** `agent.json`: how CLI commands reach the running agent. */
const agentInfoSchema = z.object({
  pid: z.number().int().positive(),
  port: z.number().int().min(1).max(65535),
  nodeId: z.string(),
  startedAt: z.string(),
})
export type AgentInfo = z.infer<typeof agentInfoSchema>

/**
 * A control route. It returns a JSON value, or an async generator whose yields are streamed as
 * NDJSON lines `{"type":"token",...}` followed by `{"type":"end","result":...}` (or
 * `{"type":"error","error":...}`); `signal` aborts when the client goes away.
 */
export type ControlHandler = (
  body: unknown,
  params: Record<string, string>,
  request: { signal: AbortSignal },
) => Promise<unknown> | unknown

/** Routes as `'GET /status'` or `'POST /pools/:poolId/approve'`. */
export type ControlRoutes = Record<string, ControlHandler>

export interface ControlServer {
  readonly port: number
  close(): Promise<void>
}

/**
 * Serves the agent's control API on 127.0.0.1 (a random port), guarded by a bearer token that is
 * written fresh to `control.token` (mode 0600) on every start. Writes `agent.json` last, so a CLI
 * that finds it can connect.
 */
export async function startControlServer(options: {
  layout: DataDirLayout
  nodeId: string
  routes: ControlRoutes
  logger: Logger
}): Promise<ControlServer> {
  const token = randomBytes(32).toString('hex')
  await writeFileAtomic(options.layout.controlToken, `${token}\n`, { mode: 0o600 })
  const expected = Buffer.from(`Bearer ${token}`)
  const routes = compileRoutes(options.routes)
  const server = createServer((req, res) => {
    void handle(req, res, routes, expected, options.logger)
  })
  server.on('clientError', (_err, socket) => socket.destroy())
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const port = (server.address() as AddressInfo).port
  const info: AgentInfo = {
    pid: process.pid,
    port,
    nodeId: options.nodeId,
    startedAt: new Date().toISOString(),
  }
  await writeFileAtomic(options.layout.agentInfo, `${JSON.stringify(info, null, 2)}\n`, { mode: 0o600 })
  return { port, close: () => closeServer(server) }
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

interface CompiledRoute {
  method: string
  pattern: RegExp
  names: string[]
  handler: ControlHandler
}

function compileRoutes(routes: ControlRoutes): CompiledRoute[] {
  return Object.entries(routes).map(([key, handler]) => {
    const [method, path] = key.split(' ') as [string, string]
    const names: string[] = []
    const pattern = new RegExp(
      `^${path.replace(/:([A-Za-z]+)/g, (_, name: string) => {
        names.push(name)
        return '([^/]+)'
      })}$`,
    )
    return { method, pattern, names, handler }
  })
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  routes: CompiledRoute[],
  expected: Buffer,
  logger: Logger,
): Promise<void> {
  const reply = (status: number, body: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
  try {
    const auth = Buffer.from(req.headers.authorization ?? '')
    if (auth.length !== expected.length || !timingSafeEqual(auth, expected)) {
      reply(401, { error: { code: 'ERR_UNAUTHORIZED', message: 'missing or wrong control token' } })
      return
    }
    const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname
    for (const route of routes) {
      const match = route.method === req.method ? route.pattern.exec(path) : null
      if (match === null) continue
      const params = Object.fromEntries(
        route.names.map((name, i) => [name, decodeURIComponent(match[i + 1]!)]),
      )
      const body = req.method === 'GET' ? undefined : await readJsonBody(req)
      const gone = new AbortController()
      res.on('close', () => {
        if (!res.writableFinished) gone.abort()
      })
      const result = await route.handler(body, params, { signal: gone.signal })
      if (isAsyncGenerator(result)) await streamLines(res, result, logger)
      else reply(200, result ?? {})
      return
    }
    reply(404, { error: { code: 'ERR_NOT_FOUND', message: `no control route ${req.method} ${path}` } })
  } catch (err) {
    if (isMeshError(err)) {
      reply(400, { error: { name: err.name, code: err.code, message: err.message } })
    } else {
      logger.error({ err }, 'control request failed')
      reply(500, { error: { code: 'ERR_INTERNAL', message: (err as Error).message } })
    }
  }
}

function isAsyncGenerator(value: unknown): value is AsyncGenerator<unknown, unknown> {
  return typeof (value as AsyncGenerator | undefined)?.[Symbol.asyncIterator] === 'function'
}

/** Streams a generator as NDJSON; an error after the first line becomes an error line. */
async function streamLines(res: ServerResponse, gen: AsyncGenerator<unknown, unknown>, logger: Logger) {
  const line = (value: unknown) => res.write(`${JSON.stringify(value)}\n`)
  let step: IteratorResult<unknown, unknown>
  try {
    step = await gen.next()
  } catch (err) {
    await gen.return(undefined).catch(() => {})
    throw err
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' })
  try {
    while (!step.done) {
      line({ type: 'token', ...(step.value as object) })
      step = await gen.next()
    }
    line({ type: 'end', result: step.value })
  } catch (err) {
    const e = err as { name?: string; code?: string; message?: string }
    if (!isMeshError(err)) logger.error({ err }, 'control stream failed')
    line({ type: 'error', error: { name: e.name, code: e.code ?? 'ERR_INTERNAL', message: e.message } })
  }
  res.end()
}

async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_CONTROL_BODY)
      throw new ControlRequestError(413, 'ERR_TOO_LARGE', 'control request body over 64 KiB')
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return undefined
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new ControlRequestError(400, 'ERR_BAD_JSON', 'control request body is not JSON')
  }
}

/** A client for the running agent's control API. */
export interface AgentClient {
  readonly info: AgentInfo
  request<T = unknown>(method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs?: number): Promise<T>
  /** A streaming route: yields each token line, returns the end line's result, throws an error line. */
  stream<T = unknown, R = unknown>(path: string, body: unknown, signal?: AbortSignal): AsyncGenerator<T, R>
}

/** Finds the agent for a data dir; AgentNotRunningError when there is none or it does not answer. */
export async function connectAgent(layout: DataDirLayout): Promise<AgentClient> {
  let info: AgentInfo
  let token: string
  try {
    info = agentInfoSchema.parse(JSON.parse(await readFile(layout.agentInfo, 'utf8')))
    token = (await readFile(layout.controlToken, 'utf8')).trim()
    process.kill(info.pid, 0)
  } catch (err) {
    throw new AgentNotRunningError(layout.root, err)
  }
  return {
    info,
    async request<T>(method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 10_000): Promise<T> {
      let response: Response
      try {
        response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: AbortSignal.timeout(timeoutMs),
        })
      } catch (err) {
        throw new AgentNotRunningError(layout.root, err)
      }
      const payload = (await response.json()) as { error?: { code: string; message: string } }
      if (!response.ok) {
        throw new ControlRequestError(
          response.status,
          payload.error?.code ?? 'ERR_CONTROL',
          payload.error?.message ?? `HTTP ${response.status}`,
        )
      }
      return payload as T
    },
    async *stream<T, R>(path: string, body: unknown, signal?: AbortSignal): AsyncGenerator<T, R> {
      let response: Response
      try {
        response = await fetch(`http://127.0.0.1:${info.port}${path}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
          ...(signal ? { signal } : {}),
        })
      } catch (err) {
        if (signal?.aborted) throw err
        throw new AgentNotRunningError(layout.root, err)
      }
      if (!response.ok || response.body === null) {
        const payload = (await response.json()) as { error?: { code: string; message: string } }
        throw new ControlRequestError(
          response.status,
          payload.error?.code ?? 'ERR_CONTROL',
          payload.error?.message ?? `HTTP ${response.status}`,
        )
      }
      let buffered = ''
      const decoder = new TextDecoder()
      for await (const chunk of response.body) {
        buffered += decoder.decode(chunk as Uint8Array, { stream: true })
        for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
          const line = JSON.parse(buffered.slice(0, nl)) as {
            type: string
            result?: R
            error?: { code: string; message: string }
          }
          buffered = buffered.slice(nl + 1)
          if (line.type === 'end') return line.result as R
          if (line.type === 'error') {
            throw new ControlRequestError(
              200,
              line.error?.code ?? 'ERR_CONTROL',
              line.error?.message ?? 'failed',
            )
          }
          const { type: _type, ...value } = line
          yield value as T
        }
      }
      throw new ControlRequestError(502, 'ERR_STREAM_ENDED', 'the agent closed the stream before the end')
    },
  }
}
