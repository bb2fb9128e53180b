import { createHash, timingSafeEqual } from 'node:crypto'

const digest = (text: string) => createHash('sha256').update(text).digest()

/**
 * True when an `Authorization` header carries `Bearer <secret>`, compared in constant time (as
 * SHA-256 digests, so neither the length nor the bytes of the secret leak). The one bearer check of
 * the control API, the OpenAI-compatible API and the control plane.
 */
export function bearerMatches(header: string | undefined, secret: string): boolean {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '')
  return match !== null && timingSafeEqual(digest(match[1]!), digest(secret))
}
