import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { copyFile, glob, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { nodeVersionProblem } from '@meshnet/core'
import { agentRequest, REPO_ROOT, withBuildLock } from '@meshnet/test-harness'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { olderNode } from './older-node.ts'
import {
  configuredRegistry,
  isolatedEnv,
  type LocalRegistry,
  registryCaFile,
  startRegistry,
  unreachable,
} from './registry.ts'

// A release installed the way users install it. A local registry (verdaccio on 127.0.0.1, every
// package but @meshnet/* from the npm registry) receives the project's own release command,
// `pnpm release` (turbo build + changeset publish); then, in folders outside the workspace with their
// own npm cache and prefix, `npm install @meshnet/sdk` runs a plain ESM app against an agent of the
// installed `mesh`, and `npm install -g` gives the three programs, whose `mesh demo` must succeed.

const exec = promisify(execFile)
const uplink = await configuredRegistry()
const offline = await unreachable(uplink, await registryCaFile())
if (offline !== undefined)
  console.warn(
    `registry-install.test.ts skipped: ${offline}; the local registry takes every package but @meshnet/* from it`,
  )
const oldNode = await olderNode()

const PROGRAMS = {
  mesh: '@meshnet/node',
  'mesh-relay': '@meshnet/relay',
  'mesh-control-plane': '@meshnet/control-plane',
} as const

let root: string
let registry: LocalRegistry | undefined
let app: string
let prefix: string
/** Where `node` and the three installed programs are found first, as on a user's machine. */
let userEnv: NodeJS.ProcessEnv
const agents: ChildProcess[] = []

beforeAll(async () => {
  if (offline !== undefined) return
  root = await mkdtemp(join(tmpdir(), 'meshnet-registry-'))
  registry = await startRegistry(join(root, 'registry'), uplink)
  // --no-git-tag: the release is real, the tags it would leave in this checkout are not wanted.
  // While no other test builds the workspace (the SDK-app test packs it too).
  await withBuildLock(() =>
    explained('pnpm release', 'pnpm', ['run', 'release', '--no-git-tag'], {
      cwd: REPO_ROOT,
      env: isolatedEnv({
        npm_config_registry: registry!.url,
        npm_config_userconfig: registry!.npmrc,
        CI: 'true',
      }),
      timeout: 420_000,
      maxBuffer: 64 * 1024 * 1024,
    }),
  )

  await writeFile(join(root, 'npmrc-global'), '')
  const npm = (args: string[], cwd: string) =>
    explained(`npm ${args.join(' ')}`, 'npm', args, {
      cwd,
      env: isolatedEnv({
        npm_config_userconfig: registry!.npmrc,
        npm_config_globalconfig: join(root, 'npmrc-global'),
        npm_config_cache: join(root, 'npm-cache'),
      }),
      timeout: 300_000,
      maxBuffer: 64 * 1024 * 1024,
    })
  app = join(root, 'app')
  prefix = join(root, 'global')
  await mkdir(app)
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }))
  await copyFile(join(import.meta.dirname, 'registry-app.mjs'), join(app, 'app.mjs'))
  await Promise.all([
    npm(['install', '@meshnet/sdk'], app),
    npm(['install', '--global', '--prefix', prefix, ...Object.values(PROGRAMS)], root),
  ])
  userEnv = isolatedEnv({
    PATH: `${dirname(process.execPath)}:${join(prefix, 'bin')}:${process.env.PATH ?? ''}`,
    MESH_LOG: '',
  })
}, 900_000)

afterAll(async () => {
  await Promise.all(agents.map(stopAgent))
  await registry?.stop()
  if (root !== undefined) await rm(root, { recursive: true, force: true })
})

/** Runs a command; when it fails, the error carries the end of what it printed. */
async function explained(
  what: string,
  file: string,
  args: string[],
  options: Parameters<typeof exec>[2],
): Promise<void> {
  try {
    await exec(file, args, options)
  } catch (err) {
    const { stdout, stderr } = err as { stdout?: string; stderr?: string }
    const tail = (text = '') => text.slice(-6000)
    throw new Error(
      `${what} failed (${(err as Error).message.split('\n')[0]}):\n${tail(stdout)}\n${tail(stderr)}`,
    )
  }
}

/** SIGTERM, then SIGKILL if the agent is still there after 10 s. */
async function stopAgent(agent: ChildProcess): Promise<void> {
  if (agent.exitCode !== null || agent.signalCode !== null) return
  const exited = once(agent, 'exit')
  agent.kill('SIGTERM')
  const timer = setTimeout(() => agent.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
}

/** The workspace's packages by name: whether each is private, and its version. */
async function workspacePackages(): Promise<Map<string, { isPrivate: boolean; version: string }>> {
  const packages = new Map<string, { isPrivate: boolean; version: string }>()
  const dirs = [join(REPO_ROOT, 'bench')]
  for (const group of ['packages', 'apps', 'examples'])
    for (const dir of await readdir(join(REPO_ROOT, group))) dirs.push(join(REPO_ROOT, group, dir))
  for (const dir of dirs) {
    const file = join(dir, 'package.json')
    if (!existsSync(file)) continue // a shell-script example
    const pkg = JSON.parse(await readFile(file, 'utf8')) as {
      name: string
      version: string
      private?: boolean
    }
    packages.set(pkg.name, { isPrivate: pkg.private === true, version: pkg.version })
  }
  return packages
}

/** Every @meshnet package folder that the two installs put on disk. */
async function installedPackages(): Promise<string[]> {
  const dirs: string[] = []
  for (const base of [app, prefix])
    for await (const file of glob('**/node_modules/@meshnet/*/package.json', { cwd: base }))
      dirs.push(join(base, dirname(file)))
  return dirs
}

/** Runs an installed program by name, the way a shell finds it on PATH. */
function run(command: string, args: string[], env = userEnv, timeout = 60_000) {
  return exec(join(prefix, 'bin', command), args, { env, timeout, maxBuffer: 16 * 1024 * 1024 })
}

/** `mesh start` of the installed package, up when its control API is (agent.json with its pid). */
async function startInstalledAgent(dataDir: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(join(prefix, 'bin', 'mesh'), ['start', '--data-dir', dataDir, ...args], {
    env: userEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  agents.push(child)
  let output = ''
  child.stdout!.on('data', (chunk) => (output += chunk))
  child.stderr!.on('data', (chunk) => (output += chunk))
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
    if (child.exitCode !== null) throw new Error(`mesh start exited (${child.exitCode}):\n${output}`)
    try {
      const info = JSON.parse(await readFile(join(dataDir, 'agent.json'), 'utf8')) as { pid?: number }
      if (info.pid === child.pid) return child
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`mesh start did not bring up its control API within 30 s:\n${output}`)
}

describe.skipIf(offline !== undefined)('a release published to a registry and installed with npm', () => {
  it('publishes every public package of the workspace at its version, and no private one', async () => {
    for (const [name, { isPrivate, version }] of await workspacePackages()) {
      const response = await fetch(new URL(name.replace('/', '%2f'), registry!.url))
      const versions = response.ok
        ? Object.keys(((await response.json()) as { versions: Record<string, unknown> }).versions)
        : []
      expect({ name, versions }).toEqual({ name, versions: isPrivate ? [] : [version] })
    }
  })

  it('installs packages that carry their README, LICENSE and every docs/ page their code cites', async () => {
    const installed = await installedPackages()
    const names = new Set<string>()
    for (const dir of installed) {
      const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as {
        name: string
        dependencies?: Record<string, string>
      }
      names.add(pkg.name)
      const files = await readdir(dir)
      expect(files, pkg.name).toEqual(
        expect.arrayContaining(['README.md', 'LICENSE', 'package.json', 'dist']),
      )
      expect(Object.values(pkg.dependencies ?? {}).filter((spec) => spec.startsWith('workspace:'))).toEqual(
        [],
      )
      const cited = new Set<string>()
      for await (const file of glob('dist/**/*.{js,d.ts}', { cwd: dir }))
        for (const match of (await readFile(join(dir, file), 'utf8')).matchAll(
          /(?<![\w-]\/)\bdocs\/(?:[\w-]+\/)*[\w-]+\.md\b/g,
        ))
          cited.add(match[0])
      for (const doc of cited)
        await expect(readFile(join(dir, doc), 'utf8'), `${pkg.name} cites ${doc}`).resolves.toMatch(/^# /)
    }
    const published = [...(await workspacePackages())]
      .filter(([, { isPrivate }]) => !isPrivate)
      .map(([name]) => name)
    expect([...names].sort()).toEqual(published.sort())
    // The dashboard ships its page, built: the agent serves it without a build step or a CDN.
    const dashboard = installed.find((dir) => dir.endsWith(join('@meshnet', 'dashboard')))!
    await expect(readFile(join(dashboard, 'dist', 'web', 'index.html'), 'utf8')).resolves.toContain(
      '/assets/',
    )
  })

  it('npm install @meshnet/sdk: a plain ESM app streams a completion from an agent of the installed mesh', async () => {
    const model = join(root, 'tiny.gguf')
    const shape = ['--layers', '2', '--embd', '256', '--heads', '4', '--kv-heads', '2', '--vocab', '1000']
    await run('mesh', ['model-create', '--out', model, ...shape, '--type', 'Q8_0', '--seed', '3'])
    const dataDir = join(root, 'agent')
    await startInstalledAgent(dataDir, [
      '--local-only',
      '--model',
      model,
      '--public',
      '--no-beacons',
      '--json',
    ])
    const status = await agentRequest<{ nodeId: string; libp2p: { addresses: string[] } }>(dataDir, '/status')
    const address = status.libp2p.addresses.find((a) => !a.includes('/ws/'))!

    const { stdout } = await exec(process.execPath, ['app.mjs', address, 'tiny.gguf'], {
      cwd: app,
      env: userEnv,
      timeout: 120_000,
    })
    const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
      sdk: string
      nodes: string[]
      streamed: string[]
      text: string
      tokens: number
      members: string[]
    }
    // The installed copy from the registry, not this workspace's source.
    expect(summary.sdk).toBe(`file://${join(app, 'node_modules', '@meshnet', 'sdk', 'dist', 'index.js')}`)
    expect(summary.nodes).toEqual([status.nodeId])
    expect(summary.tokens).toBe(summary.streamed.length)
    expect(summary.streamed.length).toBeGreaterThan(0)
    expect(summary.text).toBe(summary.streamed.join(''))
    expect(summary.members).toEqual([status.nodeId])
  }, 180_000)

  it('npm install -g: mesh, mesh-relay and mesh-control-plane run, and mesh demo succeeds', async () => {
    const version = (
      JSON.parse(await readFile(join(REPO_ROOT, 'apps', 'node', 'package.json'), 'utf8')) as {
        version: string
      }
    ).version
    for (const command of Object.keys(PROGRAMS))
      expect((await run(command, ['--version'])).stdout.trim()).toMatch(/^\d+\.\d+\.\d+/)
    expect((await run('mesh', ['--version'])).stdout.trim()).toBe(version)

    const { stdout } = await run('mesh', ['demo', '--json', '--max-tokens', '8'], userEnv, 180_000)
    const demo = JSON.parse(stdout) as {
      ok: boolean
      reference: number[]
      runs: Array<{ mode: string; tokens: number; failovers: number; sameAsLlamaCpp: boolean }>
    }
    expect(demo.reference).toHaveLength(8)
    expect(demo.runs.map((r) => r.mode)).toEqual(['pipeline', 'tensor', 'pipeline with failover'])
    for (const result of demo.runs) expect(result).toMatchObject({ tokens: 8, sameAsLlamaCpp: true })
    expect(demo.runs[2]!.failovers).toBeGreaterThanOrEqual(1)
    expect(demo.ok).toBe(true)
  }, 240_000)

  it.skipIf(oldNode === undefined)(
    "the installed programs, run by the machine's older Node.js, say which Node they need and exit 1",
    async () => {
      const found = oldNode!.version
      // The programs' `#!/usr/bin/env node` finds the machine's Node first.
      const oldEnv = {
        ...userEnv,
        PATH: `${dirname(oldNode!.path)}:${join(prefix, 'bin')}:${process.env.PATH ?? ''}`,
      }
      for (const [command, packageName] of Object.entries(PROGRAMS)) {
        const result = await run(command, ['--version'], oldEnv).then(
          () => ({ code: 0, stdout: '', stderr: '' }),
          (err: { code: number; stdout: string; stderr: string }) => err,
        )
        expect(result.code).toBe(1)
        expect(result.stdout).toBe('')
        expect(result.stderr).toBe(`${nodeVersionProblem({ command, packageName }, found)}\n`)
      }
    },
  )
})
