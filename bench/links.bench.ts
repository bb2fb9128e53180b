// Sharded inference over shaped links: what splitting a model costs over a home LAN, Wi-Fi and a
// WAN path, against one member on this machine, measured in the same run. For each link:
//
//   - a pipeline over 2 and over 3 members, and tensor parallel over 2 members: decode tokens/s,
//     and the ratio to one member;
//   - per-hop latency, all-reduce time per exchange (tensor parallel: 2 per layer per token),
//     compute time and bytes per token;
//   - a plain TCP round trip of one activation row (embd × 4 bytes) over the shaped link;
//
// then, per link, the fastest way to run the model and whether `mesh --mode auto`'s choice (a
// model too big for one member is split by layers, never tensor parallel: chooseShardedMode in
// packages/shards/src/plan.ts) agrees with the figures.
//
// The links (round-trip times, as `ping` shows them):
//   lan    home LAN: 1 ms, 1 Gbit/s
//   wifi   Wi-Fi: 5 ms ± 2 ms, 300 Mbit/s (the rate keeps packets in order, as Wi-Fi does)
//   wan    WAN path between two homes: 40 ms, 50 Mbit/s
//
// How: the ring (bench/sharded/run.ts: members in their own processes, the coordinator in the
// bench process, everything on 127.0.0.1) runs inside a network namespace this bench creates per
// link, whose only interface is its loopback: the bench runs itself again under
// `ip netns exec` with LINKS_BENCH_PROFILE naming the link. Nothing can leave by a real interface.
// The loopback carries a `tc netem` qdisc: `delay <rtt/2> [<jitter/2>] rate <rate>`. Netem on
// loopback holds every packet back once, and a round trip crosses it twice, so the one-way delay
// is half the round trip above. Kernels without sch_netem (some VMs and containers) get the same
// rule in user space instead: bench/links/shaper.ts, loaded into every process of the run, holds
// back each TCP write (the table says which shaper ran).
//
// The reference is one member holding the whole model on the plain loopback, outside any
// namespace, measured in this run before and after the links (the better of the two). That is the
// choice a user has: run the model on the one machine (the coordinator next to it, no link
// crossed), or split it over the link. A single member across the link would not be it: nobody
// sends every token over a WAN to a machine that could run it alone next to them.
//
// Every hop crosses the link here, the coordinator's too: in a real ring the coordinator is the
// agent that took the request, often a member itself, whose hop to its own shard costs nothing.
// So a pipeline of n members here pays n + 1 link crossings per token where such a ring pays n:
// the figures are a little pessimistic for pipelines (by one hop ms per token), not for tensor
// parallel, whose cost is its 2 × layers all-reduce exchanges.
//
//   node --conditions=meshnet-source bench/links.bench.ts        (root, Linux, iproute2)
//   SHARDED_BENCH_MODEL=quick   a 30M-parameter model instead of ~507M (a quick run)
//   SHARDED_BENCH_TOKENS=16     tokens generated per run;  SHARDED_BENCH_REPEAT=3  runs per figure
//   LINKS_BENCH_PROFILES=lan,wifi,wan   the links to measure
//   LINKS_BENCH_SHAPER=netem|node       force a shaper (default: netem when the kernel has it)
//   MESHNET_BENCH_CACHE=dir     where the generated model is kept between runs (default: tmpdir)
import { spawn, spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { ShardedGenerationStats } from '@meshnet/shards'
import { loopbackRoundTrip, table } from './lib.ts'
import { type BenchModel, benchModel, describeModel, type Measured, startShardedRing } from './sharded/run.ts'

interface Profile {
  name: string
  label: string
  /** Round trip, ms. */
  rttMs: number
  /** Round-trip jitter, ± ms (uniform). */
  jitterMs: number
  mbit: number
}

const PROFILES: readonly Profile[] = [
  { name: 'lan', label: 'home LAN', rttMs: 1, jitterMs: 0, mbit: 1000 },
  { name: 'wifi', label: 'Wi-Fi', rttMs: 5, jitterMs: 2, mbit: 300 },
  { name: 'wan', label: 'WAN', rttMs: 40, jitterMs: 0, mbit: 50 },
]
const CONFIGS = {
  pipe2: { label: 'pipeline, 2 members', members: 2, mode: 'pipeline' },
  pipe3: { label: 'pipeline, 3 members', members: 3, mode: 'pipeline' },
  tensor2: { label: 'tensor, 2 members', members: 2, mode: 'tensor' },
} as const
type ConfigName = keyof typeof CONFIGS

const TOKENS = Number(process.env.SHARDED_BENCH_TOKENS ?? 16)
const REPEAT = Number(process.env.SHARDED_BENCH_REPEAT ?? 3)
const PROMPT_TOKENS = 32
/** Round trips timed per link (a WAN round trip is 40 ms). */
const ROUND_TRIPS = 200
/** A run of all configurations on one link; beyond this the link's run is stopped. */
const PROFILE_TIMEOUT_MS = 60 * 60_000

/** What the run inside a namespace hands back. */
interface Figure {
  best: number
  median: number
  tokens: number[]
  stats: ShardedGenerationStats
}
interface ProfileResult {
  figures: Record<ConfigName, Figure>
  roundTripMs: number
}

const figureOf = (m: Measured): Figure => ({
  best: m.best,
  median: m.median,
  tokens: m.result.tokens,
  stats: m.result.stats,
})
const ringOf = (model: BenchModel, members: number) =>
  startShardedRing({ model, members, promptTokens: PROMPT_TOKENS, tokens: TOKENS, repeat: REPEAT })

/** Inside a namespace whose loopback is shaped: three members, the split configurations. */
async function shapedRun(): Promise<void> {
  const model = await benchModel()
  const ring = await ringOf(model, 3)
  try {
    const plan = (c: (typeof CONFIGS)[ConfigName]) => ({
      plan: c.mode === 'pipeline' ? ring.pipeline(c.members) : ring.tensor(c.members),
    })
    const { pipe2, pipe3, tensor2 } = await ring.measureAll({
      pipe2: plan(CONFIGS.pipe2),
      pipe3: plan(CONFIGS.pipe3),
      tensor2: plan(CONFIGS.tensor2),
    })
    const result: ProfileResult = {
      figures: { pipe2: figureOf(pipe2), pipe3: figureOf(pipe3), tensor2: figureOf(tensor2) },
      roundTripMs: await loopbackRoundTrip(model.facts.embd * 4, ROUND_TRIPS),
    }
    await writeFile(process.env.LINKS_BENCH_OUT!, JSON.stringify(result))
  } finally {
    await ring.close()
  }
}

async function main(): Promise<void> {
  const missing = whyNotShaped()
  if (missing !== undefined) {
    console.log(`links: skipped, ${missing}`)
    return
  }
  const wanted = (process.env.LINKS_BENCH_PROFILES ?? PROFILES.map((p) => p.name).join(',')).split(',')
  const profiles = PROFILES.filter((p) => wanted.includes(p.name))
  if (profiles.length === 0)
    throw new Error(`LINKS_BENCH_PROFILES names none of ${PROFILES.map((p) => p.name)}`)

  // A namespace left behind by an interrupted run would outlive it.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      for (const ns of namespaces) spawnSync('ip', ['netns', 'del', ns])
      process.exit(130)
    })
  }
  const model = await benchModel()
  const shaper = chooseShaper()
  console.log(
    `model: ${describeModel(model)}; prompt ${PROMPT_TOKENS}, ${TOKENS} tokens per run, ${REPEAT} runs per figure`,
  )
  console.log(
    shaper === 'netem'
      ? 'links shaped by tc netem on the loopback of a network namespace per link'
      : `links shaped in user space (bench/links/shaper.ts): ${process.env.LINKS_BENCH_SHAPER === 'node' ? 'LINKS_BENCH_SHAPER=node' : 'this kernel has no tc netem (sch_netem)'}`,
  )
  const loadBefore = loadavg()[0]!

  const reference = async () => {
    const ring = await ringOf(model, 1)
    try {
      const { one } = await ring.measureAll({ one: { plan: ring.single(0) } })
      return {
        figure: figureOf(one),
        roundTripMs: await loopbackRoundTrip(model.facts.embd * 4, ROUND_TRIPS),
      }
    } finally {
      await ring.close()
    }
  }
  const before = await reference()
  const results = new Map<Profile, ProfileResult>()
  for (const profile of profiles) results.set(profile, await runShaped(profile, shaper))
  const after = await reference()
  const one = after.figure.best > before.figure.best ? after.figure : before.figure
  const base = one.best

  const dash = (v: number | undefined, digits = 2) => (v === undefined ? '-' : v.toFixed(digits))
  const row = (link: string, config: string, f: Figure, same: string) => ({
    link,
    config,
    'tok/s': f.best,
    'vs 1 member': `${(f.best / base).toFixed(2)}×`,
    'median tok/s': f.median,
    'hop ms': dash(f.stats.hopLatencyMs),
    'all-reduce ms': dash(f.stats.allReduceMs),
    'compute ms/tok': dash(f.stats.computeMsPerToken),
    'KiB/token': dash((f.stats.bytes.perToken ?? 0) / 1024, 1),
    'same tokens': same,
  })
  const rows = [row('none (loopback)', '1 member (reference)', one, 'ref')]
  for (const [profile, result] of results) {
    for (const [name, c] of Object.entries(CONFIGS) as Array<[ConfigName, (typeof CONFIGS)[ConfigName]]>) {
      const f = result.figures[name]
      rows.push(row(profile.label, c.label, f, f.tokens.join() === one.tokens.join() ? 'yes' : 'no'))
    }
  }
  console.log()
  table(rows)
  console.log(
    `tok/s: decode speed of the fastest of ${REPEAT} runs of ${TOKENS} tokens (after the first token); median tok/s: from the median gap between tokens over all runs. The reference: one member on the plain loopback, the better of a run before the links (${before.figure.best.toFixed(2)} tok/s) and one after (${after.figure.best.toFixed(2)}). Hop ms: mean one-way time of a step's network hop (pipeline: members + 1 hops per token; tensor: 2); all-reduce ms: mean per exchange, ${2 * model.facts.layers} exchanges per token.`,
  )

  console.log()
  table([
    {
      link: 'none (loopback)',
      'asked: RTT ms': '-',
      jitter: '-',
      rate: '-',
      [`TCP round trip of ${model.facts.embd * 4} B, ms`]: before.roundTripMs.toFixed(3),
    },
    ...[...results].map(([p, r]) => ({
      link: p.label,
      'asked: RTT ms': p.rttMs,
      jitter: p.jitterMs > 0 ? `±${p.jitterMs} ms` : '-',
      rate: p.mbit >= 1000 ? `${p.mbit / 1000} Gbit/s` : `${p.mbit} Mbit/s`,
      [`TCP round trip of ${model.facts.embd * 4} B, ms`]: r.roundTripMs.toFixed(3),
    })),
  ])
  console.log(
    shaper === 'netem'
      ? `netem on each namespace's loopback: delay RTT/2, jitter ±jitter/2, rate as above (one qdisc, both directions share it). Round trip: median of ${ROUND_TRIPS}.`
      : `user-space shaper: each process holds its writes back RTT/2 ± jitter/2, at the rate above (one queue per process). Round trip: median of ${ROUND_TRIPS}.`,
  )
  console.log(
    `load average of the machine: ${loadBefore.toFixed(1)} before, ${loadavg()[0]!.toFixed(1)} after (${availableParallelism()} cores)`,
  )

  // What to split over which link.
  console.log()
  table(
    [...results].map(([p, r]) => {
      const splits = (Object.entries(r.figures) as Array<[ConfigName, Figure]>).sort(
        (x, y) => y[1].best - x[1].best,
      )
      const [bestName, best] = splits[0]!
      const { pipe2, tensor2 } = r.figures
      return {
        link: p.label,
        fastest: best.best > base ? CONFIGS[bestName].label : '1 member',
        'best split': CONFIGS[bestName].label,
        'its tok/s vs 1 member': `${(best.best / base).toFixed(2)}×`,
        'tensor ÷ pipeline, 2 members': `${(tensor2.best / pipe2.best).toFixed(2)}×`,
        'mesh auto: pipeline, not tensor': tensor2.best > pipe2.best ? 'NOT supported' : 'supported',
      }
    }),
  )
  console.log(
    '`mesh --mode auto` runs a model on one member when one can hold it, and splits it by layers (pipeline) when none can; it never picks tensor parallel (chooseShardedMode, packages/shards/src/plan.ts). "supported": a pipeline over 2 members was at least as fast as tensor parallel over 2 on that link; "NOT supported": tensor parallel was faster there.',
  )
}

/** Why this machine cannot shape a link in a namespace of its own, or undefined when it can. */
function whyNotShaped(): string | undefined {
  if (process.platform !== 'linux') return 'network namespaces are Linux only'
  if (process.getuid?.() !== 0) return 'needs root to create a network namespace (run it as root)'
  const ip = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
  if (ip.error !== undefined || ip.status !== 0) return '`ip netns` (iproute2) is not available'
  return undefined
}

/** `netem` when the kernel has sch_netem (tried in a namespace of its own), else the user-space shaper. */
function chooseShaper(): 'netem' | 'node' {
  const forced = process.env.LINKS_BENCH_SHAPER
  if (forced === 'node') return 'node'
  const ns = `meshnet-links-${process.pid}-probe`
  createNamespace(ns)
  try {
    const tc = spawnSync('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', '1ms'], {
      encoding: 'utf8',
    })
    if (tc.error === undefined && tc.status === 0) return 'netem'
    if (forced === 'netem') throw new Error(`tc netem is not available: ${tc.stderr.trim()}`)
    return 'node'
  } finally {
    deleteNamespace(ns)
  }
}

const namespaces = new Set<string>()
function createNamespace(ns: string): void {
  run('ip', ['netns', 'add', ns])
  namespaces.add(ns)
  run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
}
function deleteNamespace(ns: string): void {
  spawnSync('ip', ['netns', 'del', ns])
  namespaces.delete(ns)
}

function run(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: 'utf8' })
  if (result.error !== undefined) throw result.error
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr.trim()}`)
}

/** This bench again, in a fresh namespace whose loopback is `profile`'s link. */
async function runShaped(profile: Profile, shaper: 'netem' | 'node'): Promise<ProfileResult> {
  const ns = `meshnet-links-${process.pid}-${profile.name}`
  const dir = await mkdtemp(join(tmpdir(), 'meshnet-bench-links-'))
  const oneWay = profile.rttMs / 2
  createNamespace(ns)
  try {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      LINKS_BENCH_PROFILE: profile.name,
      LINKS_BENCH_OUT: join(dir, 'result.json'),
    }
    if (shaper === 'netem') {
      const jitter = profile.jitterMs > 0 ? [`${profile.jitterMs / 2}ms`] : []
      run('tc', [
        ...['-n', ns, 'qdisc', 'add', 'dev', 'lo', 'root', 'netem'],
        ...['delay', `${oneWay}ms`, ...jitter, 'rate', `${profile.mbit}mbit`],
      ])
    } else {
      env.LINKS_BENCH_SHAPE = JSON.stringify({
        delayMs: oneWay,
        jitterMs: profile.jitterMs / 2,
        mbit: profile.mbit,
      })
      const preload = `--import=${pathToFileURL(join(import.meta.dirname, 'links', 'shaper.ts')).href}`
      env.NODE_OPTIONS = [process.env.NODE_OPTIONS, preload].filter(Boolean).join(' ')
    }
    console.log(`${profile.label}: running in network namespace ${ns}`)
    const child = spawn(
      'ip',
      ['netns', 'exec', ns, process.execPath, '--conditions=meshnet-source', import.meta.filename],
      { env, stdio: 'inherit', timeout: PROFILE_TIMEOUT_MS },
    )
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject)
      child.once('exit', (status) => resolve(status))
    })
    if (code !== 0) throw new Error(`the ${profile.label} run exited with ${code}`)
    return JSON.parse(await readFile(join(dir, 'result.json'), 'utf8')) as ProfileResult
  } finally {
    deleteNamespace(ns)
    await rm(dir, { recursive: true, force: true })
  }
}

if (process.env.LINKS_BENCH_PROFILE !== undefined) await shapedRun()
else await main()
