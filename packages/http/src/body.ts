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
 * The most of a refused body that is read and dropped before the refusal is sent. A client gets
 * its 413 only once it has written its body: fetch fails the whole request on the write error if
 * the socket closes first (@hono/node-server drains a refused body for only 500 ms, which a loaded
 * machine outlasts). Past this the socket is closed.
 */
const MAX_DRAINED_BYTES = 16 * 1024 * 1024

/**
 * Reads a JSON request body of at most `maxBytes`: refused from its Content-Length before a byte is
 * kept, then counted while reading, so a large body is never buffered. A refused body is read to its
 * end and dropped (up to `MAX_DRAINED_BYTES`) before the refusal is thrown. An empty body is
 * `undefined`.
 */
export async function readJsonBody(
  req: IncomingMessage,
  options: { maxBytes: number; errors: BodyErrors },
): Promise<unknown> {
  const { maxBytes, errors } = options
  const declared = Number(req.headers['content-length'])
  if (Number.isFinite(declared) && declared > maxBytes) {
    if (declared <= MAX_DRAINED_BYTES) await drop(req)
    throw errors.tooLarge(declared)
  }
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length
      // Over the cap: read on to the end without keeping anything, then refuse; leaving the loop
      // early would close the socket under a client still writing.
      if (size > maxBytes + MAX_DRAINED_BYTES) break
      if (size <= maxBytes) chunks.push(chunk as Buffer)
    }
  } catch (err) {
    if (size > maxBytes || errors.cut === undefined) throw err
    throw errors.cut(err)
  }
  if (size > maxBytes) throw errors.tooLarge(size)
  if (size === 0) return undefined
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch (err) {
    throw errors.badJson(err as Error)
  }
}

/** Reads a request to its end and drops what it reads; a read error ends it too. */
async function drop(req: IncomingMessage): Promise<void> {
  try {
    for await (const _ of req);
  } catch {
    // The client went away: nothing to answer.
  }
}
