import { JobServiceImpl } from './job-service.ts'
import type { JobService, JobServiceComponents, JobServiceInit } from './types.ts'

/**
 * The job service, composed by the agent like a libp2p service: `jobService(init)(components)`.
 * Construction does no I/O; `start()` opens the tokenizer, the kernels and the shard server and
 * handles `/meshnet/job/1.0.0`; `stop()` aborts running jobs and leaves nothing behind.
 */
export function jobService(init: JobServiceInit): (components: JobServiceComponents) => JobService {
  return (components) => new JobServiceImpl(init, components)
}
