import { execFile, execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'

import { MESH_BIN } from '@meshnet/test-harness'
/** Network namespaces need root and iproute2; tests that use them skip cleanly otherwise. */
export const canUseNetns: boolean = (() => {
  if (process.getuid?.() !== 0) return false
  const probe = `mnprobe${randomBytes(3).toString('hex')}`
  const ok = spawnSync('ip', ['netns', 'add', probe]).status === 0
  if (ok) spawnSync('ip', ['netns', 'del', probe])
  return ok
})()

export interface TestLan {
  /** Namespace name and address of each host, in order. */
  hosts: Array<{ ns: string; address: string }>
  /** Prefix for commands run inside host `i`'s namespace. */
  exec(i: number): string[]
  destroy(): void
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] })

/**
 * Builds an isolated LAN of `count` hosts: one namespace per host, each with a veth whose other end
 * sits on a bridge in a separate switch namespace. Nothing is attached to the machine's own
 * interfaces; addresses live only inside these namespaces (10.77.<n>.0/24).
 */
export function createTestLan(count: number): TestLan {
  const id = randomBytes(3).toString('hex')
  const subnet = 1 + (randomBytes(1)[0]! % 250)
  const sw = `mnsw${id}`
  const hosts = Array.from({ length: count }, (_, i) => ({
    ns: `mnh${i}${id}`,
    address: `10.77.${subnet}.${i + 1}`,
  }))
  const lan: TestLan = {
    hosts,
    exec: (i) => ['ip', 'netns', 'exec', hosts[i]!.ns],
    destroy() {
      for (const ns of [...hosts.map((h) => h.ns), sw]) spawnSync('ip', ['netns', 'del', ns])
    },
  }
  try {
    ip('netns', 'add', sw)
    ip('-n', sw, 'link', 'add', 'br0', 'type', 'bridge')
    ip('-n', sw, 'link', 'set', 'br0', 'up')
    hosts.forEach((host, i) => {
      ip('netns', 'add', host.ns)
      ip('-n', host.ns, 'link', 'set', 'lo', 'up')
      ip('-n', host.ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', `p${i}`, 'netns', sw)
      ip('-n', sw, 'link', 'set', `p${i}`, 'master', 'br0')
      ip('-n', sw, 'link', 'set', `p${i}`, 'up')
      ip('-n', host.ns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0')
      ip('-n', host.ns, 'link', 'set', 'eth0', 'up')
      ip('-n', host.ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0')
    })
  } catch (err) {
    lan.destroy()
    throw err
  }
  return lan
}

/** Runs the `mesh` CLI, inside a namespace when `prefix` is `lan.exec(i)` (or on the host with []). */
export function meshIn(
  prefix: string[],
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const [cmd, ...rest] = [...prefix, ...MESH, ...args]
    execFile(
      cmd!,
      rest,
      { timeout: 60_000, env: { ...process.env, MESH_LOG: '' } },
      (error, stdout, stderr) =>
        resolve({
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        }),
    )
  })
}

/** The command line of the `mesh` CLI from source. */
export const MESH = [process.execPath, '--conditions=meshnet-source', MESH_BIN]
