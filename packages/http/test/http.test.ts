import { Hono } from 'hono'
import { afterEach, describe, expect, it } from 'vitest'
import {
  bearerMatches,
  type ListeningServer,
  listen,
  type NodeEnv,
  RESPONSE_ALREADY_SENT,
  readJsonBody,
  SseWriter,
} from '../src/index.ts'

class BodyError extends Error {
  readonly status: number
  constructor(status: number, message: string) {
    super(message)
    this.status = status
  }
}

const servers: ListeningServer[] = []
afterEach(async () => {
  for (const server of servers.splice(0)) await server.close()
})

/** A real server on 127.0.0.1 answering with the body it read, or the body error's status. */
async function echo(maxBytes: number): Promise<string> {
  const app = new Hono<NodeEnv>()
  app.post('/echo', async (c) =>
    c.json({ body: (await readJsonBody(c.env.incoming, { maxBytes, errors })) ?? null }),
  )
  app.get('/events', (c) => {
    const sse = new SseWriter(c.env.outgoing)
    void sse.send({ n: 1 }, { event: 'token', id: 7 })
    void sse.write(': ping\n\n')
    sse.end('data: [DONE]\n\n')
    return RESPONSE_ALREADY_SENT
  })
  app.onError((err, c) =>
    c.json({ error: err.message }, err instanceof BodyError ? (err.status as 400) : 500),
  )
  const server = await listen(app)
  servers.push(server)
  return `http://127.0.0.1:${server.port}`
}

const errors = {
  tooLarge: (bytes: number) => new BodyError(413, `${bytes} bytes`),
  badJson: () => new BodyError(400, 'not JSON'),
}

describe('readJsonBody', () => {
  it('reads a JSON body, and an empty one as undefined', async () => {
    const url = await echo(1024)
    const sent = await fetch(`${url}/echo`, { method: 'POST', body: JSON.stringify({ a: [1, 2] }) })
    expect(await sent.json()).toEqual({ body: { a: [1, 2] } })
    const empty = await fetch(`${url}/echo`, { method: 'POST' })
    expect(await empty.json()).toEqual({ body: null })
  })

  it('refuses a body over the cap by its Content-Length, and a body that is not JSON', async () => {
    const url = await echo(16)
    const large = await fetch(`${url}/echo`, {
      method: 'POST',
      body: JSON.stringify({ text: 'x'.repeat(100) }),
    })
    expect(large.status).toBe(413)
    expect(await large.json()).toEqual({ error: '111 bytes' })
    const bad = await fetch(`${url}/echo`, { method: 'POST', body: '{nope' })
    expect(bad.status).toBe(400)
  })

  it('refuses a chunked body once it passes the cap, without a Content-Length to go by', async () => {
    const url = await echo(16)
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('"0123456789'))
        controller.enqueue(new TextEncoder().encode('0123456789"'))
        controller.close()
      },
    })
    const response = await fetch(`${url}/echo`, {
      method: 'POST',
      body: stream,
      duplex: 'half',
    } as RequestInit)
    expect(response.status).toBe(413)
    expect(await response.json()).toEqual({ error: '22 bytes' })
  })

  it('answers a client still writing a refused body once it has written it, not with a closed socket', async () => {
    const url = await echo(16)
    const chunk = new TextEncoder().encode(`"${'x'.repeat(64 * 1024)}`)
    // The body passes the cap in its first piece, and the rest comes a second later: longer than
    // the 500 ms that @hono/node-server waits before closing the socket of a refused body.
    const slowly = () =>
      new ReadableStream({
        async start(controller) {
          controller.enqueue(chunk)
          await new Promise((resolve) => setTimeout(resolve, 1_000))
          controller.enqueue(chunk)
          controller.enqueue(new TextEncoder().encode('"'))
          controller.close()
        },
      })
    const chunked = await fetch(`${url}/echo`, {
      method: 'POST',
      body: slowly(),
      duplex: 'half',
    } as RequestInit)
    expect(chunked.status).toBe(413)
    expect(await chunked.json()).toEqual({ error: `${2 * chunk.length + 1} bytes` })
    const declared = await fetch(`${url}/echo`, {
      method: 'POST',
      body: slowly(),
      duplex: 'half',
      headers: { 'content-length': String(2 * chunk.length + 1) },
    } as RequestInit)
    expect(declared.status).toBe(413)
    expect(await declared.json()).toEqual({ error: `${2 * chunk.length + 1} bytes` })
  })
})

describe('SseWriter', () => {
  it('writes named events with ids, comments and a last piece, as server-sent events', async () => {
    const url = await echo(16)
    const response = await fetch(`${url}/events`)
    expect(response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8')
    expect(await response.text()).toBe('id: 7\nevent: token\ndata: {"n":1}\n\n: ping\n\ndata: [DONE]\n\n')
  })
})

describe('bearerMatches', () => {
  it('takes the right secret only, in a Bearer header', () => {
    expect(bearerMatches('Bearer s3cret', 's3cret')).toBe(true)
    expect(bearerMatches('bearer   s3cret ', 's3cret')).toBe(true)
    expect(bearerMatches('Bearer s3cre', 's3cret')).toBe(false)
    expect(bearerMatches('Basic s3cret', 's3cret')).toBe(false)
    expect(bearerMatches(undefined, 's3cret')).toBe(false)
    expect(bearerMatches('Bearer ', '')).toBe(false)
  })
})
