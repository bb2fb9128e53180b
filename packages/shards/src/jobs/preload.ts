import type { Logger } from '@meshnet/core'
import type { ShardServer } from '../server.ts'
import type { ServedModel, ShardAssignment, ShardLoadState } from './types.ts'

/**
 * Makes a member's shard of the ring's plan ready ahead of the first job: fetches its chunks when
 * the model is held by parts (state `fetching`), then loads its weights (`loading`, with progress
 * from the shard server's segments) and says `ready` or `failed` (never throws).
 */
export async function loadShard(job: {
  served: ServedModel | undefined
  server: ShardServer | undefined
  shard: ShardAssignment
  logger: Logger
  /** Reports a state (a newer preload's caller ignores an older one's); returns it. */
  report: (state: ShardLoadState) => ShardLoadState
  /** The state reported last, by this preload or a newer one. */
  current: () => ShardLoadState | undefined
}): Promise<ShardLoadState> {
  const { served, server, shard, logger, report } = job
  const layers: [number, number] = [shard.layers[0], shard.layers[1]]
  const facts = served?.plan
  const estimate =
    facts === undefined
      ? 0
      : (layers[1] - layers[0]) * facts.bytesPerLayer +
        (shard.embed ? facts.embedBytes : 0) +
        (shard.head ? facts.headBytes : 0)
  if (served === undefined || server === undefined) {
    return report({
      layers,
      state: 'failed',
      bytes: 0,
      loadedBytes: 0,
      error: 'this agent serves no model',
    })
  }
  if (served.ensure !== undefined) {
    // A model held by parts: fetch this shard's missing chunks first (each verified).
    let last = 0
    try {
      await served.ensure(
        { layers, embed: shard.embed, head: shard.head },
        {
          onProgress: (done, total) => {
            if (performance.now() - last < 500 && done < total) return
            last = performance.now()
            report({ layers, state: 'fetching', bytes: total, loadedBytes: done })
          },
        },
      )
    } catch (err) {
      logger.warn({ layers, err: (err as Error).message }, "could not fetch this member's shard")
      return report({
        layers,
        state: 'failed',
        bytes: 0,
        loadedBytes: 0,
        error: (err as Error).message.slice(0, 512),
      })
    }
  }
  report({ layers, state: 'loading', bytes: estimate, loadedBytes: 0 })
  const progress = setInterval(() => {
    const loaded = server
      .stats()
      .segments.filter(
        (s) => s.sha256 === served.info.sha256 && s.layers[0] >= layers[0] && s.layers[1] <= layers[1],
      )
      .reduce((sum, s) => sum + s.loadedBytes, 0)
    if (job.current()?.state === 'loading')
      report({ layers, state: 'loading', bytes: estimate, loadedBytes: loaded })
  }, 1_000)
  progress.unref()
  logger.info(
    { layers, embed: shard.embed, head: shard.head },
    "loading this member's shard of the ring plan",
  )
  try {
    const done = await server.preload(served.info.sha256, {
      layers,
      embed: shard.embed,
      head: shard.head,
    })
    logger.info(
      { layers, bytes: done.weightBytes, ms: Math.round(done.loadMs), reused: done.reused },
      'shard ready',
    )
    return report({ layers, state: 'ready', bytes: done.weightBytes, loadedBytes: done.weightBytes })
  } catch (err) {
    logger.warn({ layers, err: (err as Error).message }, "could not load this member's shard")
    return report({
      layers,
      state: 'failed',
      bytes: estimate,
      loadedBytes: 0,
      error: (err as Error).message.slice(0, 512),
    })
  } finally {
    clearInterval(progress)
  }
}
