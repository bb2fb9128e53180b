import { gossipsub } from '@libp2p/gossipsub'

/**
 * How long a peer's proven membership is reused for scoring. Gossipsub scores every topic peer on
 * every publish once its score cache (one heartbeat) expires, and the check verifies the peer's
 * certificate signature: reuse makes that once per peer per second. Only "member" is reused, so
 * a peer that has just proved its certificate is scored as one at once; a revoked member keeps
 * receiving announcements up to this long (its own are refused at once).
 */
const MEMBERSHIP_MEMO_MS = 1_000

/** `isMember` with each "yes" reused for `ms` (at most 4096 remembered). */
function memoized(isMember: (peerId: string) => boolean, ms: number): (peerId: string) => boolean {
  const members = new Map<string, number>()
  return (peerId) => {
    const now = Date.now()
    if ((members.get(peerId) ?? 0) > now) return true
    if (!isMember(peerId)) return false
    if (members.size >= 4_096) members.clear()
    members.set(peerId, now + ms)
    return true
  }
}

/**
 * The gossipsub service Meshnet rings run on. Peers that have not proved membership of any of this
 * node's pools (`isMember`) score far below the publish and gossip thresholds: we publish nothing
 * to them and gossip nothing with them, so a connected outsider sees no announcement. They are not
 * graylisted: that would also drop the subscription messages a member sends before its
 * certificate exchange completes (they are never resent), and what an outsider publishes is
 * rejected by the ring's validator anyway (counted as `untrusted`). Messages are signed by their
 * origin (StrictSign) on top of each announcement's own signature.
 */
export function ringPubsub(isMember: (peerId: string) => boolean) {
  const member = memoized(isMember, MEMBERSHIP_MEMO_MS)
  return gossipsub({
    allowPublishToZeroTopicPeers: true,
    emitSelf: false,
    // A message arrives once from its origin and again from each mesh peer that forwards it: the
    // copies are recognised by their signature before it is verified again. Only a copy whose
    // signature verified is remembered, so a forged copy cannot shadow the real one.
    fastMsgIdFn: (message) =>
      message.signature === undefined ? '' : Buffer.from(message.signature).toString('base64'),
    // Every member connected to the origin gets a message from it (flood publish) and again from
    // each mesh peer that forwards it: a small mesh keeps those copies few (a ring has its own
    // anti-entropy, and a mesh of 4 still reaches 256 members in four hops).
    D: 4,
    Dlo: 3,
    Dhi: 6,
    Dout: 2,
    // Scores (and so who may receive) are cached for one heartbeat: keep it short so that a peer
    // that has just proved its certificate starts receiving announcements within half a second.
    heartbeatInterval: 500,
    // Members behind NAT are reached through a relay: gossip (small) runs over those circuits too.
    runOnLimitedConnection: true,
    scoreParams: {
      appSpecificScore: (peerId: string) => (member(peerId) ? 0 : -1_000),
      appSpecificWeight: 1,
      // Members are admitted by certificate, not by IP diversity: peers behind one NAT, or test
      // agents on 127.0.0.1, must not be penalised for sharing an address.
      IPColocationFactorWeight: 0,
    },
    scoreThresholds: {
      gossipThreshold: -10,
      publishThreshold: -50,
      graylistThreshold: -1e9,
      acceptPXThreshold: 10,
      opportunisticGraftThreshold: 20,
    },
  })
}
