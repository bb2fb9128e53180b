import { MeshError, type MeshErrorOptions } from '@meshnet/core'

/**
 * A grammar cannot be built: the spec is malformed or too large, or a JSON Schema uses a keyword
 * this package cannot enforce. The message names the schema, the JSON pointer and the keyword.
 */
export class GrammarSchemaError extends MeshError {
  override name = 'GrammarSchemaError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_GRAMMAR_SCHEMA', message, options)
  }
}

/** `accept` was given a token the grammar does not allow next (the sampler skipped the mask). */
export class TokenNotAllowedError extends MeshError {
  override name = 'TokenNotAllowedError' as const
  constructor(message: string, options?: MeshErrorOptions) {
    super('ERR_GRAMMAR_TOKEN', message, options)
  }
}
