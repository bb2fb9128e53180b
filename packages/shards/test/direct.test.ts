import net from 'node:net'
import { describe, expect, it } from 'vitest'
import { connectDirect, DirectListener } from '../src/direct.ts'
import type { DirectBinding } from '../src/direct-seal.ts'
import { within } from '../src/within.ts'

const CAP = 1 << 16

/** The link both ends agree on: rank 1 (node-a) dials rank 3 (node-b) in session aa…. */
const link: DirectBinding = {
  poolId: 'pool-1',
  coordinator: 'node-c',
  session: 'aa'.repeat(16),
  caller: { nodeId: 'node-a', rank: 1 },
  callee: { nodeId: 'node-b', rank: 3 },
}

interface Relay {
  port: number
  /** The relay's socket to the listener: what the callee reads from. */
  toCallee(): net.Socket
  close(): void
}

/**
 * A TCP relay in front of `target`: passes the callee's bytes back unchanged, the caller's bytes
 * through `tamper` (chunk by chunk, numbered from 0), and the caller's FIN only when `forwardEnd`.
 */
async function startRelay(
  target: number,
  options: { forwardEnd?: boolean; tamper?: (chunk: Buffer, index: number) => Buffer } = {},
): Promise<Relay> {
  const sockets: net.Socket[] = []
  let outbound: net.Socket | undefined
  // Half-open allowed: the caller's FIN must not end the way back unless the callee's end does.
  const server = net.createServer({ allowHalfOpen: true }, (inbound) => {
    const out = net.connect({ host: '127.0.0.1', port: target })
    outbound = out
    sockets.push(inbound, out)
    inbound.on('error', () => {})
    out.on('error', () => {})
    out.pipe(inbound)
    let index = 0
    inbound.on('data', (chunk: Buffer) => out.write(options.tamper?.(Buffer.from(chunk), index++) ?? chunk))
    inbound.on('end', () => {
      if (options.forwardEnd ?? true) out.end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    toCallee: () => outbound!,
    close: () => {
      for (const socket of sockets) socket.destroy()
      server.close()
    },
  }
}

describe('direct channel', () => {
  it('carries sealed frames both ways, and a close frame ends both directions cleanly', async () => {
    const listener = new DirectListener('127.0.0.1')
    try {
      const { offer, accepted } = await listener.offer(link, CAP)
      const caller = await connectDirect('127.0.0.1', link, offer, CAP)
      const callee = await accepted
      expect([caller.remote, callee.remote]).toEqual(['node-b', 'node-a'])
      await caller.write(Uint8Array.of(1, 2, 3))
      expect(await callee.read()).toEqual(Uint8Array.of(1, 2, 3))
      const big = new Uint8Array(60_000).fill(9)
      await callee.write(big)
      expect(await caller.read()).toEqual(big)
      await expect(caller.write(new Uint8Array(1 << 17))).rejects.toThrow(/cap/)
      await caller.close()
      await expect(caller.write(Uint8Array.of(4))).rejects.toThrow(/closed/)
      expect(await callee.read()).toBeUndefined()
      // The callee answers with its own close frame: the caller's direction ends cleanly too.
      expect(await caller.read()).toBeUndefined()
    } finally {
      await listener.close()
    }
  })

  it('ends on the sealed close frame itself, before any FIN arrives', async () => {
    const listener = new DirectListener('127.0.0.1')
    const { offer, accepted } = await listener.offer(link, CAP)
    const relay = await startRelay(offer.port, { forwardEnd: false })
    try {
      const caller = await connectDirect('127.0.0.1', link, { ...offer, port: relay.port }, CAP)
      const callee = await accepted
      await caller.write(Uint8Array.of(1))
      await caller.write(Uint8Array.of(2))
      await caller.close()
      expect(await callee.read()).toEqual(Uint8Array.of(1))
      expect(await callee.read()).toEqual(Uint8Array.of(2))
      expect(await within(callee.read(), 2_000, 'the end of the stream')).toBeUndefined()
      expect(await within(caller.read(), 2_000, 'the answering close frame')).toBeUndefined()
    } finally {
      relay.close()
      await listener.close()
    }
  })

  it('takes a FIN at a frame boundary without a close frame, or a peer that aborts, as a broken stream', async () => {
    const listener = new DirectListener('127.0.0.1')
    const first = await listener.offer(link, CAP)
    const relay = await startRelay(first.offer.port)
    try {
      const caller = await connectDirect('127.0.0.1', link, { ...first.offer, port: relay.port }, CAP)
      const callee = await first.accepted
      await caller.write(Uint8Array.of(7))
      expect(await callee.read()).toEqual(Uint8Array.of(7))
      relay.toCallee().end() // a bare FIN right after a whole frame
      await expect(callee.read()).rejects.toThrow(/without a close frame/)
      caller.abort(new Error('test over'))

      const second = await listener.offer(link, CAP)
      const caller2 = await connectDirect('127.0.0.1', link, second.offer, CAP)
      const callee2 = await second.accepted
      await caller2.write(Uint8Array.of(8))
      expect(await callee2.read()).toEqual(Uint8Array.of(8))
      caller2.abort(new Error('gone'))
      await expect(callee2.read()).rejects.toThrow(/without a close frame/)
    } finally {
      relay.close()
      await listener.close()
    }
  })

  it('refuses a caller whose keys are bound to another session, rank, member, coordinator or pool', async () => {
    const listener = new DirectListener('127.0.0.1')
    try {
      const { offer, accepted } = await listener.offer(link, CAP)
      const others: DirectBinding[] = [
        { ...link, session: 'bb'.repeat(16) },
        { ...link, caller: { ...link.caller, rank: 2 } },
        { ...link, callee: { ...link.callee, rank: 2 } },
        { ...link, caller: { ...link.caller, nodeId: 'node-x' } },
        { ...link, callee: { ...link.callee, nodeId: 'node-x' } },
        { ...link, caller: link.callee, callee: link.caller },
        { ...link, coordinator: 'node-x' },
        { ...link, poolId: 'pool-2' },
      ]
      for (const other of others) {
        await expect(connectDirect('127.0.0.1', other, offer, CAP)).rejects.toThrow(/refused our hello/)
      }
      // The offer still stands for the caller of that link.
      const caller = await connectDirect('127.0.0.1', link, offer, CAP)
      const callee = await accepted
      await caller.write(Uint8Array.of(1))
      expect(await callee.read()).toEqual(Uint8Array.of(1))
      caller.abort(new Error('test over'))
    } finally {
      await listener.close()
    }
  })

  it('drops a connection with an unknown id or a key it cannot prove, and ends on a tampered frame', async () => {
    const listener = new DirectListener('127.0.0.1')
    const { offer, accepted } = await listener.offer(link, CAP)
    // Flips one ciphertext bit of the caller's first frame after the hello.
    const relay = await startRelay(offer.port, {
      tamper: (chunk, index) => {
        if (index > 0) chunk[6]! ^= 1
        return chunk
      },
    })
    try {
      await expect(
        connectDirect('127.0.0.1', link, { ...offer, key: '11'.repeat(32) }, CAP),
      ).rejects.toThrow()
      await expect(connectDirect('127.0.0.1', link, { ...offer, id: '22'.repeat(16) }, CAP)).rejects.toThrow()
      const caller = await connectDirect('127.0.0.1', link, { ...offer, port: relay.port }, CAP)
      const callee = await accepted
      await caller.write(Uint8Array.of(5, 6, 7, 8))
      await expect(callee.read()).rejects.toThrow(/failed authentication/)
      caller.abort(new Error('done'))
    } finally {
      relay.close()
      await listener.close()
    }
  })

  it('refuses an empty data frame relabelled as a close frame', async () => {
    const listener = new DirectListener('127.0.0.1')
    const { offer, accepted } = await listener.offer(link, CAP)
    // Sets the kind byte (offset 4 of a frame) of the caller's frames after the hello (chunk 0).
    const relay = await startRelay(offer.port, {
      tamper: (chunk, index) => {
        if (index > 0) chunk[4] = 1
        return chunk
      },
    })
    try {
      const caller = await connectDirect('127.0.0.1', link, { ...offer, port: relay.port }, CAP)
      const callee = await accepted
      await caller.write(new Uint8Array(0))
      await expect(callee.read()).rejects.toThrow(/failed authentication/)
      caller.abort(new Error('done'))
    } finally {
      relay.close()
      await listener.close()
    }
  })
})
