import type { JobRecord } from './types.ts'

/** Per-job figures and totals (`mesh inference-stats`, `GET /jobs`). */
export function jobStats(jobs: readonly JobRecord[]) {
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0)
  const done = jobs.filter((j) => j.status === 'completed')
  // Embedding jobs generate no tokens: the generation means leave them out.
  const generated = done.filter((j) => j.stats.kind !== 'embedding')
  const tokens = done.reduce((n, j) => n + num(j.stats.completionTokens), 0)
  const mean = (key: string) =>
    generated.length === 0 ? 0 : generated.reduce((n, j) => n + num(j.stats[key]), 0) / generated.length
  return {
    jobs: jobs.map((j) => ({
      id: j.id,
      poolId: j.poolId,
      mode: (j.stats.mode as string | undefined) ?? j.mode,
      status: j.status,
      createdAt: new Date(j.createdAt).toISOString(),
      error: j.error,
      tokens: num(j.stats.completionTokens),
      tokensPerSecond: num(j.stats.tokensPerSecond),
      timeToFirstTokenMs: num(j.stats.timeToFirstTokenMs),
      hopLatencyMs: num(j.stats.hopLatencyMs),
      bytesMoved: num(j.stats.bytesMoved),
      failovers: num(j.stats.failovers),
    })),
    totals: {
      jobs: jobs.length,
      completed: done.length,
      failed: jobs.filter((j) => j.status === 'failed').length,
      tokens,
      meanTokensPerSecond: mean('tokensPerSecond'),
      meanTimeToFirstTokenMs: mean('timeToFirstTokenMs'),
      meanHopLatencyMs: mean('hopLatencyMs'),
      bytesMoved: done.reduce((n, j) => n + num(j.stats.bytesMoved), 0),
      failovers: jobs.reduce((n, j) => n + num(j.stats.failovers), 0),
    },
  }
}
