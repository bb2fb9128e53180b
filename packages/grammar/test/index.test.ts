import { expect, it } from 'vitest'

it('exports exactly the public surface', async () => {
  expect(Object.keys(await import('../src/index.ts')).sort()).toMatchInlineSnapshot(`
    [
      "GrammarSchemaError",
      "MAX_GRAMMAR_LITERAL",
      "MAX_GRAMMAR_PARTS",
      "MAX_GRAMMAR_SCHEMA_BYTES",
      "MAX_MIN_ITEMS",
      "MAX_MIN_LENGTH",
      "MAX_NESTING",
      "MAX_WHITESPACE",
      "SUPPORTED_KEYWORDS",
      "TokenNotAllowedError",
      "compileGrammar",
      "constraintVocabulary",
      "createTokenConstraint",
      "grammarSpecSchema",
      "tokenConstraintOptionsSchema",
    ]
  `)
})
