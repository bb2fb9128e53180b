import type { Logger } from '@meshnet/core'
import type { MeshNode } from '@meshnet/discovery'
import {
  decodeControl,
  encodeControl,
  type LinkHello,
  linkAcceptSchema,
  type OpenMessage,
  SHARD_FRAME,
  ShardSessionError,
  shardErrorSchema,
  shardFrameKind,
} from '@meshnet/protocols'
import { type Channel, libp2pChannel } from './channel.ts'
import { connectDirect } from './direct.ts'
import { remoteError } from './errors.ts'
import { dialMember, directHost, type MembershipCheck } from './peers.ts'
import { within } from './within.ts'

/** What dialing a link to another member of a session needs from the server. */
export interface LinkHost {
  readonly node: MeshNode
  readonly membership: MembershipCheck
  readonly linkTimeoutMs: number
  readonly logger: Logger
}

/** A link from one member of a session to another. */
export interface Link {
  /** Where data frames go: the direct channel, or the libp2p stream itself. */
  data: Channel
  /** The libp2p link stream (kept open beside a direct channel; closed with the session). */
  stream: Channel
}

/**
 * Dials the member of `rank` for a session (tensor all-reduce or the next pipeline stage): a
 * libp2p stream to a checked pool member, LINK_HELLO / LINK_ACCEPT, then a direct channel when both
 * sides can, else the stream itself carries the data frames.
 */
export async function dialLink(
  host: LinkHost,
  session: { open: OpenMessage; key: string; coordinator: string; dataCap: number },
  rank: number,
): Promise<Link> {
  const ref = session.open.members[rank]!
  let dialed: Awaited<ReturnType<typeof dialMember>>
  try {
    dialed = await dialMember(host.node, ref, { timeoutMs: host.linkTimeoutMs })
  } catch (err) {
    throw Object.assign(new ShardSessionError(`could not link to ${ref.nodeId}: ${(err as Error).message}`), {
      suspect: ref.nodeId,
    })
  }
  const stream = libp2pChannel(dialed.stream, ref.nodeId)
  host.logger.debug({ session: session.key, to: ref.nodeId }, 'link dialed')
  try {
    await host.membership.require(dialed.connection.remotePeer, session.open.poolId)
    host.logger.debug({ session: session.key, to: ref.nodeId }, 'link peer is a member')
    const ip = session.open.links === 'direct' ? directHost(dialed.connection) : undefined
    const hello: LinkHello = {
      v: 1,
      poolId: session.open.poolId,
      coordinator: session.coordinator,
      session: session.open.session,
      rank: session.open.rank,
      direct: ip !== undefined,
    }
    await stream.write(encodeControl(SHARD_FRAME.LINK_HELLO, hello))
    const reply = await within(stream.read(), host.linkTimeoutMs, `link accept from ${ref.nodeId}`)
    if (reply === undefined) throw new ShardSessionError(`${ref.nodeId} closed the link without an answer`)
    if (shardFrameKind(reply) === SHARD_FRAME.ERROR) {
      const e = decodeControl(reply, SHARD_FRAME.ERROR, shardErrorSchema, 'ERROR')
      throw remoteError(ref.nodeId, e.name, e.message)
    }
    const accept = decodeControl(reply, SHARD_FRAME.LINK_ACCEPT, linkAcceptSchema, 'LINK_ACCEPT')
    host.logger.debug(
      { session: session.key, to: ref.nodeId, direct: accept.direct !== undefined },
      'link accepted',
    )
    stream.setMaxFrameBytes(session.dataCap)
    let data: Channel = stream
    if (accept.direct && ip !== undefined) {
      const binding = {
        poolId: session.open.poolId,
        coordinator: session.coordinator,
        session: session.open.session,
        caller: { nodeId: host.node.nodeId, rank: session.open.rank },
        callee: { nodeId: ref.nodeId, rank },
      }
      data = await connectDirect(ip, binding, accept.direct, session.dataCap).catch((err: unknown) => {
        host.logger.debug(
          { peer: ref.nodeId, err: (err as Error).message },
          'direct channel failed; using libp2p',
        )
        return stream
      })
    }
    host.logger.debug(
      { session: session.key, to: ref.nodeId, transport: data.transport },
      'link transport chosen',
    )
    await stream.write(
      encodeControl(SHARD_FRAME.LINK_MODE, { transport: data === stream ? 'libp2p' : 'direct' }),
    )
    return { data, stream }
  } catch (err) {
    stream.abort(err as Error)
    if ((err as Error).name === 'PoolAccessError') throw err
    throw Object.assign(err as Error, { suspect: ref.nodeId })
  }
}
