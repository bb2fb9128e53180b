import type { Stream } from '@libp2p/interface'
import { type FrameStream, frameStream, MAX_CONTROL_FRAME_BYTES } from '@meshnet/protocols'
import { ShardSessionError } from './errors.ts'

/**
 * A bidirectional, ordered channel of frames to one peer: a libp2p stream, a direct encrypted TCP
 * connection, or an in-process pair (the coordinator's own node). One reader and one writer at a
 * time.
 */
export interface Channel {
  /** Node id of the other end. */
  readonly remote: string
  readonly transport: 'libp2p' | 'direct' | 'local'
  /** The next frame, or undefined when the other end closed cleanly. Throws when it broke. */
  read(signal?: AbortSignal): Promise<Uint8Array | undefined>
  /** Sends a frame; waits while the transport's send buffer is full. */
  write(frame: Uint8Array): Promise<void>
  /** Largest frame read or written from now on (call it while no read is pending). */
  setMaxFrameBytes(bytes: number): void
  /** Ends our side after what was written has been sent. */
  close(): Promise<void>
  /** Drops the channel at once; the other end sees an error. */
  abort(err: Error): void
  readonly bytesRead: number
  readonly bytesWritten: number
}

/** Frames over a libp2p stream (discovery's length-prefixed frames). */
export function libp2pChannel(
  stream: Stream,
  remote: string,
  maxFrameBytes = MAX_CONTROL_FRAME_BYTES,
): Channel {
  let frames: FrameStream<Stream> = frameStream(stream, { maxFrameBytes })
  let bytesRead = 0
  let bytesWritten = 0
  return {
    remote,
    transport: 'libp2p',
    async read(signal) {
      const frame = await frames.read(signal ? { signal } : {})
      if (frame !== undefined) bytesRead += frame.byteLength
      return frame
    },
    async write(frame) {
      await frames.write(frame)
      bytesWritten += frame.byteLength
    },
    setMaxFrameBytes(bytes) {
      frames = frameStream(frames.unwrap(), { maxFrameBytes: bytes })
    },
    async close() {
      await stream.close().catch(() => stream.abort(new Error('close failed')))
    },
    abort(err) {
      stream.abort(err)
    },
    get bytesRead() {
      return bytesRead
    },
    get bytesWritten() {
      return bytesWritten
    },
  }
}

/** Two in-process channel ends: what one writes the other reads (the coordinator's own shard). */
export function memoryChannelPair(a: string, b: string): [Channel, Channel] {
  const left = new MemoryEnd(b)
  const right = new MemoryEnd(a)
  left.peer = right
  right.peer = left
  return [left, right]
}

class MemoryEnd implements Channel {
  readonly remote: string
  readonly transport = 'local' as const
  peer!: MemoryEnd
  bytesRead = 0
  bytesWritten = 0
  #queue: Uint8Array[] = []
  #waiter: FrameWaiter | undefined
  #ended = false
  #error: Error | undefined

  constructor(remote: string) {
    this.remote = remote
  }

  read(signal?: AbortSignal): Promise<Uint8Array | undefined> {
    const frame = this.#queue.shift()
    if (frame !== undefined) {
      this.bytesRead += frame.byteLength
      return Promise.resolve(frame)
    }
    if (this.#error) return Promise.reject(this.#error)
    if (this.#ended) return Promise.resolve(undefined)
    if (this.#waiter) return Promise.reject(new ShardSessionError('two reads at once on one channel'))
    return waitForFrame(signal, (waiter) => (this.#waiter = waiter)).then((f) => {
      if (f !== undefined) this.bytesRead += f.byteLength
      return f
    })
  }

  async write(frame: Uint8Array): Promise<void> {
    if (this.#error) throw this.#error
    if (this.peer.#ended || this.peer.#error) throw new ShardSessionError('the local channel is closed')
    this.bytesWritten += frame.byteLength
    this.peer.#deliver(frame.slice())
  }

  setMaxFrameBytes(): void {}

  async close(): Promise<void> {
    this.peer.#end(undefined)
  }

  abort(err: Error): void {
    this.#end(err)
    this.peer.#end(err)
  }

  #deliver(frame: Uint8Array): void {
    const waiter = this.#waiter
    if (waiter) {
      this.#waiter = undefined
      waiter.resolve(frame)
    } else this.#queue.push(frame)
  }

  #end(err: Error | undefined): void {
    if (err) this.#error ??= err
    this.#ended = true
    const waiter = this.#waiter
    this.#waiter = undefined
    if (waiter === undefined) return
    if (this.#error && this.#queue.length === 0) waiter.reject(this.#error)
    else waiter.resolve(undefined)
  }
}

/** Where a channel's pending read is settled: by the next frame, the end (undefined) or an error. */
export interface FrameWaiter {
  resolve(frame: Uint8Array | undefined): void
  reject(err: Error): void
}

/**
 * The one pending read of a channel: `park` stores the waiter the channel settles when a frame
 * arrives (and gets undefined back when `signal` aborts the read first).
 */
export function waitForFrame(
  signal: AbortSignal | undefined,
  park: (waiter: FrameWaiter | undefined) => void,
): Promise<Uint8Array | undefined> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      park(undefined)
      reject(signal!.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    park({
      resolve: (f) => {
        signal?.removeEventListener('abort', onAbort)
        resolve(f)
      },
      reject: (e) => {
        signal?.removeEventListener('abort', onAbort)
        reject(e)
      },
    })
  })
}
