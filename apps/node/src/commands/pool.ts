import { InvalidArgumentError, MeshError, printFields, printJson } from '@meshnet/core'
import { lanBeacons } from '@meshnet/discovery'
import { dataDirLayout, ensureDataDir, loadIdentity, loadNodeIdentity } from '@meshnet/identity'
import {
  type Certificate,
  createJoinRequest,
  createPool,
  decodeJoinResponse,
  formatRootPublicKey,
  type JoinQueueStats,
  JoinRefusedError,
  type JoinRequest,
  listMembers,
  listPools,
  loadCertificate,
  openPoolAdmin,
  parseJoinToken,
  parseRootPublicKey,
  poolIdFromRootKey,
  saveJoinedPool,
  verifyPoolCertificate,
} from '@meshnet/pool'
import type { Command } from 'commander'
import { beaconOptions } from '../agent/beacons-part.ts'
import { AgentNotRunningError, connectAgent } from '../agent/control-api.ts'
import { POOL_BEACONS } from '../agent/pool-part.ts'
import { defaultNodeConfig, readNodeConfig } from '../config.ts'
import type { CommandContext } from '../context.ts'

/** A join got no answer in time. */
export class JoinTimeoutError extends MeshError {
  override name = 'JoinTimeoutError' as const
  constructor(poolId: string, seconds: number, pending: boolean) {
    super(
      'ERR_POOL_JOIN_TIMEOUT',
      pending
        ? `the admin of pool ${poolId} has not approved this device within ${seconds} s`
        : `no admin of pool ${poolId} answered within ${seconds} s`,
      {
        hint: pending
          ? 'ask the admin to run `mesh pool-approve <node-id>` (see `mesh pool-requests`), then run pool-join again'
          : 'check that both devices are on the same LAN, that UDP multicast to 239.192.0.1:42424 is allowed by the firewall, and that the admin’s agent is running (`mesh start`)',
      },
    )
  }
}

type Ctx = (cmd: Command) => CommandContext

const seconds = (flag: string, value: string) => {
  const n = Number(value)
  if (!Number.isFinite(n) || n <= 0)
    throw new InvalidArgumentError(`${flag} ${JSON.stringify(value)}: not a positive number of seconds`)
  return n
}

/** Parses `30m`, `12h`, `7d` or a number of seconds. */
function duration(flag: string, value: string): number {
  const match = /^(\d+(?:\.\d+)?)([smhd]?)$/.exec(value.trim())
  if (match === null)
    throw new InvalidArgumentError(`${flag} ${JSON.stringify(value)}: use a duration like 30m, 12h or 7d`)
  const unit = { '': 1_000, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
    match[2] as '' | 's' | 'm' | 'h' | 'd'
  ]
  return Math.round(Number(match[1]) * unit)
}

/** Runs an admin action through the running agent, or directly on disk when none runs. */
async function viaAgentOrDisk<T>(
  ctx: CommandContext,
  agentCall: (agent: Awaited<ReturnType<typeof connectAgent>>) => Promise<T>,
  direct: () => Promise<T>,
): Promise<T> {
  try {
    return await agentCall(await connectAgent(dataDirLayout(ctx.dataDir)))
  } catch (err) {
    if (!(err instanceof AgentNotRunningError)) throw err
    return await direct()
  }
}

export function registerPool(program: Command, context: Ctx): void {
  program
    .command('pool-create')
    .description(
      'create a pool with this node as its admin; prints the pool id, root public key and a join token',
    )
    .requiredOption('--name <name>', 'pool name shown to members')
    .option('--token-ttl <duration>', 'how long the first join token is valid (e.g. 30m, 12h, 7d)', '24h')
    .option('--single-use', 'the first join token works for one device only')
    .action(async (flags: { name: string; tokenTtl: string; singleUse?: boolean }, cmd: Command) => {
      const ctx = context(cmd)
      const ttlMs = duration('--token-ttl', flags.tokenTtl)
      const layout = await ensureDataDir(ctx.dataDir)
      const { identity } = await loadNodeIdentity(layout)
      const { pool, certificate } = await createPool(layout.root, { name: flags.name }, identity)
      const admin = await openPoolAdmin(layout.root, pool.id, identity)
      const token = await admin.createJoinToken({ ttlMs, singleUse: flags.singleUse === true })
      const rootPublicKey = formatRootPublicKey(pool.rootPublicKey)
      if (ctx.json) {
        return printJson(ctx.io, {
          poolId: pool.id,
          name: pool.name,
          rootPublicKey,
          joinToken: token.token,
          joinTokenExpiresAt: new Date(token.expiresAt).toISOString(),
          adminCertificateExpiresAt: new Date(certificate.expiresAt).toISOString(),
        })
      }
      ctx.io.stdout.write(`Created pool "${pool.name}"; this node is its admin.\n\n`)
      printFields(ctx.io, [
        ['Pool ID', pool.id],
        ['Pool Root Public Key', rootPublicKey],
        ['Join token', token.token],
        [
          'Token expires',
          `${new Date(token.expiresAt).toISOString()}${token.singleUse ? ' (single use)' : ''}`,
        ],
      ])
      ctx.io.stdout.write(
        `\nOn the other device:\n  mesh pool-join --pool-id ${pool.id} --pool-root-pubkey ${rootPublicKey} --token ${token.token}\n` +
          'Keep this node’s agent running (mesh start) so that it can answer.\n',
      )
    })

  program
    .command('pool-invite')
    .description('make another join token for a pool this node administers')
    .requiredOption('--pool-id <id>', 'the pool')
    .option('--ttl <duration>', 'how long the token is valid (e.g. 30m, 12h, 7d)', '24h')
    .option('--single-use', 'the token works for one device only')
    .option('--role <role>', 'member or client', 'member')
    .action(
      async (flags: { poolId: string; ttl: string; singleUse?: boolean; role: string }, cmd: Command) => {
        const ctx = context(cmd)
        if (flags.role !== 'member' && flags.role !== 'client') {
          throw new InvalidArgumentError(`--role ${JSON.stringify(flags.role)}: use member or client`)
        }
        const options = {
          ttlMs: duration('--ttl', flags.ttl),
          singleUse: flags.singleUse === true,
          role: flags.role as 'member' | 'client',
        }
        const token = await viaAgentOrDisk(
          ctx,
          (agent) =>
            agent.request<{ token: string; expiresAt: number; singleUse: boolean }>(
              'POST',
              `/pools/${flags.poolId}/invite`,
              options,
            ),
          async () => {
            const { identity } = await loadNodeIdentity(dataDirLayout(ctx.dataDir))
            return (await openPoolAdmin(ctx.dataDir, flags.poolId, identity)).createJoinToken(options)
          },
        )
        if (ctx.json)
          return printJson(ctx.io, {
            joinToken: token.token,
            expiresAt: new Date(token.expiresAt).toISOString(),
            singleUse: token.singleUse,
          })
        printFields(ctx.io, [
          ['Join token', token.token],
          ['Expires', `${new Date(token.expiresAt).toISOString()}${token.singleUse ? ' (single use)' : ''}`],
        ])
      },
    )

  program
    .command('pool-join')
    .description('ask a pool’s admin for a certificate over LAN beacons and store it')
    .option('--pool-id <id>', 'the pool (may be left out with --token)')
    .option(
      '--pool-root-pubkey <key>',
      'the Pool Root Public Key the admin printed; checked against the pool id',
    )
    .option('--name <pool-name>', 'the pool name you expect (a warning if the pool says otherwise)')
    .option(
      '--token <token>',
      'a join token from the admin; without one, the admin must run mesh pool-approve',
    )
    .option('--timeout <seconds>', 'how long to wait for the admin', '60')
    .option('--local-only', 'send beacons on the loopback interface only (tests, demos)')
    .option('--beacon-interface <ip>', 'IPv4 address of the interface to send beacons from')
    .option('--beacon-port <port>', 'UDP port of LAN beacons (default 42424)')
    .action(async (flags: JoinFlags, cmd: Command) => {
      const ctx = context(cmd)
      const result = await poolJoin(ctx, flags)
      if (ctx.json) return printJson(ctx.io, result)
      ctx.io.stdout.write(`Joined pool "${result.name}".\n`)
      printFields(ctx.io, [
        ['Pool ID', result.poolId],
        ['Role', result.role],
        ['Certificate expires', result.expiresAt],
        ['Took', `${result.elapsedMs} ms`],
      ])
    })

  program
    .command('pool-requests')
    .description('list join requests waiting for approval')
    .requiredOption('--pool-id <id>', 'the pool')
    .action(async (flags: { poolId: string }, cmd: Command) => {
      const ctx = context(cmd)
      const { requests, queue } = await viaAgentOrDisk<{ requests: PendingView[]; queue: QueueView }>(
        ctx,
        (agent) =>
          agent.request<{ requests: PendingView[]; queue: QueueView }>(
            'GET',
            `/pools/${flags.poolId}/requests`,
          ),
        async () => {
          const { identity } = await loadNodeIdentity(dataDirLayout(ctx.dataDir))
          const admin = await openPoolAdmin(ctx.dataDir, flags.poolId, identity)
          return { requests: await admin.listPendingJoinRequests(), queue: await admin.joinQueueStats() }
        },
      )
      if (ctx.json) return printJson(ctx.io, { requests, queue })
      if (requests.length === 0) ctx.io.stdout.write('No join requests.\n')
      for (const r of requests) {
        ctx.io.stdout.write(
          `${r.status.toUpperCase().padEnd(8)} ${r.nodeId}  "${r.deviceName}"  ${new Date(r.receivedAt).toISOString()}${r.source ? `  from ${r.source}` : ''}\n`,
        )
      }
      ctx.io.stdout.write(
        `\n${queue.waiting} of ${queue.capacity} waiting (at most ${queue.perSource} from one address)\n`,
      )
      const turnedAway = Object.entries(queue.notQueued ?? {}).filter(([, n]) => n > 0)
      if (turnedAway.length > 0) {
        ctx.io.stdout.write(
          `Turned away since the agent started: ${turnedAway.map(([reason, n]) => `${n} ${reason}`).join(', ')}\n`,
        )
      }
      if (requests.length > 0)
        ctx.io.stdout.write('\nApprove with: mesh pool-approve <node-id> --pool-id <id>\n')
    })

  program
    .command('pool-approve')
    .description('approve a pending join request; the running agent sends the certificate over the LAN')
    .argument('<node-id>', 'the device to approve (from mesh pool-requests)')
    .requiredOption('--pool-id <id>', 'the pool')
    .option('--role <role>', 'admin, member or client', 'member')
    .action(async (nodeId: string, flags: { poolId: string; role: string }, cmd: Command) => {
      const ctx = context(cmd)
      const agent = await connectAgent(dataDirLayout(ctx.dataDir))
      const result = await agent.request<{ serial: string; expiresAt: number }>(
        'POST',
        `/pools/${flags.poolId}/approve`,
        {
          nodeId,
          role: flags.role,
        },
      )
      if (ctx.json)
        return printJson(ctx.io, { nodeId, ...result, expiresAt: new Date(result.expiresAt).toISOString() })
      ctx.io.stdout.write(
        `Approved ${nodeId}; certificate ${result.serial} sent, valid until ${new Date(result.expiresAt).toISOString()}\n`,
      )
    })

  program
    .command('pool-revoke')
    .description('revoke a member’s certificates; the signed revocation list travels with beacons and gossip')
    .argument('<node-id>', 'the member to revoke')
    .requiredOption('--pool-id <id>', 'the pool')
    .action(async (nodeId: string, flags: { poolId: string }, cmd: Command) => {
      const ctx = context(cmd)
      const result = await viaAgentOrDisk(
        ctx,
        (agent) =>
          agent.request<{ version: number; nodeIds: string[] }>('POST', `/pools/${flags.poolId}/revoke`, {
            nodeId,
          }),
        async () => {
          const { identity } = await loadNodeIdentity(dataDirLayout(ctx.dataDir))
          const { list } = await (await openPoolAdmin(ctx.dataDir, flags.poolId, identity)).revoke({
            nodeIds: [nodeId],
          })
          return { version: list.version, nodeIds: list.nodeIds }
        },
      )
      if (ctx.json) return printJson(ctx.io, { poolId: flags.poolId, ...result })
      ctx.io.stdout.write(
        `Revoked ${nodeId} in pool ${flags.poolId} (revocation list version ${result.version}).\n`,
      )
    })

  program
    .command('pool-list')
    .description('list the pools this node belongs to')
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const { pools, problems } = await listPools(ctx.dataDir)
      // Read only: no identity is created here, and without one certificates are not matched to it.
      const nodeId = await loadIdentity(dataDirLayout(ctx.dataDir).identityKey).then(
        ({ identity }) => identity.nodeId,
        () => undefined,
      )
      const rows = await Promise.all(
        pools.map(async (pool) => {
          const members = await listMembers(pool)
          let certificate: Certificate | undefined
          let certificateStatus = 'none'
          try {
            certificate = await loadCertificate(pool, nodeId === undefined ? {} : { nodeId })
            if (certificate !== undefined) {
              certificateStatus = 'valid'
              await verifyPoolCertificate(pool, certificate)
            }
          } catch (err) {
            const reason = (err as { reason?: string }).reason
            if (reason === undefined) throw err
            certificateStatus = reason
            if (reason === 'node-id-mismatch') problems.push(err as Error)
          }
          return {
            poolId: pool.id,
            name: pool.name,
            rootPublicKey: formatRootPublicKey(pool.rootPublicKey),
            role: certificate?.role ?? null,
            certificateExpiresAt: certificate ? new Date(certificate.expiresAt).toISOString() : null,
            certificateStatus,
            membersKnown: members.length,
          }
        }),
      )
      if (ctx.json) return printJson(ctx.io, { pools: rows, problems: problems.map((p) => p.message) })
      if (rows.length === 0)
        ctx.io.stdout.write('This node belongs to no pool (mesh pool-create or mesh pool-join).\n')
      for (const row of rows) {
        ctx.io.stdout.write(`${row.name}  ${row.poolId}\n`)
        printFields(ctx.io, [
          ['  Role', row.role ?? 'none'],
          [
            '  Certificate',
            `${row.certificateStatus}${row.certificateExpiresAt ? `, expires ${row.certificateExpiresAt}` : ''}`,
          ],
          ['  Members known', row.membersKnown],
        ])
      }
      for (const problem of problems) ctx.io.stderr.write(`warning: ${problem.message}\n`)
    })
}

interface PendingView {
  nodeId: string
  deviceName: string
  status: string
  receivedAt: number
  source?: string | undefined
}

/** Join queue stats; `notQueued` (requests turned away, by reason) only from a running agent. */
interface QueueView extends JoinQueueStats {
  notQueued?: Record<string, number>
}

interface JoinFlags {
  poolId?: string
  poolRootPubkey?: string
  name?: string
  token?: string
  timeout: string
  localOnly?: boolean
  beaconInterface?: string
  beaconPort?: string
}

/** How often a join request is sent again: a fresh one each time (the same bytes would be a replay). */
const RESEND_MS = 1_000

async function poolJoin(ctx: CommandContext, flags: JoinFlags) {
  const started = Date.now()
  const timeoutS = seconds('--timeout', flags.timeout)
  const poolId = flags.poolId ?? (flags.token ? parseJoinToken(flags.token).poolId : undefined)
  if (poolId === undefined) throw new InvalidArgumentError('pool-join needs --pool-id or --token')
  if (flags.token && parseJoinToken(flags.token).poolId !== poolId) {
    throw new InvalidArgumentError(
      `--token is for pool ${parseJoinToken(flags.token).poolId}, not --pool-id ${poolId}`,
    )
  }
  if (
    flags.poolRootPubkey !== undefined &&
    poolIdFromRootKey(parseRootPublicKey(flags.poolRootPubkey)) !== poolId
  ) {
    throw new InvalidArgumentError(`--pool-root-pubkey does not belong to pool ${poolId}`, {
      hint: 'copy both values from the admin’s `mesh pool-create` output',
    })
  }
  const layout = await ensureDataDir(ctx.dataDir)
  const { identity } = await loadNodeIdentity(layout)
  const config = (await readNodeConfig(layout.config)) ?? defaultNodeConfig()
  const port = flags.beaconPort === undefined ? undefined : Number(flags.beaconPort)
  const beacons = lanBeacons({
    identity,
    logger: ctx.logger,
    ...beaconOptions({
      ...config,
      localOnly: flags.localOnly ?? config.localOnly,
      beacon: {
        ...config.beacon,
        ...(flags.beaconInterface ? { interface: flags.beaconInterface } : {}),
        ...(port ? { port } : {}),
      },
    }),
  })
  const outstanding: JoinRequest[] = []
  let pending = false
  await beacons.start()
  try {
    const response = await new Promise<
      Extract<ReturnType<typeof decodeJoinResponse>, { outcome: 'accepted' }>
    >((resolve, reject) => {
      const send = () => {
        const { request, bytes } = createJoinRequest(identity, {
          poolId,
          token: flags.token,
          deviceName: config.name,
        })
        outstanding.push(request)
        if (outstanding.length > 64) outstanding.shift()
        beacons
          .send(POOL_BEACONS.joinRequest, bytes)
          .catch((err: Error) => ctx.logger.warn({ err: err.message }, 'join request not sent'))
      }
      const timer = setInterval(send, RESEND_MS)
      const deadline = setTimeout(
        () => finish(new JoinTimeoutError(poolId, timeoutS, pending)),
        timeoutS * 1000,
      )
      const off = beacons.onMessage((message) => {
        if (message.type !== POOL_BEACONS.joinResponse || !(message.body instanceof Uint8Array)) return
        for (const request of outstanding) {
          let answer: ReturnType<typeof decodeJoinResponse>
          try {
            answer = decodeJoinResponse(message.body, { request })
          } catch {
            continue // not an answer to this request (or not from this pool): ignore it
          }
          if (answer.outcome === 'accepted') return finish(undefined, answer)
          if (answer.outcome === 'refused') return finish(new JoinRefusedError(answer.reason, poolId))
          if (!pending) {
            pending = true
            ctx.logger.warn(
              `waiting for the pool admin to approve this device: mesh pool-approve ${identity.nodeId} --pool-id ${poolId}`,
            )
            if (!ctx.json)
              ctx.io.stdout.write(
                `Waiting for approval. On the admin: mesh pool-approve ${identity.nodeId} --pool-id ${poolId}\n`,
              )
          }
          return
        }
      })
      function finish(
        err?: Error,
        answer?: Extract<ReturnType<typeof decodeJoinResponse>, { outcome: 'accepted' }>,
      ) {
        clearInterval(timer)
        clearTimeout(deadline)
        off()
        if (err) reject(err)
        else resolve(answer!)
      }
      send()
    })
    const pool = await saveJoinedPool(layout.root, response)
    if (flags.name !== undefined && flags.name !== pool.name) {
      ctx.logger.warn(`the pool calls itself "${pool.name}", not "${flags.name}"`)
    }
    return {
      poolId: pool.id,
      name: pool.name,
      rootPublicKey: formatRootPublicKey(pool.rootPublicKey),
      nodeId: identity.nodeId,
      role: response.certificate.role,
      serial: response.certificate.serial,
      expiresAt: new Date(response.certificate.expiresAt).toISOString(),
      elapsedMs: Date.now() - started,
    }
  } finally {
    await beacons.stop()
  }
}
