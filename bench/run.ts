// `pnpm bench`: runs every benchmark in this folder, one child process each, in name order.
// Each prints its own table; figures are ratios against a reference measured in the same run, except
// sdk-install's, a size against a fixed bar. `node --conditions=meshnet-source run.ts <prefix>...`
// runs only the benchmarks whose file names start with one of the prefixes. `links` shapes links
// in network namespaces of its own: it needs root and iproute2, and prints a skip line without them.
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'

const only = process.argv.slice(2)
const benches = readdirSync(import.meta.dirname)
  .filter((file) => file.endsWith('.bench.ts'))
  .filter((file) => only.length === 0 || only.some((name) => file.startsWith(name)))
  .sort()
if (benches.length === 0) {
  console.log('no benchmarks matched')
  process.exit(only.length === 0 ? 0 : 1)
}
let failed = 0
for (const file of benches) {
  console.log(`\n=== ${file}`)
  const result = spawnSync(
    process.execPath,
    ['--conditions=meshnet-source', join(import.meta.dirname, file)],
    {
      stdio: 'inherit',
    },
  )
  if (result.status !== 0) failed++
}
process.exit(failed === 0 ? 0 : 1)
