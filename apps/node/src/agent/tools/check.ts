/** A tool the model may call, in OpenAI's shape (which Hugging Face chat templates take too). */
export interface ToolDefinition {
  type: 'function'
  function: {
    name: string
    description?: string
    /** JSON Schema of the arguments object; absent: no arguments. */
    parameters?: { [key: string]: unknown }
    strict?: boolean | null
  }
}

/** OpenAI's `tool_choice`. */
export type ToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } }

/** A problem with a request's tools: the message for the client and the parameter it is about. */
export interface ToolsProblem {
  message: string
  param: string
}

/** What OpenAI accepts as a function name. */
export const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/**
 * What is wrong with a request's `tools` and `tool_choice` (undefined: nothing): a tool that is not a
 * function, a name OpenAI would refuse or given twice, `parameters` that do not describe an object,
 * a `tool_choice` of `required` or of a name without tools, or naming a tool not among them. An
 * empty `tools` list is no tools.
 */
export function checkTools(
  tools: readonly ToolDefinition[] | undefined,
  toolChoice: ToolChoice | undefined,
): ToolsProblem | undefined {
  const seen = new Set<string>()
  for (const [i, tool] of (tools ?? []).entries()) {
    if (tool.type !== 'function') {
      return {
        message: `tools[${i}].type is ${JSON.stringify(tool.type)}: only "function" tools are supported`,
        param: `tools[${i}].type`,
      }
    }
    const name = tool.function.name
    const param = `tools[${i}].function`
    if (!TOOL_NAME.test(name)) {
      return {
        message: `tools[${i}].function.name ${JSON.stringify(name)} is not a valid tool name: use 1 to 64 letters, digits, underscores and dashes`,
        param: `${param}.name`,
      }
    }
    if (seen.has(name)) {
      return {
        message: `tools[${i}].function.name "${name}" is given twice: tool names must be unique`,
        param: `${param}.name`,
      }
    }
    seen.add(name)
    const parameters = tool.function.parameters
    if (parameters !== undefined && (!isObject(parameters) || (parameters.type ?? 'object') !== 'object')) {
      return {
        message: `tools[${i}].function.parameters of "${name}" must be a JSON Schema of an object ({"type": "object", …})`,
        param: `${param}.parameters`,
      }
    }
  }
  if (toolChoice === undefined || toolChoice === 'none' || toolChoice === 'auto') return undefined
  if (seen.size === 0) {
    return {
      message: `tool_choice ${JSON.stringify(toolChoice)} needs tools: give tools, or leave tool_choice out`,
      param: 'tool_choice',
    }
  }
  if (toolChoice === 'required' || seen.has(toolChoice.function.name)) return undefined
  return {
    message: `tool_choice names "${toolChoice.function.name}", which is not among the tools (${[...seen].join(', ')})`,
    param: 'tool_choice',
  }
}
