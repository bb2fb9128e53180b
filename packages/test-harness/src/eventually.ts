/**
 * Polls `check` every `everyMs` until it returns a value other than undefined, null or false (a throw
 * counts as "not yet"), and fails after `ms` naming `what` and the last error.
 */
export async function eventually<T>(
  what: string,
  check: () => T | Promise<T>,
  ms = 30_000,
  everyMs = 100,
): Promise<Exclude<NonNullable<T>, false>> {
  const deadline = Date.now() + ms
  let last: unknown
  while (Date.now() < deadline) {
    try {
      const value = await check()
      if (value !== undefined && value !== null && value !== false)
        return value as Exclude<NonNullable<T>, false>
    } catch (err) {
      last = err
    }
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`)
}
