import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import type { ServerResponse } from 'node:http'
import { isMeshError, type Logger, MeshError } from '@meshnet/core'
import {
  type BodyErrors,
  bearerMatches,
  listen,
  type NodeEnv,
  RESPONSE_ALREADY_SENT,
  readJsonBody,
} from '@meshnet/http'
import { type DataDirLayout, writeFileAtomicSync } from '@meshnet/identity'
import { Hono } from 'hono'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
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
  // Written on this thread: an agent's last step, which a loaded event loop delayed by seconds.
  writeFileAtomicSync(options.layout.controlToken, `${token}\n`, { mode: 0o600 })
  const server = await listen(controlApp(options.routes, token, options.logger))
  const info: AgentInfo = {
    pid: process.pid,
    port: server.port,
    nodeId: options.nodeId,
    startedAt: new Date().toISOString(),
  }
  writeFileAtomicSync(options.layout.agentInfo, `${JSON.stringify(info, null, 2)}\n`, { mode: 0o600 })
  return { port: server.port, close: () => server.close() }
}

const bodyErrors: BodyErrors = {
  tooLarge: () => new ControlRequestError(413, 'ERR_TOO_LARGE', 'control request body over 64 KiB'),
  badJson: () => new ControlRequestError(400, 'ERR_BAD_JSON', 'control request body is not JSON'),
}

/** The routes on Hono, behind the token; a route's generator streams as NDJSON lines. */
function controlApp(routes: ControlRoutes, token: string, logger: Logger): Hono<NodeEnv> {
  const app = new Hono<NodeEnv>()
  app.use(async (c, next) => {
    if (!bearerMatches(c.req.header('authorization'), token)) {
      return c.json({ error: { code: 'ERR_UNAUTHORIZED', message: 'missing or wrong control token' } }, 401)
    }
    await next()
  })
  for (const [key, handler] of Object.entries(routes)) {
    const [method, path] = key.split(' ') as [string, string]
    app.on(method, path, async (c) => {
      const body =
        method === 'GET'
          ? undefined
          : await readJsonBody(c.env.incoming, { maxBytes: MAX_CONTROL_BODY, errors: bodyErrors })
      const gone = new AbortController()
      const res = c.env.outgoing
      res.on('close', () => {
        if (!res.writableFinished) gone.abort()
      })
      const result = await handler(body, c.req.param() as Record<string, string>, { signal: gone.signal })
      if (!isAsyncGenerator(result)) return c.json(result ?? {}, 200)
      await streamLines(res, result, logger)
      return RESPONSE_ALREADY_SENT
    })
  }
  app.notFound((c) =>
    c.json(
      { error: { code: 'ERR_NOT_FOUND', message: `no control route ${c.req.method} ${c.req.path}` } },
      404,
    ),
  )
  app.onError((err, c) => {
    if (isMeshError(err)) {
      const status = err instanceof ControlRequestError ? err.status : 400
      return c.json(
        { error: { name: err.name, code: err.code, message: err.message } },
        status as ContentfulStatusCode,
      )
    }
    logger.error({ err }, 'control request failed')
    return c.json({ error: { code: 'ERR_INTERNAL', message: err.message } }, 500)
  })
  return app
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
