import { execFileSync } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Logger } from '@meshnet/core'
import { silentLogger } from '@meshnet/core'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { openStore } from '../src/store.ts'

// A real full disk: a 2 MiB tmpfs this test mounts (root only; skipped elsewhere), filled up after
// the store is open.
const root = process.getuid?.() === 0 && process.platform === 'linux'
let dir: string
let mounted = false

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshnet-full-disk-'))
  if (!root) return
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir])
    mounted = true
  } catch {
    // No mount here (a container without the capability): the test below skips.
  }
})

afterAll(async () => {
  if (mounted) execFileSync('umount', [dir])
  await rm(dir, { recursive: true, force: true })
})

it.skipIf(!root)(
  'drops peer writes on a full disk, counts them and logs once, instead of throwing',
  async (ctx) => {
    if (!mounted) ctx.skip()
    const warnings: string[] = []
    const logger = silentLogger()
    logger.warn = ((_fields: unknown, message?: string) => {
      warnings.push(String(message))
    }) as Logger['warn']
    const store = openStore({ dataDir: dir, logger })
    try {
      store.upsertPeer('peer-before', { addresses: ['/ip4/127.0.0.1/tcp/1'] })
      // Fill what is left of the disk.
      await writeFile(join(dir, 'filler'), Buffer.alloc(4 * 1024 * 1024)).catch(() => undefined)
      const big = Array.from({ length: 32 }, (_, i) => `/ip4/127.0.0.1/tcp/${i}/${'x'.repeat(2000)}`)
      for (let i = 0; i < 200; i++) {
        expect(() =>
          store.upsertPeer(`peer-${i}`, { addresses: big, capabilities: { pad: 'y'.repeat(8000) } }),
        ).not.toThrow()
      }
      expect(store.writeFailures).toBeGreaterThan(0)
      expect(warnings.filter((w) => w.includes('could not write a peer'))).toHaveLength(1)
      // What was written before the disk filled is still there.
      expect(store.getPeer('peer-before')?.addresses).toEqual(['/ip4/127.0.0.1/tcp/1'])
    } finally {
      store.close()
    }
  },
)
