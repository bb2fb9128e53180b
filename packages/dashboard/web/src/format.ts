/** A node id as the page shows it: the first 8 and last 4 characters (the whole id goes in `title`). */
export function shortNodeId(id: string): string {
  return id.length <= 14 ? id : `${id.slice(0, 8)}…${id.slice(-4)}`
}

/** A job id as the page shows it: its first 8 characters. */
export function shortJobId(id: string): string {
  return id.length <= 10 ? id : id.slice(0, 8)
}

/** Layers [first, end) as people count them: "layers 0–7". */
export function layerRange([first, end]: readonly [number, number]): string {
  return end - first === 1 ? `layer ${first}` : `layers ${first}–${end - 1}`
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const

/** Bytes in binary units: "512 MiB", "7.3 GiB". */
export function formatBytes(bytes: number | null): string {
  if (bytes === null) return '–'
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024
    unit++
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1
  return `${value.toFixed(digits)} ${UNITS[unit]}`
}

/** Milliseconds, or a dash when unknown. */
export function formatMs(ms: number | null): string {
  if (ms === null) return '–'
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`
}

/** Tokens per second with one decimal. */
export function formatRate(tokensPerSecond: number): string {
  return `${tokensPerSecond.toFixed(1)} tok/s`
}

/** A share 0..1 as a percentage for a progress bar, clamped. */
export function percent(done: number | null, total: number | null): number {
  if (done === null || total === null || total <= 0) return 0
  return Math.min(100, Math.max(0, (done / total) * 100))
}

const relative = new Intl.RelativeTimeFormat('en', { numeric: 'always' })

/** An ISO time relative to `now`: "in 29 days", "3 hours ago". */
export function relativeTime(iso: string, now = Date.now()): string {
  const seconds = (Date.parse(iso) - now) / 1000
  if (Number.isNaN(seconds)) return iso
  const abs = Math.abs(seconds)
  if (abs < 60) return relative.format(Math.round(seconds), 'second')
  if (abs < 3600) return relative.format(Math.round(seconds / 60), 'minute')
  if (abs < 86_400) return relative.format(Math.round(seconds / 3600), 'hour')
  return relative.format(Math.round(seconds / 86_400), 'day')
}
