// A shaped link in user space, for kernels without `tc netem` (sch_netem): loaded with
// `node --import` (through NODE_OPTIONS, so into every Node process of a shaped run: the
// coordinator, each member, the round-trip echo), it holds back every TCP write of the process the
// way netem holds back a packet on its way out, then hands it to the socket:
//
//   send at = max(now + delay ± jitter, send time of the previous write) + bytes / rate
//
// which is netem's rule with `rate` set: one queue per process (the process's uplink), in order,
// jitter uniform. Each end shapes what it sends, so a round trip pays the delay twice, as with
// netem on loopback. What it does not model: TCP's own reaction to delay (slow start, windows),
// loss, and packets: a write is one unit however large. At the sizes a sharded step moves (a few
// KiB per hop) those do not matter. The bench prints the round trip it measured next to the one it
// asked for. Configured by LINKS_BENCH_SHAPE: `{ "delayMs": 20, "jitterMs": 0, "mbit": 50 }`.
import net from 'node:net'

interface Shape {
  delayMs: number
  jitterMs: number
  mbit: number
}

type WriteCallback = (err?: Error | null) => void
type Chunk = { chunk: Buffer | string; encoding: BufferEncoding }
interface SocketInternals {
  _write(data: Buffer | string, encoding: BufferEncoding, cb: WriteCallback): void
  _writev(chunks: Chunk[], cb: WriteCallback): void
  _final(cb: WriteCallback): void
}

const shape = JSON.parse(process.env.LINKS_BENCH_SHAPE ?? 'null') as Shape | null
if (shape !== null) install(shape)

function install({ delayMs, jitterMs, mbit }: Shape): void {
  const proto = net.Socket.prototype as unknown as SocketInternals
  const write = proto._write
  const writev = proto._writev
  const final = proto._final
  /** Writes held back per socket, and the `_final` waiting for them to go out. */
  const held = new WeakMap<net.Socket, { count: number; final?: () => void }>()
  const queue: Array<{ at: number; send: () => void }> = []
  let last = 0
  let timer: NodeJS.Timeout | NodeJS.Immediate | undefined

  const flush = () => {
    timer = undefined
    const now = performance.now()
    while (queue.length > 0 && queue[0]!.at <= now) queue.shift()!.send()
    arm()
  }
  // A timer fires a millisecond or so late, on whole milliseconds: sleep on one until about 2 ms
  // before a write is due, and poll the rest of the way once per turn of the event loop (which
  // keeps a waiting process busy for up to 2 ms per write: the price of sub-ms delays).
  const arm = () => {
    if (timer !== undefined || queue.length === 0) return
    const wait = queue[0]!.at - performance.now()
    timer = wait > 2.5 ? setTimeout(flush, Math.floor(wait - 2)) : setImmediate(flush)
  }
  const hold = (socket: net.Socket, bytes: number, send: () => void) => {
    const entry = held.get(socket) ?? { count: 0 }
    held.set(socket, entry)
    entry.count++
    const now = performance.now()
    const delay = delayMs + (jitterMs > 0 ? (Math.random() * 2 - 1) * jitterMs : 0)
    last = Math.max(now + delay, last) + (bytes * 8) / (mbit * 1000)
    queue.push({
      at: last,
      send: () => {
        entry.count--
        if (!socket.destroyed) send()
        if (entry.count === 0 && entry.final !== undefined) {
          const waiting = entry.final
          entry.final = undefined
          waiting()
        }
      },
    })
    arm()
  }
  const failed = (socket: net.Socket) => (err?: Error | null) => {
    if (err != null && !socket.destroyed) socket.destroy(err)
  }
  // The caller may reuse a buffer once its write has called back, which here is at once: copy.
  const own = (chunk: Buffer | string) => (typeof chunk === 'string' ? chunk : Buffer.from(chunk))
  const length = (chunk: Buffer | string, encoding: BufferEncoding) =>
    typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding) : chunk.length

  proto._write = function (this: net.Socket, data, encoding, cb) {
    const copy = own(data)
    hold(this, length(copy, encoding), () => write.call(this, copy, encoding, failed(this)))
    cb()
  }
  proto._writev = function (this: net.Socket, chunks, cb) {
    const copy = chunks.map(({ chunk, encoding }) => ({ chunk: own(chunk), encoding }))
    const bytes = copy.reduce((sum, { chunk, encoding }) => sum + length(chunk, encoding), 0)
    hold(this, bytes, () => writev.call(this, copy, failed(this)))
    cb()
  }
  // The FIN goes after the writes held back.
  proto._final = function (this: net.Socket, cb) {
    const entry = held.get(this)
    if (entry === undefined || entry.count === 0) final.call(this, cb)
    else entry.final = () => final.call(this, cb)
  }
}
