// Streams a chat completion from a Meshnet agent's OpenAI-compatible API with the official `openai`
// client, printing the answer as it arrives (stdout) and the token counts at the end (stderr).
//
//   node index.ts --base-url http://127.0.0.1:<api port>/v1 [--api-key <key>] "Why is the sky blue?"
//
// OPENAI_BASE_URL and OPENAI_API_KEY work in place of the flags.
import { parseArgs } from 'node:util'
import OpenAI from 'openai'

const { values, positionals } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    'api-key': { type: 'string' },
    model: { type: 'string' },
    system: { type: 'string' },
    'max-tokens': { type: 'string', default: '64' },
    temperature: { type: 'string', default: '0' },
  },
  allowPositionals: true,
})

const baseURL = values['base-url'] || process.env.OPENAI_BASE_URL || undefined
if (baseURL === undefined) {
  console.error('give the agent API as --base-url http://127.0.0.1:<api port>/v1 (or set OPENAI_BASE_URL)')
  process.exit(2)
}
// An agent started without an API key accepts any key; the client insists on having one.
const apiKey = values['api-key'] || process.env.OPENAI_API_KEY || 'no-key'
const client = new OpenAI({ baseURL, apiKey })

try {
  // Without --model, ask the agent what it serves and take the first.
  const model = values.model ?? (await client.models.list()).data[0]?.id
  if (model === undefined) throw new Error('the agent serves no model yet; start it with --model <file.gguf>')

  const messages: OpenAI.ChatCompletionMessageParam[] = []
  if (values.system !== undefined) messages.push({ role: 'system', content: values.system })
  messages.push({ role: 'user', content: positionals.join(' ') || 'Hello world' })

  const stream = await client.chat.completions.create({
    model,
    messages,
    max_completion_tokens: Number(values['max-tokens']),
    temperature: Number(values.temperature),
    stream: true,
    stream_options: { include_usage: true },
  })
  let finish: string | null = null
  let usage: OpenAI.CompletionUsage | undefined
  for await (const chunk of stream) {
    const choice = chunk.choices[0]
    if (choice?.delta.content) process.stdout.write(choice.delta.content)
    finish = choice?.finish_reason ?? finish
    usage = chunk.usage ?? usage
  }
  process.stdout.write('\n')
  if (usage !== undefined) {
    console.error(
      `[${model}: ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens, finish: ${finish}]`,
    )
  }
} catch (err) {
  console.error(
    err instanceof OpenAI.APIError ? `the agent answered: ${err.message}` : (err as Error).message,
  )
  process.exitCode = 1
}
