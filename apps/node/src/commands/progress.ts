import type { CliIo } from '@meshnet/core'
import { SingleBar } from 'cli-progress'

// Progress of long byte-counting work (hashing a model, reading a URL, fetching from the pool) on
// stderr, so stdout keeps only the result: a bar redrawn in place on a terminal (cli-progress), plain
// lines at every tenth otherwise (logs, CI). Nothing is shown for work done within `quietMs`.

/** What a command reports as it goes. */
export interface Progress {
  /**
   * Bytes done so far; `extra.sources` is shown after the rate (`3 sources`), `extra.rate` replaces
   * the measured rate (bytes a second, when the work is measured elsewhere), `extra.total` changes
   * the total (known late, or grown).
   */
  update(done: number, extra?: { sources?: string; rate?: number; total?: number }): void
  /** Stops drawing (the bar's last state stays on screen); call it once, also on failure. */
  stop(): void
}

export interface ProgressOptions {
  /** What is being done: `hashing model.gguf`. */
  label: string
  /** Where to draw (default: the process's stderr). A bar needs a TTY; anything else gets lines. */
  out?: CliIo['stderr']
  /** Shows nothing until this long after the start (default 1000 ms): quick work stays quiet. */
  quietMs?: number
  /** Shows nothing at all (`--json`, or scripts). */
  silent?: boolean
}

/** The rate is measured over the last few seconds. */
const RATE_WINDOW_MS = 5_000

/** `12.3 MiB`, `1.50 GiB`, `512 B`. */
export function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GiB`
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${n} B`
}

/** `1h02m`, `3m05s`, `42s`, `0.4s`; `?` when unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?'
  if (seconds < 10) return `${seconds.toFixed(1)}s`
  const s = Math.round(seconds)
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${s}s`
}

/** Starts reporting progress of `totalBytes` of work. */
export function startProgress(totalBytes: number, options: ProgressOptions): Progress {
  const out = options.out ?? process.stderr
  const quietMs = options.quietMs ?? 1000
  const started = performance.now()
  const samples: Array<[number, number]> = [[started, 0]]
  let total = totalBytes
  let bar: SingleBar | undefined
  let lastTenth = -1
  let stopped = false

  const tty = (out as Partial<NodeJS.WriteStream>).isTTY === true

  const measure = (done: number, given: number | undefined) => {
    const now = performance.now()
    samples.push([now, done])
    while (samples.length > 2 && samples[0]![0] < now - RATE_WINDOW_MS) samples.shift()
    const [t0, d0] = samples[0]!
    const rate = given ?? (now > t0 ? ((done - d0) * 1000) / (now - t0) : 0)
    const eta = rate > 0 ? (total - done) / rate : Number.NaN
    return { rate, eta, elapsed: now - started }
  }

  return {
    update(done, extra = {}) {
      if (stopped || options.silent === true) return
      if (extra.total !== undefined && extra.total !== total) {
        total = extra.total
        bar?.setTotal(total)
      }
      const { rate, eta, elapsed } = measure(done, extra.rate)
      if (bar === undefined && lastTenth < 0 && elapsed < quietMs) return
      const percent = total > 0 ? Math.min(100, Math.floor((100 * done) / total)) : 0
      const sources = extra.sources === undefined ? '' : `, ${extra.sources}`
      if (tty) {
        if (bar === undefined) {
          bar = new SingleBar({
            stream: out as NodeJS.WriteStream,
            format: `${options.label} [{bar}] {percentage}% {done} of {size}, {rate}, ETA {remaining}{sources}`,
            barsize: 30,
            // A hidden cursor would stay hidden after a second Ctrl-C (which kills the process).
            hideCursor: false,
            gracefulExit: false,
            linewrap: false,
          })
        }
        // Our own tokens: cli-progress's {eta} averages its last few updates, its {value} is a bare number.
        const payload = {
          done: formatBytes(done),
          size: formatBytes(total),
          rate: `${formatBytes(rate)}/s`,
          remaining: formatDuration(eta),
          sources,
        }
        if (bar.isActive) bar.update(done, payload)
        else bar.start(total, done, payload)
        return
      }
      const tenth = Math.floor(percent / 10)
      if (tenth <= lastTenth) return
      lastTenth = tenth
      out.write(
        `${options.label}: ${percent}% (${formatBytes(done)} of ${formatBytes(total)}, ${formatBytes(rate)}/s, ETA ${formatDuration(eta)}${sources})\n`,
      )
    },
    stop() {
      if (stopped) return
      stopped = true
      bar?.stop()
    },
  }
}

/** What a fetch of model chunks reports (the agent's pulls and its shard fetches). */
export interface FetchState {
  doneBytes: number
  totalBytes: number
  /** Bytes a second, as the agent measured it. */
  rate: number
  /** Bytes per source. */
  sources: Record<string, number>
}

/** Progress of a fetch: `fetching <label> [...] 61% …, 3 sources`. */
export function updateFetchProgress(
  progress: Progress | undefined,
  label: string,
  state: FetchState,
  options: Omit<ProgressOptions, 'label'>,
): Progress {
  const shown = progress ?? startProgress(state.totalBytes, { ...options, label: `fetching ${label}` })
  const n = Object.keys(state.sources).length
  shown.update(state.doneBytes, {
    total: state.totalBytes,
    rate: state.rate,
    sources: `${n} source${n === 1 ? '' : 's'}`,
  })
  return shown
}
