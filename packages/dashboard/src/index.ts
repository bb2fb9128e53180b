/**
 * @packageDocumentation
 * The dashboard and chat page every Meshnet agent serves. The page is built with Vite into static
 * files that ship in this package (no CDN at run time); `dashboardApp` gives the Hono routes that
 * serve it and its data (a state snapshot and a live events stream) behind a bearer token. The
 * JSON the page reads is described by the `Dashboard*` types.
 */
export type {
  DashboardJob,
  DashboardJobEvent,
  DashboardMember,
  DashboardNetwork,
  DashboardPool,
  DashboardRing,
  DashboardState,
  LinkType,
  ShardLoad,
} from './contract.ts'
export type { StoredJob } from './jobs.ts'
export { DASHBOARD_JOBS, JobTracker } from './jobs.ts'
export type { DashboardApp, DashboardInit } from './server.ts'
export { dashboardApp, dashboardAssets } from './server.ts'
