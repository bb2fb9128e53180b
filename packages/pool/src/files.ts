import { readFile } from 'node:fs/promises'
import { CorruptFileError, FileAccessError, parseWith } from '@meshnet/core'
import type { z } from 'zod'

export const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64')
export const unb64 = (text: string) => new Uint8Array(Buffer.from(text, 'base64'))

/** Reads a file, undefined when it does not exist. */
export async function readIfPresent(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new FileAccessError(`cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** Parses a JSON file of ours against a schema; CorruptFileError (file left as it is) when it does not fit. */
export function parseJsonFile<T>(path: string, text: string, schema: z.ZodType<T>): T {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new CorruptFileError(`${path} is corrupt: not valid JSON (${(err as Error).message})`, {
      cause: err,
      details: { path },
    })
  }
  return parseWith(
    schema,
    json,
    `${path} is corrupt:`,
    (message, options) =>
      new CorruptFileError(message, { ...options, details: { ...options.details, path } }),
  )
}

export function jsonText(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`
}

// Read-modify-write of one file is serialised within this process.
const fileQueues = new Map<string, Promise<unknown>>()

/** Runs `fn` after every earlier `withFileLock` call for the same path has finished. */
export async function withFileLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const previous = fileQueues.get(path) ?? Promise.resolve()
  const run = previous.then(fn, fn)
  const settled = run.then(
    () => undefined,
    () => undefined,
  )
  fileQueues.set(path, settled)
  try {
    return await run
  } finally {
    if (fileQueues.get(path) === settled) fileQueues.delete(path)
  }
}
