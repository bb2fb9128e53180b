import { z } from 'zod'

/** Largest JSON Schema one grammar part may carry, as JSON text. */
export const MAX_GRAMMAR_SCHEMA_BYTES = 64 * 1024
/** Largest literal one grammar part may carry (characters). */
export const MAX_GRAMMAR_LITERAL = 4096
/** Most parts one grammar may have. */
export const MAX_GRAMMAR_PARTS = 16

/** A JSON Schema (an object; which keywords are supported is `compileGrammar`'s to say). */
export type JsonSchema = { [key: string]: unknown }

/**
 * One piece of the text a grammar allows: a fixed text (a tool call's `<tool_call>\n`), or one JSON
 * value. `schema` absent: any JSON object (OpenAI's `json_object`). `name` says whose schema it is in
 * error messages (`tool get_weather`); default `response`.
 */
export type GrammarPart =
  | { type: 'literal'; text: string }
  | { type: 'json'; schema?: JsonSchema; name?: string }

/**
 * What a generation may write: its parts one after the other, then an end-of-generation token.
 * Serializable, so a job request can carry it to the node that samples.
 */
export interface GrammarSpec {
  parts: GrammarPart[]
}

const schemaObject = z
  .record(z.string(), z.unknown())
  .refine((s) => Buffer.byteLength(JSON.stringify(s)) <= MAX_GRAMMAR_SCHEMA_BYTES, {
    message: `must be at most ${MAX_GRAMMAR_SCHEMA_BYTES} bytes of JSON`,
  })

/** The shape of a GrammarSpec as it arrives from the network (keywords are checked when compiled). */
export const grammarSpecSchema: z.ZodType<GrammarSpec> = z.strictObject({
  parts: z
    .array(
      z.discriminatedUnion('type', [
        z.strictObject({ type: z.literal('literal'), text: z.string().min(1).max(MAX_GRAMMAR_LITERAL) }),
        z.strictObject({
          type: z.literal('json'),
          schema: schemaObject.optional(),
          name: z.string().min(1).max(256).optional(),
        }),
      ]),
    )
    .min(1)
    .max(MAX_GRAMMAR_PARTS),
}) as z.ZodType<GrammarSpec>
