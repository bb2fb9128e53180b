import { Template } from '@huggingface/jinja'
import { MeshError } from '@meshnet/core'

/** One chat message as a template sees it (content already flattened to text). */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool'
  content: string
  name?: string
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
}

/** A parsed chat template. */
export interface ChatTemplate {
  readonly source: string
  /** The prompt text for `messages`. ChatTemplateRenderError when the template refuses them. */
  render(options: RenderChatOptions): string
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
  return {
    source: text,
    render(options) {
      const bosToken = options.bosToken ?? ''
      let rendered: string
      try {
        rendered = template.render({
          messages: options.messages.map((m) => ({ ...m })),
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
): string {
  return template.render({
    messages,
    addGenerationPrompt: true,
    ...(model.bosToken === undefined ? {} : { bosToken: model.bosToken }),
    ...(model.eosToken === undefined ? {} : { eosToken: model.eosToken }),
    ...(model.addBosToken === undefined ? {} : { addBosToken: model.addBosToken }),
  })
}

/**
 * The job service's `renderChat`: reads a model file's chat facts once (with `read`, the agent's
 * `modelInfo`), parses its template once, and renders each chat as `renderChatPrompt` does.
 * ChatTemplateSyntaxError when the template does not parse, ChatTemplateRenderError when it refuses
 * the messages; both reach the requester by name and code.
 */
export function chatRenderer(
  read: (path: string) => Promise<ChatModelFacts>,
): (model: { path: string }, messages: readonly ChatMessage[]) => Promise<string> {
  const models = new Map<string, Promise<{ facts: ChatModelFacts; template: ChatTemplate }>>()
  const load = (path: string) => {
    let loaded = models.get(path)
    if (loaded === undefined) {
      loaded = read(path).then((facts) => ({ facts, template: parseChatTemplate(facts.chatTemplate) }))
      models.set(path, loaded)
      // A file that could not be read is read again by the next chat (a bad template fails each time alike).
      loaded.catch(() => models.delete(path))
    }
    return loaded
  }
  return async (model, messages) => {
    const { facts, template } = await load(model.path)
    return renderChatPrompt(template, facts, messages)
  }
}
