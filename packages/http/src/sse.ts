import type { ServerResponse } from 'node:http'

/**
 * Server-sent events on a Node response: the OpenAI-compatible API's completion chunks and the
 * control plane's job streams. Writes wait while the client reads slowly and return at once when
 * it is gone; nothing is written after the end.
 */
export class SseWriter {
  readonly #res: ServerResponse

  constructor(res: ServerResponse, options: { cacheControl?: string } = {}) {
    this.#res = res
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': options.cacheControl ?? 'no-cache',
      'x-accel-buffering': 'no',
    })
    res.flushHeaders()
  }

  /** True once the response ended or the client went away. */
  get closed(): boolean {
    return this.#res.writableEnded || this.#res.destroyed
  }

  /** One event: `data` as JSON (or as it is when a string), with an optional event name and id. */
  async send(data: unknown, options: { event?: string; id?: number } = {}): Promise<void> {
    await this.write(format(data, options))
  }

  /** Raw text (a comment line such as `: ping\n\n`, or events already formatted). */
  async write(text: string): Promise<void> {
    await writeStreamed(this.#res, text)
  }

  /** Ends the stream, after a last piece of text when given. */
  end(text?: string): void {
    if (!this.closed) this.#res.end(text)
  }
}

/**
 * Writes a piece of a streamed response (an SSE event, an NDJSON line): waits while the client
 * reads slowly, returns at once when the response ended or the client is gone.
 */
export async function writeStreamed(res: ServerResponse, text: string): Promise<void> {
  if (res.writableEnded || res.destroyed || res.write(text)) return
  await new Promise<void>((resolve) => {
    const done = () => {
      res.removeListener('drain', done)
      res.removeListener('close', done)
      resolve()
    }
    res.on('drain', done)
    res.on('close', done)
  })
}

/** The text of one event. */
function format(data: unknown, options: { event?: string; id?: number } = {}): string {
  const id = options.id === undefined ? '' : `id: ${options.id}\n`
  const event = options.event === undefined ? '' : `event: ${options.event}\n`
  return `${id}${event}data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`
}
