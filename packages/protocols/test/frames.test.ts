import type { Stream } from '@libp2p/interface'
import { streamPair } from '@libp2p/utils'
import { afterEach, describe, expect, it } from 'vitest'
import { frameStream, readFrame, writeFrame } from '../src/frames.ts'

// In-memory stream pairs from @libp2p/utils: framing logic only; real sockets are in test/.

const open: Stream[] = []
afterEach(() => {
  for (const stream of open.splice(0)) stream.abort(new Error('test over'))
})

async function pair(): Promise<[Stream, Stream]> {
  const streams = await streamPair({ protocol: '/meshnet/test/1.0.0' })
  open.push(...streams)
  return streams
}

const bytes = (text: string) => new TextEncoder().encode(text)

describe('length-prefixed frames', () => {
  it('carries several frames in order, including empty ones, then reports a clean end', async () => {
    const [a, b] = await pair()
    const writer = frameStream(a)
    await writer.write(bytes('one'))
    await writer.write(new Uint8Array(0))
    await writer.write(new Uint8Array(300_000).fill(7))
    await a.close()

    const reader = frameStream(b)
    expect(await reader.read()).toEqual(bytes('one'))
    expect(await reader.read()).toEqual(new Uint8Array(0))
    const big = await reader.read()
    expect(big?.byteLength).toBe(300_000)
    expect(big?.every((byte) => byte === 7)).toBe(true)
    expect(await reader.read()).toBeUndefined()
  })

  it('leaves the bytes after one frame in the stream for the next reader', async () => {
    const [a, b] = await pair()
    await writeFrame(a, bytes('first'))
    await writeFrame(a, bytes('second'))
    await a.close()
    expect(await readFrame(b)).toEqual(bytes('first'))
    expect(await readFrame(b)).toEqual(bytes('second'))
    await expect(readFrame(b)).rejects.toMatchObject({ name: 'StreamEndedError' })
  })

  it('refuses an oversized frame from its length prefix alone and aborts the stream', async () => {
    const [a, b] = await pair()
    // A prefix announcing 2 MiB, and no payload: the reader must not wait for (or buffer) it.
    a.send(Uint8Array.from([0x80, 0x80, 0x80, 0x01]))
    await expect(readFrame(b, { maxFrameBytes: 1024 })).rejects.toMatchObject({
      name: 'FrameTooLargeError',
      details: { length: 2 ** 21, maxFrameBytes: 1024 },
    })
    expect(b.status).toBe('aborted')
  })

  it('refuses a length prefix longer than four bytes', async () => {
    const [a, b] = await pair()
    a.send(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x01]))
    await expect(readFrame(b)).rejects.toMatchObject({ name: 'FrameTooLargeError' })
  })

  it('will not send a frame over the cap', async () => {
    const [a] = await pair()
    await expect(writeFrame(a, new Uint8Array(11), { maxFrameBytes: 10 })).rejects.toMatchObject({
      name: 'FrameTooLargeError',
    })
  })

  it('reports a stream that ends inside a frame', async () => {
    const [a, b] = await pair()
    a.send(Uint8Array.from([10, 1, 2, 3]))
    await a.close()
    await expect(readFrame(b)).rejects.toMatchObject({ name: 'StreamEndedError', message: /3 of 10/ })
  })

  it('stops waiting when the signal aborts', async () => {
    const [, b] = await pair()
    const controller = new AbortController()
    const reading = readFrame(b, { signal: controller.signal })
    controller.abort(new Error('gave up'))
    await expect(reading).rejects.toThrow('gave up')
  })

  it('rejects a frame cap outside 1 byte .. 128 MiB', async () => {
    const [a] = await pair()
    expect(() => frameStream(a, { maxFrameBytes: 0 })).toThrow(/maxFrameBytes/)
    expect(() => frameStream(a, { maxFrameBytes: 2 ** 30 })).toThrow(/maxFrameBytes/)
  })
})
