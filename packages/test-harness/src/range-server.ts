import { once } from 'node:events'
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { basename } from 'node:path'

/** A local HTTP server of one file that answers range requests (what Hugging Face resolve URLs do). */
export interface RangeServer {
  /** `http://127.0.0.1:<port>/<file name>`. */
  readonly url: string
  /** Body bytes sent so far, all requests together. */
  bytesServed(): number
  /** Each range asked for, as `[start, end]` inclusive. */
  ranges(): Array<[number, number]>
  /** Slows every response to about this many bytes a second (0: no limit). */
  throttle(bytesPerSecond: number): void
  close(): Promise<void>
}

/** Serves `path` on 127.0.0.1: 206 for `Range: bytes=a-b`, 200 for the whole file, 416 for a bad range. */
export async function startRangeServer(path: string): Promise<RangeServer> {
  const size = (await stat(path)).size
  const name = basename(path)
  let served = 0
  let rate = 0
  const asked: Array<[number, number]> = []
  const server: Server = createServer((req, res) => {
    if (req.url !== `/${encodeURIComponent(name)}` || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404).end()
      return
    }
    let start = 0
    let end = size - 1
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    if (req.headers.range !== undefined) {
      if (range === null || Number(range[1]) >= size) {
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end()
        return
      }
      start = Number(range[1])
      end = range[2] === '' ? size - 1 : Math.min(size - 1, Number(range[2]))
      asked.push([start, end])
      res.writeHead(206, {
        'content-range': `bytes ${start}-${end}/${size}`,
        'content-length': end - start + 1,
        'accept-ranges': 'bytes',
      })
    } else {
      res.writeHead(200, { 'content-length': size, 'accept-ranges': 'bytes' })
    }
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    // Small reads when throttled, so that even a short answer takes its time.
    const stream = createReadStream(path, { start, end, highWaterMark: rate > 0 ? 1 << 14 : 1 << 20 })
    res.on('close', () => stream.destroy())
    void (async () => {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (res.destroyed) break
        served += chunk.length
        if (!res.write(chunk)) await once(res, 'drain').catch(() => {})
        if (rate > 0) await new Promise((r) => setTimeout(r, (chunk.length / rate) * 1000))
      }
      res.end()
    })().catch(() => res.destroy())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/${encodeURIComponent(name)}`,
    bytesServed: () => served,
    ranges: () => [...asked],
    throttle: (bytesPerSecond) => {
      rate = bytesPerSecond
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
