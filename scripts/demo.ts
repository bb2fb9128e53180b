// The README's main job: `mesh demo`, a three-node mesh on this machine (loopback only) running a
// sharded generation checked against llama.cpp. Extra arguments go to `mesh demo` (`--help`).
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'

const bin = join(import.meta.dirname, '..', 'apps', 'node', 'src', 'bin.ts')
const result = spawnSync(
  process.execPath,
  ['--conditions=meshnet-source', bin, 'demo', ...process.argv.slice(2)],
  {
    stdio: 'inherit',
  },
)
process.exit(result.status ?? 1)
