// How heavy is `@meshnet/sdk` for an app? Packs the SDK and every @meshnet package it needs as they
// would be published, installs them with npm (from the npm registry, install scripts off) into an
// app outside the workspace, and prints the size of its node_modules against the 80 MB bar, the
// largest packages, and whether an inference runtime or gossipsub came along; then what
// `pnpm --filter @meshnet/sdk list --prod --depth Infinity` names of them in this workspace. The figure
// is a size against a fixed bar, not a ratio: it does not depend on the machine.
//   node --conditions=meshnet-source bench/sdk-install.bench.ts   (or `pnpm bench sdk-install`)
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { packWorkspace, REPO_ROOT, SDK_FORBIDDEN_DEPENDENCIES } from '@meshnet/test-harness'
import { table } from './lib.ts'

const exec = promisify(execFile)
const BAR_MB = 80
/** What @meshnet/sdk installed before the split (node-llama-cpp's prebuilt runtimes were 669 MB of it). */
const BEFORE_MB = 796

/** Names in `pnpm list`'s tree for `name` (`├─┬ @libp2p/gossipsub@17.1.1` → `@libp2p/gossipsub`). */
async function workspaceProdDependencies(name: string): Promise<string[]> {
  const { stdout } = await exec('pnpm', ['--filter', name, 'list', '--prod', '--depth', 'Infinity'], {
    cwd: REPO_ROOT,
    maxBuffer: 64 * 1024 * 1024,
  })
  return [...stdout.matchAll(/[─┬] (@?[^@\s]+)@\S+/g)].map((match) => match[1]!)
}

/** Bytes of the files under `dir` (what `du -b` counts, without following links). */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) total += await bytesUnder(path)
    else if (entry.isFile()) total += (await stat(path)).size
  }
  return total
}

/** Each installed package (`node_modules/<name>` and `node_modules/@scope/<name>`, nested ones too) with its size. */
async function installedPackages(modules: string): Promise<Array<{ name: string; bytes: number }>> {
  const found: Array<{ name: string; bytes: number }> = []
  for (const entry of await readdir(modules, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue
    const dirs = entry.name.startsWith('@')
      ? (await readdir(join(modules, entry.name))).map((n) => `${entry.name}/${n}`)
      : [entry.name]
    for (const name of dirs) {
      const dir = join(modules, name)
      found.push({ name, bytes: await bytesUnder(dir) })
      const nested = join(dir, 'node_modules')
      if (await stat(nested).catch(() => undefined)) found.push(...(await installedPackages(nested)))
    }
  }
  return found
}

const root = await mkdtemp(join(tmpdir(), 'meshnet-sdk-install-'))
try {
  const started = performance.now()
  const packed = await packWorkspace(['@meshnet/sdk'], join(root, 'tarballs'))
  const app = join(root, 'app')
  await mkdir(app)
  // The packed packages depend on each other by version, which no registry has yet: every one is
  // pointed at its tarball. Everything else comes from the npm registry.
  await writeFile(
    join(app, 'package.json'),
    JSON.stringify({
      name: 'sdk-install-probe',
      private: true,
      type: 'module',
      dependencies: { '@meshnet/sdk': packed['@meshnet/sdk'] },
      overrides: packed,
    }),
  )
  await exec('npm', ['install', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund'], {
    cwd: app,
    timeout: 600_000,
  })
  const modules = join(app, 'node_modules')
  const packages = await installedPackages(modules)
  const totalMb = (await bytesUnder(modules)) / 1e6
  const present = SDK_FORBIDDEN_DEPENDENCIES.filter((name) => packages.some((p) => p.name === name))
  const meshnet = packages.filter((p) => p.name.startsWith('@meshnet/')).map((p) => p.name)
  const heavy = /node-llama-cpp|gossipsub/
  const listed = [...new Set((await workspaceProdDependencies('@meshnet/sdk')).filter((n) => heavy.test(n)))]

  console.log(
    `@meshnet/sdk installed with npm into an app outside the workspace (${((performance.now() - started) / 1000).toFixed(0)} s)`,
  )
  console.log(`@meshnet packages installed: ${meshnet.sort().join(', ')}\n`)
  table(
    packages
      .sort((a, b) => b.bytes - a.bytes)
      .slice(0, 10)
      .map((p) => ({ 'largest packages': p.name, MB: (p.bytes / 1e6).toFixed(1) })),
  )
  console.log()
  table([
    {
      '': 'node_modules',
      packages: packages.length,
      MB: totalMb.toFixed(1),
      'bar MB': BAR_MB,
      'before the split MB': BEFORE_MB,
    },
  ])
  console.log(
    `\ninference runtime or gossipsub installed: ${present.length === 0 ? 'none' : present.join(', ')}`,
  )
  console.log(
    `pnpm --filter @meshnet/sdk list --prod --depth Infinity, names with node-llama-cpp or gossipsub: ${listed.length === 0 ? 'none' : listed.join(', ')}`,
  )
  const met = totalMb <= BAR_MB && present.length === 0 && listed.length === 0
  console.log(`bar: node_modules ≤ ${BAR_MB} MB with none of them: ${met ? 'met' : 'NOT met'}`)
  if (!met) process.exitCode = 1
} finally {
  await rm(root, { recursive: true, force: true })
}
