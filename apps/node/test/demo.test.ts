import { runMesh } from '@meshnet/test-harness'
import { describe, expect, it } from 'vitest'

describe('mesh demo', () => {
  it('runs three agents, a pipeline, tensor parallel and a failover, each giving llama.cpp’s tokens', async () => {
    const result = await runMesh(['demo', '--json', '--max-tokens', '16'], {}, 180_000)
    expect(result.code, result.stderr).toBe(0)
    const demo = JSON.parse(result.stdout) as {
      ok: boolean
      reference: number[]
      timeline: Array<{ atMs: number; event: string }>
      runs: Array<{
        mode: string
        tokens: number
        failovers: number
        sameAsLlamaCpp: boolean
        bytesMoved: number
      }>
    }
    expect(demo.reference).toHaveLength(16)
    expect(demo.runs.map((r) => r.mode)).toEqual(['pipeline', 'tensor', 'pipeline with failover'])
    for (const run of demo.runs) {
      expect(run).toMatchObject({ tokens: 16, sameAsLlamaCpp: true })
      expect(run.bytesMoved).toBeGreaterThan(0)
    }
    expect(demo.runs[2]!.failovers).toBeGreaterThanOrEqual(1)
    expect(demo.ok).toBe(true)
    const events = demo.timeline.map((t) => t.event)
    expect(events.some((e) => e.startsWith('ring converged: epoch'))).toBe(true)
    // The members load their shards when the ring converges, before the first job.
    const ready = events.findIndex((e) =>
      /^ring ready: every member loaded its shard \([\d.]+ MiB in all\)$/.test(e),
    )
    expect(ready).toBeGreaterThan(events.findIndex((e) => e.startsWith('ring converged')))
    expect(ready).toBeLessThan(events.findIndex((e) => e.startsWith('job: pipeline')))
    expect(demo.timeline.map((t) => t.atMs)).toEqual(
      [...demo.timeline.map((t) => t.atMs)].sort((a, b) => a - b),
    )
  }, 200_000)

  it('names a missing --model file', async () => {
    const result = await runMesh(['demo', '--model', '/nonexistent/model.gguf'])
    expect(result.code).not.toBe(0)
    expect(result.stderr).toMatch(/--model \/nonexistent\/model\.gguf: no such file/)
  })
})
