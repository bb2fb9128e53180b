import type { AbortOptions, MessageStream } from '@libp2p/interface'
import { byteStream } from '@libp2p/utils'
import { InvalidArgumentError } from '@meshnet/core'
import { Uint8ArrayList } from 'uint8arraylist'
import { FrameTooLargeError, StreamEndedError } from './errors.ts'

/** Largest frame `readFrame`/`frameStream` accept unless told otherwise. */
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
/** Hard ceiling for any frame size option; its length prefix fits a 4-byte varint. */
export const MAX_FRAME_BYTES_LIMIT = 128 * 1024 * 1024

/**
 * Length-prefixed frames over a libp2p stream: an unsigned LEB128 varint (at most 4 bytes) with
 * the byte length, then the bytes. The same framing as libp2p's own `lpStream`, with a size cap
 * that is checked before a single payload byte is buffered, and a clean end-of-stream signal.
 */
export interface FrameStream<S extends MessageStream = MessageStream> {
  /**
   * The next frame, or `undefined` when the remote closed its side cleanly between frames.
   * Throws FrameTooLargeError (and aborts the stream) for a frame over the cap, and
   * StreamEndedError when the stream ends inside a frame.
   */
  read(options?: AbortOptions): Promise<Uint8Array | undefined>
  /** Sends one frame; waits while the stream's send buffer is full. */
  write(frame: Uint8Array, options?: AbortOptions): Promise<void>
  /** Stops framing; bytes read ahead are given back to the stream. */
  unwrap(): S
}

export interface FrameStreamOptions {
  /** Largest frame read or written. Default 1 MiB; at most 128 MiB. */
  maxFrameBytes?: number
}

export interface FrameOptions extends AbortOptions, FrameStreamOptions {}

/** Longest varint accepted: 4 bytes encode up to 2^28 - 1. */
const MAX_PREFIX_BYTES = 4
/** Read-ahead allowed whatever the frame cap: the initial yamux stream window (256 KiB). */
const MIN_READ_AHEAD_BYTES = 256 * 1024

export function frameStream<S extends MessageStream>(
  stream: S,
  options: FrameStreamOptions = {},
): FrameStream<S> {
  const maxFrameBytes = checkedCap(options.maxFrameBytes)
  // Bytes the remote may push ahead of our reads: two whole frames, and never less than one
  // yamux window so that a small cap is enforced from the length prefix, not by a buffer
  // overflow. A peer that floods past this is reset by byteStream instead of growing our memory.
  const bytes = byteStream(stream, {
    maxBufferSize: Math.max(2 * (maxFrameBytes + MAX_PREFIX_BYTES), MIN_READ_AHEAD_BYTES),
  })
  const pending = new Uint8ArrayList()

  const fill = async (abort: AbortOptions | undefined): Promise<boolean> => {
    const chunk = await bytes.read(abort)
    if (chunk === null) return false
    pending.append(chunk)
    return true
  }

  const fail = (err: Error): never => {
    stream.abort(err)
    throw err
  }

  return {
    async read(abort) {
      let length: number | undefined
      let prefixBytes = 0
      while (length === undefined) {
        const decoded = decodeVarint(pending)
        if (decoded === 'incomplete') {
          if (pending.byteLength >= MAX_PREFIX_BYTES) {
            fail(new FrameTooLargeError(`frame length prefix on ${describe(stream)} is longer than 4 bytes`))
          }
          if (!(await fill(abort))) {
            if (pending.byteLength === 0) return undefined
            throw new StreamEndedError(`${describe(stream)} ended inside a frame length prefix`)
          }
          continue
        }
        ;[length, prefixBytes] = decoded
      }
      if (length > maxFrameBytes) {
        fail(
          new FrameTooLargeError(
            `frame of ${length} bytes on ${describe(stream)} is over the ${maxFrameBytes}-byte cap`,
            { details: { length, maxFrameBytes } },
          ),
        )
      }
      while (pending.byteLength < prefixBytes + length) {
        if (!(await fill(abort))) {
          throw new StreamEndedError(
            `${describe(stream)} ended after ${pending.byteLength - prefixBytes} of ${length} frame bytes`,
          )
        }
      }
      const frame = pending.subarray(prefixBytes, prefixBytes + length)
      pending.consume(prefixBytes + length)
      // A plain Uint8Array even when the transport handed us Buffers.
      return new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength)
    },

    async write(frame, abort) {
      if (frame.byteLength > maxFrameBytes) {
        throw new FrameTooLargeError(
          `refusing to send a ${frame.byteLength}-byte frame on ${describe(stream)}: the cap is ${maxFrameBytes} bytes`,
          { details: { length: frame.byteLength, maxFrameBytes } },
        )
      }
      await bytes.write(new Uint8ArrayList(encodeVarint(frame.byteLength), frame), abort)
    },

    unwrap() {
      // byteStream gives back what it still holds first; our read-ahead goes in front of it.
      // Both throw only when the readable end is already closed, and then nobody can read it.
      try {
        bytes.unwrap()
      } catch {}
      if (pending.byteLength > 0) {
        try {
          stream.unshift(pending.sublist())
        } catch {}
        pending.consume(pending.byteLength)
      }
      return stream
    },
  }
}

/**
 * Reads exactly one frame. Throws StreamEndedError when the stream ends first; bytes after the
 * frame stay in the stream for the next reader.
 */
export async function readFrame(stream: MessageStream, options: FrameOptions = {}): Promise<Uint8Array> {
  const frames = frameStream(stream, options)
  try {
    const frame = await frames.read(options)
    if (frame === undefined) throw new StreamEndedError(`${describe(stream)} ended before a frame arrived`)
    return frame
  } finally {
    frames.unwrap()
  }
}

/** Writes one frame. */
export async function writeFrame(
  stream: MessageStream,
  frame: Uint8Array,
  options: FrameOptions = {},
): Promise<void> {
  const frames = frameStream(stream, options)
  try {
    await frames.write(frame, options)
  } finally {
    frames.unwrap()
  }
}

function checkedCap(maxFrameBytes: number | undefined): number {
  const cap = maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
  if (!Number.isInteger(cap) || cap < 1 || cap > MAX_FRAME_BYTES_LIMIT) {
    throw new InvalidArgumentError(
      `invalid maxFrameBytes ${cap}: must be an integer from 1 to ${MAX_FRAME_BYTES_LIMIT}`,
    )
  }
  return cap
}

/** [value, bytes used], or 'incomplete' when more bytes are needed. */
function decodeVarint(buffer: Uint8ArrayList): [number, number] | 'incomplete' {
  let value = 0
  const limit = Math.min(buffer.byteLength, MAX_PREFIX_BYTES)
  for (let i = 0; i < limit; i++) {
    const byte = buffer.get(i)
    value += (byte & 0x7f) * 2 ** (7 * i)
    if ((byte & 0x80) === 0) return [value, i + 1]
  }
  return 'incomplete'
}

function encodeVarint(value: number): Uint8Array {
  const out: number[] = []
  let rest = value
  while (rest >= 0x80) {
    out.push((rest & 0x7f) | 0x80)
    rest = Math.floor(rest / 128)
  }
  out.push(rest)
  return Uint8Array.from(out)
}

function describe(stream: MessageStream): string {
  const protocol = (stream as { protocol?: string }).protocol
  return protocol === undefined || protocol === '' ? 'stream' : `stream ${protocol}`
}
