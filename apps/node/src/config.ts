import { readFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { CorruptFileError, InvalidArgumentError, parseWith } from '@meshnet/core'
import { writeFileAtomic } from '@meshnet/identity'
import { parse, stringify } from 'yaml'
import { z } from 'zod'
import { agentSettingsSchema } from './agent/settings.ts'

export const networkIdSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/,
    'letters, digits, ".", "_" or "-", at most 64, starting with a letter or digit',
  )

export const nodeNameSchema = z
  .string()
  .min(1, 'must not be empty')
  .max(64, 'at most 64 characters')
  .regex(/^[^\p{Cc}]+$/u, 'no control characters')

/** `<data-dir>/config.yaml`: the node's identity settings plus any agent settings (see settings.ts). */
export const nodeConfigSchema = agentSettingsSchema.extend({
  networkId: networkIdSchema,
  name: nodeNameSchema,
})

export type NodeConfig = z.infer<typeof nodeConfigSchema>

export const DEFAULT_NETWORK_ID = 'meshnet'

export function defaultNodeConfig(): NodeConfig {
  const name = hostname()
    .replace(/\p{Cc}/gu, '')
    .slice(0, 64)
  return { networkId: DEFAULT_NETWORK_ID, name: name === '' ? 'meshnet-node' : name }
}

/** Reads config.yaml; undefined when there is none. A broken file is an error naming the field. */
export async function readNodeConfig(path: string): Promise<NodeConfig | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  let doc: unknown
  try {
    doc = parse(text)
  } catch (err) {
    throw new CorruptFileError(`${path} is not valid YAML: ${(err as Error).message}`, { cause: err })
  }
  return parseWith(
    nodeConfigSchema,
    doc,
    `${path}:`,
    (message, options) =>
      new CorruptFileError(message, {
        ...options,
        hint: 'fix the file by hand or run `mesh init` with the right flags',
      }),
  )
}

export async function writeNodeConfig(path: string, config: NodeConfig): Promise<void> {
  const checked = nodeConfigSchema.parse(config)
  await writeFileAtomic(path, `# Meshnet node settings (written by \`mesh init\`)\n${stringify(checked)}`)
}

/** Validates one CLI flag against a schema, with an error that names the flag. */
export function parseFlag<T>(flag: string, schema: z.ZodType<T>, value: unknown): T {
  const parsed = schema.safeParse(value)
  if (parsed.success) return parsed.data
  throw new InvalidArgumentError(
    `${flag} ${JSON.stringify(value)}: ${parsed.error.issues[0]?.message ?? 'invalid'}`,
  )
}
