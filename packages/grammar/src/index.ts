/**
 * @packageDocumentation
 * Constrained sampling for structured output and forced tool calls. `compileGrammar` turns a
 * GrammarSpec (literal texts and JSON values, each under an optional JSON Schema) into a byte-level
 * automaton over UTF-8; `createTokenConstraint` pairs it with a model's vocabulary into the
 * `TokenConstraint` the `@meshnet/engine` sampler consults: which token ids may come next, so that
 * the generated text always parses and validates, even when the token budget runs out.
 */
export type { GrammarConstraint, TokenConstraint, TokenConstraintOptions } from './constraint.ts'
export { createTokenConstraint, tokenConstraintOptionsSchema } from './constraint.ts'
export { MAX_WHITESPACE } from './container-frames.ts'
export { GrammarSchemaError, TokenNotAllowedError } from './errors.ts'
export type { Grammar } from './grammar.ts'
export { compileGrammar } from './grammar.ts'
export { MAX_NESTING } from './json-context.ts'
export { MAX_MIN_ITEMS, MAX_MIN_LENGTH, SUPPORTED_KEYWORDS } from './schema-compile.ts'
export type { GrammarPart, GrammarSpec, JsonSchema } from './spec.ts'
export {
  grammarSpecSchema,
  MAX_GRAMMAR_LITERAL,
  MAX_GRAMMAR_PARTS,
  MAX_GRAMMAR_SCHEMA_BYTES,
} from './spec.ts'
export type { ConstraintVocabulary, TokenPiece, VocabularySource } from './vocabulary.ts'
export { constraintVocabulary } from './vocabulary.ts'
