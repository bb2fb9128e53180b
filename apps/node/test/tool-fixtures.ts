import { Ajv } from 'ajv'

// The tools and schemas the API tests ask models to call and to write, in every client's shape.

/** A weather tool's arguments: a string with bounds, an enum, a bounded integer. */
export const WEATHER_INPUT = {
  type: 'object' as const,
  properties: {
    city: { type: 'string', minLength: 2, maxLength: 24 },
    unit: { enum: ['celsius', 'fahrenheit'] },
    days: { type: 'integer', minimum: 1, maximum: 14 },
  },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
}
/** A clock tool's arguments: none. */
export const CLOCK_INPUT = { type: 'object' as const, properties: {} }
/** Each tool's arguments schema by name. */
export const INPUTS: Record<string, object> = { get_weather: WEATHER_INPUT, get_time: CLOCK_INPUT }

/** The two tools in OpenAI's shape (which Ollama takes too). */
export const WEATHER = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'The weather in a city, for some days',
    parameters: WEATHER_INPUT,
  },
}
export const CLOCK = {
  type: 'function' as const,
  function: { name: 'get_time', description: 'The time now', parameters: CLOCK_INPUT },
}
export const OPENAI_TOOLS = [WEATHER, CLOCK]

/** The same tools in Anthropic's shape. */
export const ANTHROPIC_TOOLS = OPENAI_TOOLS.map(({ function: f }) => ({
  name: f.name,
  description: f.description,
  input_schema: f.parameters,
}))

/** A structured answer: bounded strings and numbers, an array of an enum, a boolean. */
export const PERSON = {
  type: 'object',
  properties: {
    name: { type: 'string', minLength: 3, maxLength: 20 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    languages: { type: 'array', items: { enum: ['en', 'de', 'fr'] }, minItems: 1, maxItems: 3 },
    admin: { type: 'boolean' },
  },
  required: ['name', 'age', 'languages', 'admin'],
  additionalProperties: false,
}

/** Whether `value` is valid for `schema` (ajv, the reference validator). */
export function validFor(schema: object, value: unknown): boolean {
  return ajv.validate(schema, value)
}

const ajv = new Ajv({ strict: false })
