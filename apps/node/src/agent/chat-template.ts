import { Template } from '@huggingface/jinja'
import { MeshError } from '@meshnet/core'
import type { ToolDefinition } from './tools/check.ts'
import { type ToolFamily, toolFamily } from './tools/families.ts'
import { type TemplateCaps, templateInput, templateTools } from './tools/prompt.ts'

/** A tool call the assistant made, in OpenAI's shape. */
export interface ChatToolCall {
  id: string
  type: 'function'
  function: {
    name: string
    /**
     * The arguments as OpenAI sends them (JSON text), or already parsed. Templates get an object
     * (Hugging Face templates write `arguments | tojson`): JSON text is parsed before rendering.
     */
    arguments: string | { [key: string]: unknown }
  }
}

/** One chat message as a template sees it (content already flattened to text). */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool'
  /** Null for an assistant message that only calls tools. */
  content: string | null
  name?: string
  /** The assistant's tool calls. */
  tool_calls?: readonly ChatToolCall[]
  /** A `tool` message: the call it answers. */
  tool_call_id?: string
}

/**
 * The template for models whose GGUF has no `tokenizer.chat_template` (base models, and the test
 * models `mesh model-create` writes): each message as `Role: content` followed by a blank line, then
 * `Assistant:` for the reply. `[system "Be brief.", user "Hi"]` renders as
 * `"System: Be brief.\n\nUser: Hi\n\nAssistant:"`.
 */
export const FALLBACK_CHAT_TEMPLATE =
  "{% for message in messages %}{{ message.role | capitalize }}: {{ message.content }}{{ '\\n\\n' }}{% endfor %}" +
  '{% if add_generation_prompt %}Assistant:{% endif %}'

/** The model's chat template is not valid Jinja (a problem with the model file, not the request). */
export class ChatTemplateSyntaxError extends MeshError {
  override name = 'ChatTemplateSyntaxError' as const
  constructor(cause: unknown) {
    super(
      'ERR_CHAT_TEMPLATE_SYNTAX',
      `the model's chat template does not parse: ${(cause as Error).message}`,
      {
        cause,
        hint: 'fix tokenizer.chat_template in the GGUF file, or remove it to use the plain fallback template',
      },
    )
  }
}

/** The chat template refused these messages (`raise_exception`) or failed while rendering them. */
export class ChatTemplateRenderError extends MeshError {
  override name = 'ChatTemplateRenderError' as const
  constructor(message: string, cause?: unknown) {
    super('ERR_CHAT_TEMPLATE_RENDER', `the model's chat template rejected the messages: ${message}`, {
      cause,
    })
  }
}

export interface RenderChatOptions {
  messages: readonly ChatMessage[]
  /** Append the start of the assistant's turn (default true). */
  addGenerationPrompt?: boolean
  /** Text of the model's BOS token, as templates use it (`{{ bos_token }}`). */
  bosToken?: string
  /** Text of the model's EOS token (`{{ eos_token }}`). */
  eosToken?: string
  /**
   * The tokenizer puts BOS in front of the prompt itself (`tokenizer.ggml.add_bos_token`, default
   * true): a leading `bos_token` in the rendered text is then dropped, so the prompt does not start
   * with two of them (llama.cpp's server does the same).
   */
  addBosToken?: boolean
  /**
   * Tools the model may call. A template that knows tools gets them as `tools`; for the `generic`
   * family they are described in a system message instead (see ToolFamily).
   */
  tools?: readonly ToolDefinition[]
  /** How the model calls tools (default: the template's own `toolFamily`). */
  toolFamily?: ToolFamily
}

/** A parsed chat template. */
export interface ChatTemplate {
  readonly source: string
  /** The tool-call family its text shows (`toolFamily(source)`). */
  readonly toolFamily: ToolFamily
  /**
   * The prompt text for `messages`. Tool calls and tool results in them are rendered as the template
   * does, or folded into text when it cannot (templateInput); a leading system message goes into the
   * first turn when the template has no system role. ChatTemplateRenderError when it refuses them.
   */
  render(options: RenderChatOptions): string
}

/** A made-up text that shows whether a probe's message reached the prompt. */
const PROBE_NEEDLE = 'meshnet-probe-4b1d'

/** The text of `template` for `context`, or undefined when it raises. */
function probe(template: Template, context: Record<string, unknown>): string | undefined {
  try {
    return template.render({ add_generation_prompt: true, bos_token: '', eos_token: '', ...context })
  } catch {
    return undefined
  }
}

/** Probes of what a template renders, each run once, when first needed (as llama.cpp's template caps). */
function templateCaps(template: Template): TemplateCaps {
  let systemRole: boolean | undefined
  let parallelToolCalls: boolean | undefined
  return {
    systemRole() {
      systemRole ??=
        probe(template, {
          messages: [
            { role: 'system', content: PROBE_NEEDLE },
            { role: 'user', content: 'Hi' },
          ],
        })?.includes(PROBE_NEEDLE) ?? false
      return systemRole
    },
    parallelToolCalls() {
      if (parallelToolCalls === undefined) {
        const names = ['meshnet_probe_one', 'meshnet_probe_two']
        const ids = ['call00001', 'call00002']
        const out = probe(template, {
          messages: [
            { role: 'user', content: 'Hi' },
            {
              role: 'assistant',
              content: '',
              tool_calls: names.map((name, i) => ({
                id: ids[i],
                type: 'function',
                function: { name, arguments: { arg: 'value' } },
              })),
            },
            ...ids.map((id) => ({ role: 'tool', tool_call_id: id, content: 'done' })),
          ],
          tools: templateTools(names.map((name) => ({ type: 'function', function: { name } }))),
        })
        parallelToolCalls = out !== undefined && names.every((name) => out.split(name).length > 2)
      }
      return parallelToolCalls
    },
  }
}

/**
 * Parses a Jinja chat template (a GGUF's `tokenizer.chat_template`, as Hugging Face tokenizers and
 * llama.cpp render it); without one, the plain FALLBACK_CHAT_TEMPLATE. ChatTemplateSyntaxError when it
 * does not parse.
 */
export function parseChatTemplate(source: string | undefined): ChatTemplate {
  const text = source === undefined || source.trim() === '' ? FALLBACK_CHAT_TEMPLATE : source
  let template: Template
  try {
    template = new Template(text)
  } catch (err) {
    throw new ChatTemplateSyntaxError(err)
  }
  const family = toolFamily(text)
  const caps = templateCaps(template)
  return {
    source: text,
    toolFamily: family,
    render(options) {
      const bosToken = options.bosToken ?? ''
      const input = templateInput(options.messages, options.toolFamily ?? family, options.tools, caps)
      let rendered: string
      try {
        rendered = template.render({
          messages: input.messages,
          ...(input.tools === undefined ? {} : { tools: input.tools }),
          add_generation_prompt: options.addGenerationPrompt ?? true,
          bos_token: bosToken,
          eos_token: options.eosToken ?? '',
        })
      } catch (err) {
        // The template's own raise_exception('...') arrives here as an Error with that message.
        throw new ChatTemplateRenderError((err as Error).message, err)
      }
      if ((options.addBosToken ?? true) && bosToken !== '' && rendered.startsWith(bosToken)) {
        rendered = rendered.slice(bosToken.length)
      }
      return rendered
    },
  }
}

/** What a model's chat prompt is rendered with: its GGUF's template and token texts (`modelInfo`). */
export interface ChatModelFacts {
  /** `tokenizer.chat_template`; absent: FALLBACK_CHAT_TEMPLATE. */
  chatTemplate?: string
  bosToken?: string
  eosToken?: string
  /** `tokenizer.ggml.add_bos_token` (default true). */
  addBosToken?: boolean
}

/**
 * The prompt for a chat with `model`: its template rendered with the generation prompt and its BOS
 * and EOS texts, a leading BOS dropped when the tokenizer adds its own. What `/v1/chat/completions`
 * sends to the model, and what chat jobs of the job protocol run.
 */
export function renderChatPrompt(
  template: ChatTemplate,
  model: ChatModelFacts,
  messages: readonly ChatMessage[],
  tools: readonly ToolDefinition[] = [],
): string {
  return template.render({
    messages,
    addGenerationPrompt: true,
    ...(tools.length === 0 ? {} : { tools }),
    ...(model.bosToken === undefined ? {} : { bosToken: model.bosToken }),
    ...(model.eosToken === undefined ? {} : { eosToken: model.eosToken }),
    ...(model.addBosToken === undefined ? {} : { addBosToken: model.addBosToken }),
  })
}
