import { parseWith } from '@meshnet/core'
import { type Frame, sequenceFrame, textFrame } from './automaton.ts'
import { GrammarSchemaError } from './errors.ts'
import { ANY_OBJECT, JsonContext, jsonPartFrame, MAX_NESTING } from './json-context.ts'
import { compileSchema } from './schema-compile.ts'
import { type GrammarSpec, grammarSpecSchema } from './spec.ts'

/** A compiled grammar: give it to `createTokenConstraint` with a vocabulary. Immutable, reusable. */
export interface Grammar {
  readonly spec: GrammarSpec
  /** Bytes of the shortest text the grammar allows. */
  readonly minBytes: number
}

const roots = new WeakMap<Grammar, Frame>()

/**
 * Checks a GrammarSpec and every JSON Schema in it and compiles them to one byte automaton.
 * Throws GrammarSchemaError (naming the schema, the JSON pointer and the keyword) on a malformed
 * spec, an unsupported keyword, or a schema that no value within the nesting limit satisfies.
 */
export function compileGrammar(spec: GrammarSpec): Grammar {
  const parsed = parseWith(
    grammarSpecSchema,
    spec,
    'grammar',
    (message, options) => new GrammarSchemaError(message, options),
  )
  const ctx = new JsonContext()
  const parts = parsed.parts.map((part) => {
    if (part.type === 'literal') return textFrame([part.text], true)
    const label = `${part.name ?? 'response'} schema`
    const node = part.schema === undefined ? ANY_OBJECT : compileSchema(part.schema, label)
    if (ctx.minLength(node, MAX_NESTING) === Number.POSITIVE_INFINITY) {
      throw new GrammarSchemaError(
        `${label}: no JSON value satisfies it within ${MAX_NESTING} levels of nesting (a required property or minItems that recurses without end, or a false schema where a value is required)`,
      )
    }
    return jsonPartFrame(ctx, node)
  })
  const root = sequenceFrame(parts)
  const grammar: Grammar = { spec: parsed, minBytes: root.min }
  roots.set(grammar, root)
  return grammar
}

/** The root frame of a grammar made by `compileGrammar`. */
export function grammarRoot(grammar: Grammar): Frame {
  const root = roots.get(grammar)
  if (root === undefined) throw new TypeError('not a grammar made by compileGrammar')
  return root
}
