// The README's main job. Today it creates a node in a throw-away data dir with the real `mesh`
// CLI and prints its node id; it becomes `mesh demo` (a local three-agent mesh running a sharded
// generation) once sharded inference lands.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const bin = join(import.meta.dirname, '..', 'apps', 'node', 'src', 'bin.ts')
const dataDir = mkdtempSync(join(tmpdir(), 'meshnet-demo-'))
try {
  const mesh = (...args: string[]) =>
    execFileSync(process.execPath, ['--conditions=meshnet-source', bin, ...args, '--data-dir', dataDir], {
      encoding: 'utf8',
    })
  process.stdout.write(mesh('init', '--network-id', 'demo', '--name', 'demo-node'))
  const again = JSON.parse(mesh('init', '--json')) as { nodeId: string; created: boolean }
  console.log(`\nRan init again: same node id (${again.nodeId}), created=${again.created}.`)
} finally {
  rmSync(dataDir, { recursive: true, force: true })
}
