// llama.cpp's own tools (llama-bench, ggml-rpc-server, llama-quantize, llama-completion), built once from
// the llama.cpp source that node-llama-cpp ships and cached, and the reference figures they measure:
// llama.cpp on the whole model file, and llama.cpp with the layers split over ggml RPC servers on
// 127.0.0.1.
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream, existsSync } from 'node:fs'
import { copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { type AddressInfo, connect, createServer, type Server } from 'node:net'
import { cpus, homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/** Absolute paths to llama.cpp binaries built from node-llama-cpp's llama.cpp source. */
export interface LlamaTools {
  /** The cache directory: `bin/` holds the binaries, `manifest.json` says how they were built. */
  dir: string
  /** llama.cpp commit the binaries were built from (the bundle's HEAD). */
  commit: string
  /** `llama-bench`: prompt and decode tokens/s, JSON output (`-o json`). */
  bench: string
  /** `ggml-rpc-server`: serves this machine's CPU as a ggml RPC device. */
  rpcServer: string
  /** `llama-quantize`: requantizes a GGUF file. */
  quantize: string
  /** `llama-completion`: the classic prompt-then-generate program (prints llama.cpp's own timings). */
  completion: string
  /** `llama-batched-bench`: prompt and decode throughput of several sequences decoded in one batch. */
  batchedBench: string
}

export interface LlamaToolsOptions {
  /** Progress lines (clone, configure, build percentage); the build takes minutes. */
  log?: (line: string) => void
  /** The git bundle to build; default node-llama-cpp's `llama/gitRelease.bundle`. */
  bundle?: string
  /** Root of the cache; default `$MESHNET_TOOLS_CACHE`, else `~/.cache/meshnet/llama-tools`. */
  cacheRoot?: string
}

/** CMake targets built, by the `LlamaTools` field that holds their path. */
const TARGETS = {
  bench: 'llama-bench',
  // In this llama.cpp the RPC server target is `ggml-rpc-server` (it used to be `rpc-server`).
  rpcServer: 'ggml-rpc-server',
  quantize: 'llama-quantize',
  // `llama-cli` now lives with the server (LLAMA_BUILD_SERVER, web UI); `llama-completion` is the old main.
  completion: 'llama-completion',
  batchedBench: 'llama-batched-bench',
} as const satisfies Record<Exclude<keyof LlamaTools, 'dir' | 'commit'>, string>

const CMAKE_FLAGS: readonly string[] = [
  '-DCMAKE_BUILD_TYPE=Release',
  // Static binaries: they keep working after the build directory is renamed into the cache.
  '-DBUILD_SHARED_LIBS=OFF',
  '-DGGML_NATIVE=ON',
  '-DGGML_RPC=ON',
  '-DGGML_CCACHE=OFF',
  '-DLLAMA_BUILD_TESTS=OFF',
  '-DLLAMA_BUILD_EXAMPLES=OFF',
  '-DLLAMA_BUILD_SERVER=OFF',
  '-DLLAMA_BUILD_APP=OFF',
  // LLAMA_CURL is deprecated and ignored in this llama.cpp; HTTPS (model download) is LLAMA_OPENSSL.
  '-DLLAMA_OPENSSL=OFF',
]

/** What `manifest.json` records; a cache entry built another way (or on another CPU) is rebuilt. */
interface Manifest {
  bundleSha256: string
  commit: string
  recipe: string
  cpu: string
  buildSeconds: number
  builtAt: string
}

/** The build recipe: flags and targets; a change to either invalidates the cache entry. */
function recipe(): string {
  return JSON.stringify({ flags: CMAKE_FLAGS, targets: Object.values(TARGETS) })
}

/** This machine's CPU model: `GGML_NATIVE` binaries may not run on another one. */
function cpuModel(): string {
  return cpus()[0]?.model ?? 'unknown'
}

/**
 * Builds llama.cpp's tools from node-llama-cpp's git bundle, or returns the cached build at once.
 *
 * The cache entry is `<cacheRoot>/<first 16 hex of the bundle's sha256>`; it is built in a work
 * directory beside it and renamed into place when complete, so a failed or interrupted build leaves
 * no entry. Returns `{ skip }` when there is no bundle, or it must be built and git, cmake or g++ is
 * missing.
 */
export async function llamaTools(options: LlamaToolsOptions = {}): Promise<LlamaTools | { skip: string }> {
  const log = options.log ?? (() => {})
  const bundle = options.bundle ?? nodeLlamaCppBundle()
  if (bundle === undefined || !existsSync(bundle)) {
    return { skip: `no llama.cpp git bundle at ${bundle ?? 'node-llama-cpp/llama/gitRelease.bundle'}` }
  }
  const sha = await sha256File(bundle)
  const root =
    options.cacheRoot ?? process.env.MESHNET_TOOLS_CACHE ?? join(homedir(), '.cache/meshnet/llama-tools')
  const dir = join(root, sha.slice(0, 16))
  const cached = await readCache(dir, sha)
  if (cached !== undefined) return cached
  const missing = await missingCommands(['git', 'cmake', 'g++'])
  if (missing.length > 0) return { skip: `building llama.cpp's tools needs ${missing.join(', ')} on PATH` }
  await mkdir(root, { recursive: true })
  const work = join(root, `.build-${sha.slice(0, 16)}-${process.pid}-${Date.now()}`)
  try {
    const stage = await build(bundle, sha, work, log)
    await install(stage, dir, sha)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
  const built = await readCache(dir, sha)
  if (built === undefined) throw new Error(`llama.cpp tools built but ${dir} is not a complete cache entry`)
  return built
}

/** node-llama-cpp's `llama/gitRelease.bundle`, found through @meshnet/llama-cpp, which depends on it. */
function nodeLlamaCppBundle(): string | undefined {
  const fromLlamaCpp = createRequire(new URL('../packages/llama-cpp/package.json', import.meta.url))
  let entry: string
  try {
    entry = fromLlamaCpp.resolve('node-llama-cpp')
  } catch {
    return undefined
  }
  for (let dir = dirname(entry); dir !== dirname(dir); dir = dirname(dir)) {
    const bundle = join(dir, 'llama', 'gitRelease.bundle')
    if (existsSync(join(dir, 'package.json')) && existsSync(bundle)) return bundle
  }
  return undefined
}

/** The commands among `names` that `which` cannot find. */
async function missingCommands(names: string[]): Promise<string[]> {
  const found = await Promise.all(names.map(async (name) => (await run('which', [name])).code === 0))
  return names.filter((_, i) => !found[i])
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** The tools in cache entry `dir`, if it is complete and was built from `sha` by this recipe on this CPU. */
async function readCache(dir: string, sha: string): Promise<LlamaTools | undefined> {
  let manifest: Manifest
  try {
    manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest
  } catch {
    return undefined
  }
  if (manifest.bundleSha256 !== sha || manifest.recipe !== recipe() || manifest.cpu !== cpuModel()) {
    return undefined
  }
  const bin = (target: string): string => join(dir, 'bin', target)
  if (!Object.values(TARGETS).every((target) => existsSync(bin(target)))) return undefined
  return {
    dir,
    commit: manifest.commit,
    bench: bin(TARGETS.bench),
    rpcServer: bin(TARGETS.rpcServer),
    quantize: bin(TARGETS.quantize),
    completion: bin(TARGETS.completion),
    batchedBench: bin(TARGETS.batchedBench),
  }
}

/** Clones, configures and builds in `work`; returns `work/stage`, a complete cache entry. */
async function build(
  bundle: string,
  sha: string,
  work: string,
  log: (line: string) => void,
): Promise<string> {
  const started = performance.now()
  const src = join(work, 'src')
  const out = join(work, 'build')
  const stage = join(work, 'stage')
  log(`llama-tools: cloning ${bundle}`)
  await checked('git', ['clone', '--quiet', bundle, src])
  const commit = (await checked('git', ['-C', src, 'rev-parse', 'HEAD'])).trim()
  log(`llama-tools: configuring llama.cpp ${commit.slice(0, 10)}`)
  await checked('cmake', ['-S', src, '-B', out, ...CMAKE_FLAGS])
  log(`llama-tools: building ${Object.values(TARGETS).join(', ')} with -j2 (takes minutes)`)
  await checked('cmake', ['--build', out, '-j', '2', '--target', ...Object.values(TARGETS)], {
    onLine: progressFilter(log),
  })
  await mkdir(join(stage, 'bin'), { recursive: true })
  for (const target of Object.values(TARGETS)) {
    await copyFile(join(out, 'bin', target), join(stage, 'bin', target))
  }
  const buildSeconds = Math.round((performance.now() - started) / 1000)
  const manifest: Manifest = {
    bundleSha256: sha,
    commit,
    recipe: recipe(),
    cpu: cpuModel(),
    buildSeconds,
    builtAt: new Date().toISOString(),
  }
  await writeFile(join(stage, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`)
  log(`llama-tools: built in ${buildSeconds} s`)
  return stage
}

/** Passes on the build's progress lines (`[ 42%] …` from make, `[12/80] …` from ninja) once per percent. */
function progressFilter(log: (line: string) => void): (line: string) => void {
  let last = -1
  return (line: string) => {
    const make = /^\[\s*(\d+)%\]/.exec(line)
    const ninja = /^\[(\d+)\/(\d+)\]/.exec(line)
    const percent = make
      ? Number(make[1])
      : ninja
        ? Math.floor((100 * Number(ninja[1])) / Number(ninja[2]))
        : -1
    if (percent <= last) return
    last = percent
    log(`llama-tools: ${line.length > 140 ? `${line.slice(0, 137)}...` : line}`)
  }
}

/** Moves a finished `stage` to `dir`; an entry another process finished first wins. */
async function install(stage: string, dir: string, sha: string): Promise<void> {
  if (existsSync(dir)) {
    if ((await readCache(dir, sha)) !== undefined) return
    // A stale entry (another recipe or CPU): move it aside, then replace it.
    const old = `${dir}.old-${process.pid}-${Date.now()}`
    await rename(dir, old)
    await rm(old, { recursive: true, force: true })
  }
  try {
    await rename(stage, dir)
  } catch (error) {
    if ((await readCache(dir, sha)) === undefined) throw error
  }
}

// ---------------------------------------------------------------------------------------------------
// Processes

interface RunResult {
  code: number | null
  stdout: string
  stderr: string
}

interface RunOptions {
  /** Called with each line of stdout and stderr, as it arrives. */
  onLine?: (line: string) => void
  signal?: AbortSignal
  env?: NodeJS.ProcessEnv
}

/** Runs a program to its end; never rejects for a non-zero exit (see `checked`). */
function run(command: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: options.signal,
      env: options.env ?? process.env,
    })
    const output = { stdout: '', stderr: '' }
    for (const stream of ['stdout', 'stderr'] as const) {
      let pending = ''
      child[stream].setEncoding('utf8')
      child[stream].on('data', (chunk: string) => {
        output[stream] += chunk
        if (options.onLine === undefined) return
        pending += chunk
        const lines = pending.split('\n')
        pending = lines.pop() ?? ''
        for (const line of lines) options.onLine(line)
      })
    }
    child.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') resolve({ code: 127, ...output })
      else reject(error)
    })
    child.on('close', (code) => resolve({ code, ...output }))
  })
}

/** Runs a program and returns its stdout; a non-zero exit throws with the end of its output. */
async function checked(command: string, args: string[], options: RunOptions = {}): Promise<string> {
  const result = await run(command, args, options)
  if (result.code !== 0) {
    const tail = `${result.stdout}\n${result.stderr}`.trim().split('\n').slice(-30).join('\n')
    throw new Error(`${command} ${args.join(' ')} exited with ${result.code}:\n${tail}`)
  }
  return result.stdout
}

// ---------------------------------------------------------------------------------------------------
// llama-bench

/** One row of `llama-bench -o json`: one test (a prompt pass or a decode run) over its repetitions. */
interface BenchRow {
  n_prompt: number
  n_gen: number
  n_threads: number
  /** Tokens/s of each repetition: (n_prompt + n_gen) / its time. */
  samples_ts: number[]
  /** Nanoseconds of each repetition. */
  samples_ns: number[]
  avg_ts: number
  backends: string
}

function isBenchRow(value: unknown): value is BenchRow {
  if (typeof value !== 'object' || value === null) return false
  const row = value as Record<string, unknown>
  return (
    typeof row.n_prompt === 'number' &&
    typeof row.n_gen === 'number' &&
    typeof row.avg_ts === 'number' &&
    Array.isArray(row.samples_ns) &&
    Array.isArray(row.samples_ts)
  )
}

/** The rows of `llama-bench -o json` output (a JSON array on stdout). */
function parseBenchRows(stdout: string): BenchRow[] {
  const json = stdout.slice(stdout.indexOf('['), stdout.lastIndexOf(']') + 1)
  const parsed: unknown = JSON.parse(json)
  if (!Array.isArray(parsed) || !parsed.every(isBenchRow)) {
    throw new Error(`llama-bench printed JSON that is not a list of tests: ${json.slice(0, 200)}`)
  }
  return parsed
}

/** The row of the test that had `n_prompt` prompt and `n_gen` decoded tokens. */
function benchRow(rows: BenchRow[], nPrompt: number, nGen: number): BenchRow {
  const row = rows.find((r) => r.n_prompt === nPrompt && r.n_gen === nGen)
  if (row === undefined)
    throw new Error(`llama-bench printed no test with ${nPrompt} prompt, ${nGen} decoded tokens`)
  return row
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

export interface MeasureOptions {
  /** CPU threads of llama.cpp (`-t`), and of each RPC server. */
  threads: number
  /** Prompt tokens of the prompt pass (`-p`); random token ids, one batch. */
  promptTokens: number
  /** Tokens decoded one at a time (`-n`). */
  genTokens: number
  /** Timed repetitions of each test after one warm-up (`-r`); default 3. */
  repetitions?: number
  /**
   * How hard llama.cpp's idle threads busy-wait: llama-bench's `--poll` (0 to 100; llama.cpp's default
   * 50). 0 also sets `OMP_WAIT_POLICY=passive` for llama-bench and the RPC servers (whose OpenMP
   * threads otherwise spin). On a machine busy with other work, 0 keeps multi-threaded figures from
   * collapsing.
   */
  poll?: number
  /** Kills llama-bench (and the RPC servers) when aborted. */
  signal?: AbortSignal
}

/**
 * llama.cpp's figures for one model. Throughputs are medians over repetitions of llama-bench's tests
 * in one warm process (model loaded, one warm-up run): the prompt test is one pass over
 * `promptTokens` random tokens from an empty context; the decode test is `genTokens` single-token
 * passes from an empty context (as llama-bench's `tg`; no prompt before them).
 */
export interface LlamaCppFigures {
  /** Prompt tokens per second: `promptTokens` / the time of one prompt pass. */
  promptTokPerS: number
  /** Decoded tokens per second: `genTokens` / the time of `genTokens` single-token passes. */
  decodeTokPerS: number
  /**
   * Time to load in a fresh llama-bench process: from spawning it until it starts the prompt pass
   * (process start, backend init, model load (mmap; the file is in the page cache), context creation;
   * over RPC also sending the weights to the servers).
   */
  loadMs: number
  /** The first, cold prompt pass of that fresh process (no warm-up before it). */
  coldPromptMs: number
  /**
   * Time to first token of a fresh process: `loadMs + coldPromptMs`. The prompt pass yields the
   * logits of the first generated token; sampling it (microseconds) is not included.
   */
  ttftMs: number
}

/** The environment of llama.cpp processes: with `poll` 0, OpenMP threads sleep when idle. */
function threadEnv(poll: number | undefined): NodeJS.ProcessEnv {
  return poll === 0 ? { ...process.env, OMP_WAIT_POLICY: 'passive' } : process.env
}

/** llama-bench arguments common to every run of `model`. */
function benchArgs(model: string, options: MeasureOptions): string[] {
  const poll = options.poll === undefined ? [] : ['--poll', String(options.poll)]
  return ['-m', model, '-t', String(options.threads), ...poll, '-o', 'json']
}

/** Runs llama-bench, failing with its stderr when it fails. */
async function runBench(tools: LlamaTools, args: string[], options: RunOptions): Promise<BenchRow[]> {
  const result = await run(tools.bench, args, options)
  if (result.code !== 0) {
    const tail = result.stderr.trim().split('\n').slice(-20).join('\n')
    throw new Error(`llama-bench ${args.join(' ')} exited with ${result.code}:\n${tail}`)
  }
  return parseBenchRows(result.stdout)
}

/** Prompt and decode tokens/s of a warm llama-bench process (see `LlamaCppFigures`). */
async function warmThroughput(
  tools: LlamaTools,
  args: string[],
  options: MeasureOptions,
): Promise<Pick<LlamaCppFigures, 'promptTokPerS' | 'decodeTokPerS'>> {
  const reps = String(options.repetitions ?? 3)
  const rows = await runBench(
    tools,
    [...args, '-p', String(options.promptTokens), '-n', String(options.genTokens), '-r', reps],
    { signal: options.signal, env: threadEnv(options.poll) },
  )
  return {
    promptTokPerS: median(benchRow(rows, options.promptTokens, 0).samples_ts),
    decodeTokPerS: median(benchRow(rows, 0, options.genTokens).samples_ts),
  }
}

/**
 * Load time and time to first token of a fresh llama-bench process running one prompt pass without
 * warm-up. The end of loading is when llama-bench reports (`--progress`) that the pass starts.
 */
async function coldStart(
  tools: LlamaTools,
  args: string[],
  options: MeasureOptions,
): Promise<Pick<LlamaCppFigures, 'loadMs' | 'coldPromptMs' | 'ttftMs'>> {
  let loadMs: number | undefined
  const started = performance.now()
  const onLine = (line: string): void => {
    if (loadMs === undefined && /: prompt run 1\//.test(line)) loadMs = performance.now() - started
  }
  const rows = await runBench(
    tools,
    [...args, '-p', String(options.promptTokens), '-n', '0', '-r', '1', '--no-warmup', '--progress'],
    { onLine, signal: options.signal, env: threadEnv(options.poll) },
  )
  if (loadMs === undefined) throw new Error('llama-bench --progress printed no "prompt run" line')
  const coldPromptMs = benchRow(rows, options.promptTokens, 0).samples_ns[0]! / 1e6
  return { loadMs, coldPromptMs, ttftMs: loadMs + coldPromptMs }
}

/** llama.cpp on the whole model file on this machine's CPU (see `LlamaCppFigures` for each figure). */
export async function measureLlamaCpp(
  tools: LlamaTools,
  model: string,
  options: MeasureOptions,
): Promise<LlamaCppFigures> {
  const args = [...benchArgs(model, options), '-ngl', '0']
  const cold = await coldStart(tools, args, options)
  const warm = await warmThroughput(tools, args, options)
  return { ...warm, ...cold }
}

// ---------------------------------------------------------------------------------------------------
// RPC

export interface RpcMeasureOptions extends MeasureOptions {
  /** ggml RPC servers started on 127.0.0.1, each serving this machine's CPU with `threads` threads. */
  servers: number
}

/**
 * llama.cpp with every layer offloaded (`-ngl 99`) and split evenly by layers (`-sm layer -ts 1/1/…`)
 * over `servers` ggml RPC servers on 127.0.0.1; llama-bench holds only the token embeddings and
 * drives the servers over TCP. The figures mean what they do in `LlamaCppFigures`; `loadMs` includes
 * sending every weight to the servers.
 */
export interface LlamaRpcFigures extends LlamaCppFigures {
  servers: number
}

/** A running ggml RPC server. */
interface RpcServer {
  endpoint: string
  stop: () => Promise<void>
}

/**
 * Starts `options.servers` RPC servers, measures llama.cpp split over them, and stops them all,
 * also when starting or measuring fails.
 */
export async function measureLlamaRpc(
  tools: LlamaTools,
  model: string,
  options: RpcMeasureOptions,
): Promise<LlamaRpcFigures> {
  if (!Number.isInteger(options.servers) || options.servers < 1) {
    throw new Error(`measureLlamaRpc needs at least one server, got ${options.servers}`)
  }
  const servers: RpcServer[] = []
  try {
    const ports = await freePorts(options.servers)
    for (const port of ports) {
      servers.push(await startRpcServer(tools, port, options))
    }
    const args = [
      ...benchArgs(model, options),
      '--rpc',
      servers.map((s) => s.endpoint).join(','),
      '-ngl',
      '99',
      '-sm',
      'layer',
      '-ts',
      servers.map(() => '1').join('/'),
    ]
    const cold = await coldStart(tools, args, options)
    const warm = await warmThroughput(tools, args, options)
    return { ...warm, ...cold, servers: options.servers }
  } finally {
    await Promise.all(servers.map((s) => s.stop()))
  }
}

/** `count` distinct free TCP ports on 127.0.0.1 (held together, then released). */
async function freePorts(count: number): Promise<number[]> {
  const listeners: Server[] = []
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer()
      listeners.push(server)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', resolve)
      })
    }
    return listeners.map((s) => (s.address() as AddressInfo).port)
  } finally {
    await Promise.all(listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))))
  }
}

/** How long an RPC server may take to listen. */
const RPC_LISTEN_TIMEOUT_MS = 15_000

/** Starts `ggml-rpc-server` on 127.0.0.1:`port` and resolves once it accepts connections. */
async function startRpcServer(
  tools: LlamaTools,
  port: number,
  options: RpcMeasureOptions,
): Promise<RpcServer> {
  const args = ['-H', '127.0.0.1', '-p', String(port), '-t', String(options.threads), '-d', 'CPU']
  const child = spawn(tools.rpcServer, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    signal: options.signal,
    env: threadEnv(options.poll),
  })
  let output = ''
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-4000)
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  child.on('error', () => {}) // a spawn error or an abort shows up as the exit below
  let alive = true
  // If this process exits (process.exit, an uncaught error) while the server runs, kill the server.
  const onExit = (): void => {
    child.kill('SIGKILL')
  }
  process.once('exit', onExit)
  void exited.then(() => {
    alive = false
    process.off('exit', onExit)
  })
  const stop = async (): Promise<void> => {
    if (!alive) return
    child.kill('SIGTERM')
    const killed = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)])
    if (!killed) {
      child.kill('SIGKILL')
      await exited
    }
  }
  try {
    await waitListening(
      port,
      () => alive,
      () => output,
    )
  } catch (error) {
    await stop()
    throw error
  }
  return { endpoint: `127.0.0.1:${port}`, stop }
}

/** Resolves once 127.0.0.1:`port` accepts a TCP connection; fails if the server exits or takes too long. */
async function waitListening(port: number, alive: () => boolean, output: () => string): Promise<void> {
  const deadline = performance.now() + RPC_LISTEN_TIMEOUT_MS
  while (performance.now() < deadline) {
    if (!alive()) throw new Error(`ggml-rpc-server on port ${port} exited:\n${output().trim()}`)
    if (await accepts(port)) return
    await sleep(50)
  }
  throw new Error(`ggml-rpc-server did not listen on 127.0.0.1:${port} in ${RPC_LISTEN_TIMEOUT_MS} ms`)
}

/** Whether 127.0.0.1:`port` accepts a TCP connection (which is closed at once). */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/** llama-batched-bench's figures for `pl` sequences decoded together (one JSON line of its output). */
export interface BatchedFigures {
  /** Sequences in the batch. */
  pl: number
  /** Prompt tokens/s over all sequences. */
  speedPp: number
  /** Decoded tokens/s over all sequences: `pl · tg / time`. */
  speedTg: number
}

/**
 * llama.cpp's own batching: `llama-batched-bench` with a prompt of `pp` tokens and `tg` decoded
 * tokens for each of `parallel` sequence counts (e.g. [1, 4]), on the CPU at `threads` threads.
 */
export async function measureBatched(
  tools: LlamaTools,
  model: string,
  options: { threads: number; pp: number; tg: number; parallel: number[]; signal?: AbortSignal },
): Promise<BatchedFigures[]> {
  const maxPl = Math.max(...options.parallel)
  const args = [
    '-m',
    model,
    '-t',
    String(options.threads),
    '-tb',
    String(options.threads),
    '-ngl',
    '0',
    '-c',
    String(maxPl * (options.pp + options.tg) + 64),
    '-b',
    '512',
    '-ub',
    '512',
    '-npp',
    String(options.pp),
    '-ntg',
    String(options.tg),
    '-npl',
    options.parallel.join(','),
    '--output-format',
    'jsonl',
  ]
  const result = await run(tools.batchedBench, args, { signal: options.signal })
  if (result.code !== 0) {
    const tail = result.stderr.trim().split('\n').slice(-20).join('\n')
    throw new Error(`llama-batched-bench exited with ${result.code}:\n${tail}`)
  }
  const figures: BatchedFigures[] = []
  for (const line of `${result.stdout}\n${result.stderr}`.split('\n')) {
    if (!line.startsWith('{')) continue
    const row = JSON.parse(line) as { pl: number; speed_pp: number; speed_tg: number }
    figures.push({ pl: row.pl, speedPp: row.speed_pp, speedTg: row.speed_tg })
  }
  return figures
}
