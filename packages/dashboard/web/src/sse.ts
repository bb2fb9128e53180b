import { createParser, type EventSourceMessage } from 'eventsource-parser'

/**
 * Reads a server-sent-events body to its end, calling `onEvent` for each event: a fetch stream
 * rather than EventSource, which cannot send an Authorization header. Resolves when the server
 * ends the stream; rejects when the connection breaks or the fetch's signal aborts it.
 */
export async function readEvents(
  body: ReadableStream<Uint8Array>,
  onEvent: (event: EventSourceMessage) => void,
): Promise<void> {
  const parser = createParser({ onEvent })
  const decoder = new TextDecoder()
  const reader = body.getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      parser.feed(decoder.decode(value, { stream: true }))
    }
    parser.feed(decoder.decode())
  } finally {
    reader.releaseLock()
  }
}
