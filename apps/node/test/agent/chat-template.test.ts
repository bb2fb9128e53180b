import { describe, expect, it } from 'vitest'
import { FALLBACK_CHAT_TEMPLATE, parseChatTemplate } from '../../src/agent/chat-template.ts'

// ChatML, as Qwen and many fine-tunes ship it in tokenizer.chat_template.
const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

// Llama 2 / Mistral style: BOS in the template, and roles that must alternate.
const LLAMA2 =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"

describe('parseChatTemplate', () => {
  it('renders the documented plain fallback when the model has no template', () => {
    const template = parseChatTemplate(undefined)
    expect(template.source).toBe(FALLBACK_CHAT_TEMPLATE)
    expect(
      template.render({
        messages: [
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: 'Hi' },
        ],
      }),
    ).toBe('System: Be brief.\n\nUser: Hi\n\nAssistant:')
    expect(parseChatTemplate('  ').source).toBe(FALLBACK_CHAT_TEMPLATE)
  })

  it('leaves the assistant turn out without add_generation_prompt', () => {
    const messages = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello.' },
    ] as const
    expect(parseChatTemplate(undefined).render({ messages, addGenerationPrompt: false })).toBe(
      'User: Hi\n\nAssistant: Hello.\n\n',
    )
  })

  it('renders a ChatML template from a GGUF with the generation prompt', () => {
    const prompt = parseChatTemplate(CHATML).render({
      messages: [
        { role: 'system', content: 'You are terse.' },
        { role: 'user', content: 'Name a colour.' },
      ],
    })
    expect(prompt).toBe(
      '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n',
    )
  })

  it('passes bos_token and eos_token, and drops a leading BOS the tokenizer adds itself', () => {
    const template = parseChatTemplate(LLAMA2)
    const messages = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello.' },
      { role: 'user', content: 'Bye' },
    ] as const
    const options = { messages, bosToken: '<s>', eosToken: '</s>' }
    expect(template.render(options)).toBe('[INST] Hi [/INST]Hello.</s>[INST] Bye [/INST]')
    expect(template.render({ ...options, addBosToken: false })).toBe(
      '<s>[INST] Hi [/INST]Hello.</s>[INST] Bye [/INST]',
    )
  })

  it("turns the template's raise_exception into a ChatTemplateRenderError with its message", () => {
    const template = parseChatTemplate(LLAMA2)
    expect(() =>
      template.render({
        messages: [
          { role: 'assistant', content: 'I go first' },
          { role: 'user', content: 'Hi' },
        ],
      }),
    ).toThrow(
      expect.objectContaining({
        name: 'ChatTemplateRenderError',
        message: expect.stringContaining('Conversation roles must alternate'),
      }),
    )
  })

  it('reports a template that does not parse as a ChatTemplateSyntaxError', () => {
    expect(() => parseChatTemplate('{% for message in messages %}{{ message.content }}')).toThrow(
      expect.objectContaining({ name: 'ChatTemplateSyntaxError' }),
    )
  })

  it('reports a template that fails while rendering as a ChatTemplateRenderError', () => {
    const template = parseChatTemplate('{{ messages[0].content | no_such_filter }}')
    expect(() => template.render({ messages: [{ role: 'user', content: 'x' }] })).toThrow(
      expect.objectContaining({ name: 'ChatTemplateRenderError' }),
    )
  })
})
