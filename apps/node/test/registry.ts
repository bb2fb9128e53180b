import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { get as httpGet } from 'node:http'
import { get as httpsGet } from 'node:https'
import { createRequire } from 'node:module'
import { createServer } from 'node:net'
import { dirname, join } from 'node:path'
import { rootCertificates } from 'node:tls'
import { promisify } from 'node:util'
import { eventually } from '@meshnet/test-harness'

const exec = promisify(execFile)

/** The registry this machine's npm uses (npm's own default when none is set): the local one's uplink. */
export async function configuredRegistry(): Promise<string> {
  try {
    const { stdout } = await exec('npm', ['config', 'get', 'registry'], { timeout: 30_000 })
    const url = stdout.trim()
    if (/^https?:\/\//.test(url)) return url.endsWith('/') ? url : `${url}/`
  } catch {}
  return 'https://registry.npmjs.org/'
}

/**
 * The CA file Node processes that reach the registry must trust besides Node's own roots (verdaccio's
 * uplink): where TLS goes through a proxy with a CA of its own, the system's bundle has it (and the
 * system npm's `cafile` names it), but Node reads neither unless told (NODE_EXTRA_CA_CERTS).
 */
export async function registryCaFile(): Promise<string | undefined> {
  if (process.env.NODE_EXTRA_CA_CERTS) return process.env.NODE_EXTRA_CA_CERTS
  try {
    const { stdout } = await exec('npm', ['config', 'get', 'cafile'], { timeout: 30_000 })
    const file = stdout.trim()
    if (file !== '' && file !== 'null' && file !== 'undefined' && existsSync(file)) return file
  } catch {}
  return existsSync(SYSTEM_CA_BUNDLE) ? SYSTEM_CA_BUNDLE : undefined
}

/** Debian's CA bundle (ca-certificates). */
const SYSTEM_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt'

/** Why `registry` cannot be reached from here (trusting `caFile` too), or undefined when it answers. */
export async function unreachable(registry: string, caFile: string | undefined): Promise<string | undefined> {
  const ca = caFile === undefined ? undefined : [...rootCertificates, await readFile(caFile, 'utf8')]
  try {
    const status = await new Promise<number>((resolve, reject) => {
      const get = registry.startsWith('https:') ? httpsGet : httpGet
      const request = get(new URL('-/ping', registry), { ca, timeout: 15_000 }, (response) => {
        response.resume()
        resolve(response.statusCode ?? 0)
      })
      request.on('timeout', () => request.destroy(new Error('no answer within 15 s')))
      request.on('error', reject)
    })
    return status >= 200 && status < 300 ? undefined : `${registry} answered ${status}`
  } catch (err) {
    return `${registry} cannot be reached (${(err as Error).message})`
  }
}

/**
 * The environment of an npm or pnpm command that must see only what the test gives it: no npm_config_*
 * or npm_package_* inherited from the pnpm or vitest that runs the test, `node` on PATH is this Node.
 */
export function isolatedEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env))
    if (!/^(npm|pnpm)_/i.test(key) && !/^(NODE_OPTIONS|VITEST.*|INIT_CWD)$/.test(key)) env[key] = value
  return {
    ...env,
    PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
    TURBO_TELEMETRY_DISABLED: '1',
    TURBO_NO_UPDATE_NOTIFIER: '1',
    DO_NOT_TRACK: '1',
    ...extra,
  }
}

export interface LocalRegistry {
  /** `http://127.0.0.1:<port>/` */
  readonly url: string
  /**
   * An npmrc with that registry and a publish token for it: npm and pnpm read it through
   * `npm_config_userconfig`, and nothing of the user's own npm configuration is used.
   */
  readonly npmrc: string
  output(): string
  stop(): Promise<void>
}

async function freePort(): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

/**
 * verdaccio on 127.0.0.1 with its storage in `dir`: `@meshnet/*` only from what is published to it,
 * every other package from `uplink`. A user is created and its token written to the npmrc.
 */
export async function startRegistry(dir: string, uplink: string): Promise<LocalRegistry> {
  await mkdir(dir, { recursive: true })
  const config = join(dir, 'config.yaml')
  await writeFile(
    config,
    [
      `storage: ${join(dir, 'storage')}`,
      'auth:',
      `  htpasswd: { file: ${join(dir, 'htpasswd')} }`,
      // JWT tokens: the legacy ones make verdaccio check the bcrypt password on every request.
      'security:',
      '  api: { jwt: { sign: { expiresIn: 1h } } }',
      'uplinks:',
      `  npmjs: { url: '${uplink}', timeout: 60s, agent_options: { keepAlive: true, maxSockets: 64 } }`,
      'packages:',
      "  '@meshnet/*': { access: $all, publish: $authenticated }",
      "  '**': { access: $all, proxy: npmjs }",
      'log: { type: stdout, format: pretty, level: warn }',
      '',
    ].join('\n'),
  )
  const port = await freePort()
  const url = `http://127.0.0.1:${port}/`
  const caFile = await registryCaFile()
  const bin = join(
    dirname(createRequire(import.meta.url).resolve('verdaccio/package.json')),
    'bin',
    'verdaccio',
  )
  const child: ChildProcess = spawn(
    process.execPath,
    [bin, '--config', config, '--listen', `127.0.0.1:${port}`],
    {
      cwd: dir,
      env: isolatedEnv(caFile === undefined ? {} : { NODE_EXTRA_CA_CERTS: caFile }),
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let output = ''
  child.stdout!.on('data', (chunk) => (output += chunk))
  child.stderr!.on('data', (chunk) => (output += chunk))
  const exited = once(child, 'exit')
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    await exited
  }
  try {
    await eventually('verdaccio to answer', async () => {
      if (child.exitCode !== null) throw new Error(`verdaccio exited (${child.exitCode}):\n${output}`)
      return (await fetch(new URL('-/ping', url))).ok
    })
    const user = 'meshnet-release-test'
    const response = await fetch(new URL(`-/user/org.couchdb.user:${user}`, url), {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: user, password: `${user}-password` }),
    })
    const { token } = (await response.json()) as { token?: string }
    if (!response.ok || token === undefined)
      throw new Error(`verdaccio refused the test user (${response.status})`)
    const npmrc = join(dir, 'npmrc')
    await writeFile(
      npmrc,
      [
        `registry=${url}`,
        `//127.0.0.1:${port}/:_authToken=${token}`,
        'audit=false',
        'fund=false',
        'update-notifier=false',
        '',
      ].join('\n'),
    )
    return { url, npmrc, output: () => output, stop }
  } catch (err) {
    await stop()
    throw err
  }
}
