// The job types the agent's parts share; the wire protocol and the types live in @meshnet/inference.
export type {
  JobMode,
  JobOrigin,
  JobRequest,
  JobResult,
  JobRunner,
  JobStats,
  JobToken,
} from '@meshnet/inference'
export { JOB_MODES, jobRequestSchema, MAX_JOB_PROMPT_CHARS } from '@meshnet/inference'
