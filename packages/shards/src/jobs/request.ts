import type { jobRequestSchema } from '@meshnet/protocols'
import type { z } from 'zod'

/** A job request as the job schema parsed it. */
export type ParsedJobRequest = z.output<typeof jobRequestSchema>

/** The sampling options of a request, without the unset ones. */
export function samplingOf(request: ParsedJobRequest) {
  return {
    ...(request.temperature === undefined ? {} : { temperature: request.temperature }),
    ...(request.topK === undefined ? {} : { topK: request.topK }),
    ...(request.topP === undefined ? {} : { topP: request.topP }),
    ...(request.seed === undefined ? {} : { seed: request.seed }),
  }
}
