import { MeshError } from '@meshnet/core'

/** A job that cannot run here, with the reason (no model, no pool, no plan fits, rate limit). */
export class JobRefusedError extends MeshError {
  override name = 'JobRefusedError' as const
}
