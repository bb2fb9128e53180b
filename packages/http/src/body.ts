import type { IncomingMessage } from 'node:http'

/** How a server says what is wrong with a body (each server has its own error shape). */
export interface BodyErrors {
  /** The body is over `maxBytes` (by its Content-Length, or while reading). */
  tooLarge(bytes: number): Error
  /** The body is not JSON. */
  badJson(err: Error): Error
  /** The client stopped sending in the middle (default: the read error itself). */
  cut?(err: unknown): Error
}

/**
 * Reads a JSON request body of at most `maxBytes`: refused from its Content-Length before a byte is
 * read, then counted while reading, so a large body is never buffered. An empty body is `undefined`.
 */
export async function readJsonBody(
  req: IncomingMessage,
  options: { maxBytes: number; errors: BodyErrors },
): Promise<unknown> {
  const { maxBytes, errors } = options
  const declared = Number(req.headers['content-length'])
  if (Number.isFinite(declared) && declared > maxBytes) throw errors.tooLarge(declared)
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length
      if (size > maxBytes) throw errors.tooLarge(size)
      chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (size > maxBytes || errors.cut === undefined) throw err
    throw errors.cut(err)
  }
  if (size === 0) return undefined
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch (err) {
    throw errors.badJson(err as Error)
  }
}
