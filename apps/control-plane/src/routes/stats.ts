import { ok, type Route } from '../http.ts'
import type { ControlPlaneContext } from '../state.ts'

export function statsRoutes(ctx: ControlPlaneContext): Route[] {
  return [
    {
      method: 'GET',
      path: '/health',
      public: true,
      handler() {
        return ok({ ok: true, version: ctx.version, uptimeMs: ctx.now() - ctx.startedAt })
      },
    },
    {
      method: 'GET',
      path: '/v1/stats',
      handler() {
        const jobs = ctx.db.countJobs()
        return ok({
          devices: ctx.db.countDevices(ctx.now() - ctx.onlineWindowMs),
          pools: ctx.db.listPools().length,
          jobs: jobs.byStatus,
          tokensGenerated: jobs.tokens,
          uptimeMs: ctx.now() - ctx.startedAt,
        })
      },
    },
  ]
}
