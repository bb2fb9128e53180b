/**
 * @packageDocumentation
 * The Meshnet control plane: an HTTP companion to the peer-to-peer mesh. Devices register and send
 * heartbeats; pools register their root key so that nodes can join a ring over HTTP with a verified
 * pool certificate when gossip cannot converge; and a job queue hands prompts to nodes and streams
 * their tokens back (Server-Sent Events). State lives in `control-plane.db` (node:sqlite) in the
 * data dir; every request but `/health` needs the bearer token in `control-plane.token`.
 * `startControlPlane` runs one in-process; `mesh-control-plane` runs one from the command line.
 */
export type { ControlPlane, ControlPlaneOptions } from './control-plane.ts'
export { CONTROL_PLANE_DEFAULTS, PortsInUseError, startControlPlane } from './control-plane.ts'
export { MAX_BODY_BYTES } from './http.ts'
export type { ControlPlaneFiles } from './layout.ts'
export { controlPlaneFiles } from './layout.ts'
export { JOB_LIMITS } from './routes/jobs.ts'
