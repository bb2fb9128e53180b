import { addressesSchema, capabilitiesSchema, deviceNameSchema, nodeIdSchema } from '@meshnet/protocols'
import { z } from 'zod'
import type { DeviceRecord } from '../db-schema.ts'
import { created, notFound, ok, parseInput, type Route } from '../http.ts'
import { refreshRings } from '../rings.ts'
import type { ControlPlaneContext } from '../state.ts'

const registerSchema = z.strictObject({
  nodeId: nodeIdSchema,
  name: deviceNameSchema,
  addresses: addressesSchema,
  capabilities: capabilitiesSchema,
})

const heartbeatSchema = z.strictObject({
  addresses: addressesSchema.optional(),
  capabilities: capabilitiesSchema.optional(),
})

const nodeParams = z.object({ nodeId: nodeIdSchema })

/** A device as the API shows it. */
export function deviceView(ctx: ControlPlaneContext, device: DeviceRecord) {
  return { ...device, online: device.lastSeen >= ctx.now() - ctx.onlineWindowMs }
}

/** The `nodeId` of a request body not yet checked, for `Route.actsFor`. */
export function bodyNodeId(body: unknown): unknown {
  return typeof body === 'object' && body !== null ? (body as { nodeId?: unknown }).nodeId : undefined
}

export function deviceNotFound(nodeId: string) {
  return notFound(
    'ERR_DEVICE_NOT_FOUND',
    `no device ${nodeId} is registered`,
    'register it first (POST /v1/devices)',
  )
}

export function deviceRoutes(ctx: ControlPlaneContext): Route[] {
  return [
    {
      method: 'POST',
      path: '/v1/devices',
      actsFor: ({ body }) => bodyNodeId(body),
      handler({ body }) {
        const input = parseInput(registerSchema, body)
        const result = ctx.db.putDevice({ ...input, lastSeen: ctx.now() })
        refreshRings(ctx)
        if (result.created) ctx.logger.info({ nodeId: input.nodeId, name: input.name }, 'device registered')
        const view = { ...deviceView(ctx, result.device), rings: ctx.db.ringsOf(input.nodeId) }
        return result.created ? created(view) : ok(view)
      },
    },
    {
      method: 'POST',
      path: '/v1/devices/:nodeId/heartbeat',
      actsFor: ({ params }) => params.nodeId,
      handler({ params, body }) {
        const { nodeId } = parseInput(nodeParams, params, 'path')
        const input = parseInput(heartbeatSchema, body ?? {})
        const device = ctx.db.getDevice(nodeId)
        if (device === undefined) throw deviceNotFound(nodeId)
        const updated = ctx.db.putDevice({
          ...device,
          addresses: input.addresses ?? device.addresses,
          capabilities: input.capabilities ?? device.capabilities,
          lastSeen: ctx.now(),
        })
        refreshRings(ctx)
        return ok({ ...deviceView(ctx, updated.device), rings: ctx.db.ringsOf(nodeId) })
      },
    },
    {
      method: 'GET',
      path: '/v1/devices',
      handler() {
        return ok({
          onlineWindowMs: ctx.onlineWindowMs,
          devices: ctx.db.listDevices().map((device) => deviceView(ctx, device)),
        })
      },
    },
    {
      method: 'GET',
      path: '/v1/devices/:nodeId',
      handler({ params }) {
        const { nodeId } = parseInput(nodeParams, params, 'path')
        const device = ctx.db.getDevice(nodeId)
        if (device === undefined) throw deviceNotFound(nodeId)
        return ok({ ...deviceView(ctx, device), rings: ctx.db.ringsOf(nodeId) })
      },
    },
    {
      method: 'DELETE',
      path: '/v1/devices/:nodeId',
      actsFor: ({ params }) => params.nodeId,
      handler({ params }) {
        const { nodeId } = parseInput(nodeParams, params, 'path')
        const running = ctx.db.runningJobsOf(nodeId)
        if (!ctx.db.deleteDevice(nodeId)) throw deviceNotFound(nodeId)
        for (const job of running) {
          ctx.db.requeueJob(job.id)
          ctx.events.emit(job.id, { type: 'requeued', job: ctx.db.getJob(job.id)! })
        }
        refreshRings(ctx)
        ctx.logger.info({ nodeId }, 'device removed')
        return ok({ deleted: true, nodeId, requeuedJobs: running.map((job) => job.id) })
      },
    },
  ]
}
