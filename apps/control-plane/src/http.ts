import type { IncomingMessage, ServerResponse } from 'node:http'
import { MeshError, type MeshErrorOptions } from '@meshnet/core'
import type { BodyErrors } from '@meshnet/http'
import type { z } from 'zod'

/** Largest request body the control plane reads: 64 KiB. */
export const MAX_BODY_BYTES = 64 * 1024

/** A request the control plane refuses, with the HTTP status to answer. */
export class HttpError extends MeshError {
  override name = 'HttpError' as const
  readonly status: number
  constructor(status: number, code: string, message: string, options?: MeshErrorOptions) {
    super(code, message, options)
    this.status = status
  }
}

export const notFound = (code: string, message: string, hint?: string) =>
  new HttpError(404, code, message, hint === undefined ? {} : { hint })

export const conflict = (code: string, message: string, details?: Record<string, unknown>) =>
  new HttpError(409, code, message, details === undefined ? {} : { details })

/** What a route answers: a status and a JSON body (none for 204). */
export interface Reply {
  status: number
  body?: unknown
}

export const ok = (body: unknown): Reply => ({ status: 200, body })
export const created = (body: unknown): Reply => ({ status: 201, body })
export const noContent = (): Reply => ({ status: 204 })

/** A JSON response with the control plane's headers (no caching; a realm on 401; closes after 413). */
export function jsonResponse(status: number, body: unknown, close = false): Response {
  const headers: Record<string, string> = { 'cache-control': 'no-store' }
  if (status === 401) headers['www-authenticate'] = 'Bearer realm="mesh-control-plane"'
  if (close) headers.connection = 'close'
  if (status === 204) return new Response(null, { status, headers })
  const text = JSON.stringify(body)
  return new Response(text, {
    status,
    headers: {
      ...headers,
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(Buffer.byteLength(text)),
    },
  })
}

/** How the control plane refuses a body: 413 over {@link MAX_BODY_BYTES}, 400 when not JSON. */
export const bodyErrors: BodyErrors = {
  tooLarge: (bytes) =>
    new HttpError(
      413,
      'ERR_TOO_LARGE',
      `request body of ${bytes} bytes is over the ${MAX_BODY_BYTES}-byte limit`,
      {
        details: { limit: MAX_BODY_BYTES },
      },
    ),
  badJson: (err) =>
    new HttpError(400, 'ERR_BAD_JSON', `request body is not valid JSON: ${err.message}`, {
      hint: 'send a JSON object with Content-Type: application/json',
    }),
}

/**
 * Parses untrusted input with a zod schema; 400 `ERR_INVALID_REQUEST` whose message names each
 * failing field (`capabilities.capacityBytes: ...`) when it does not fit.
 */
export function parseInput<T>(schema: z.ZodType<T>, value: unknown, what = 'request body'): T {
  const parsed = schema.safeParse(value)
  if (parsed.success) return parsed.data
  const { text, issues } = describeIssues(parsed.error)
  throw new HttpError(400, 'ERR_INVALID_REQUEST', `invalid ${what}: ${text}`, { details: { issues } })
}

/** The first few problems of a zod error, each naming its field. */
export function describeIssues(error: z.ZodError): {
  text: string
  issues: { field: string; message: string }[]
} {
  const issues = error.issues.slice(0, 5).map((issue) => ({
    field: issue.path.map(String).join('.'),
    message: issue.message,
  }))
  const text = issues
    .map((issue) => (issue.field === '' ? issue.message : `${issue.field}: ${issue.message}`))
    .join('; ')
  return { text, issues }
}

/** A request as a route sees it; `body` is the parsed JSON (POST only). */
export interface RouteInput {
  params: Record<string, string>
  query: URLSearchParams
  body: unknown
  req: IncomingMessage
  res: ServerResponse
}

export interface Route {
  method: 'GET' | 'POST' | 'DELETE'
  /** `/v1/devices/:nodeId`; parameters match one path segment. */
  path: string
  /** Answered without the bearer token (only `/health`). */
  public?: boolean
  /**
   * A device request: the node id it acts for (read from the path or the unchecked body). The
   * request must then be signed with that node's key (`deviceAuth`) before the handler runs. When
   * it is no valid node id the handler runs unsigned, so it must refuse that first (every device
   * route parses its node id with `nodeIdSchema` before it does anything).
   */
  actsFor?(input: { params: Record<string, string>; body: unknown }): unknown
  /** Returns the reply, or `streaming` after writing the response itself. */
  handler(input: RouteInput): Reply | typeof streaming | Promise<Reply | typeof streaming>
}

/** What a route that writes its own response (SSE) returns. */
export const streaming = Symbol('streaming')
