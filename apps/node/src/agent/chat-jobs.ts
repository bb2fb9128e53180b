import type { JobMessage, JobTool } from '@meshnet/protocols'
import type { ChatTools, RenderChat } from '@meshnet/shards'
import {
  type ChatMessage,
  type ChatModelFacts,
  type ChatTemplate,
  parseChatTemplate,
  renderChatPrompt,
} from './chat-template.ts'
import type { ToolDefinition } from './tools/check.ts'
import { toolCallId } from './tools/families.ts'
import { forcedToolGrammar } from './tools/force.ts'
import { parseToolCalls } from './tools/parse.ts'

/**
 * What the job service renders chat jobs with (`renderChat`) and how it forces and parses their tool
 * calls (`chatTools`): the code the OpenAI API runs, over a model file's chat facts, read once (with
 * `read`, the agent's `modelInfo`) and its template parsed once. ChatTemplateSyntaxError when the
 * template does not parse, ChatTemplateRenderError when it refuses the messages; both reach the
 * requester by name and code.
 */
export function chatJobHooks(read: (path: string) => Promise<ChatModelFacts>): {
  renderChat: RenderChat
  chatTools: ChatTools
} {
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
  return {
    async renderChat(model, messages, tools) {
      const { facts, template } = await load(model.path)
      return renderChatPrompt(template, facts, messages.map(chatMessage), tools.map(toolDefinition))
    },
    chatTools: {
      async grammar(model, tools, choice) {
        const { template } = await load(model.path)
        return forcedToolGrammar(template.toolFamily, tools.map(toolDefinition), choice)
      },
      async parse(model, text) {
        const { template } = await load(model.path)
        const { content, toolCalls } = parseToolCalls(template.toolFamily, text)
        return {
          content,
          toolCalls: toolCalls.map((call) => ({ ...call, id: toolCallId(template.toolFamily) })),
        }
      },
    },
  }
}

/** A job's message as the chat template sees it. */
function chatMessage(m: JobMessage): ChatMessage {
  return {
    role: m.role,
    content: m.content,
    ...(m.name === undefined ? {} : { name: m.name }),
    ...(m.toolCalls === undefined || m.toolCalls.length === 0
      ? {}
      : {
          tool_calls: m.toolCalls.map((call, i) => ({
            id: call.id ?? `call_${i}`,
            type: 'function' as const,
            function: { name: call.name, arguments: call.arguments },
          })),
        }),
    ...(m.toolCallId === undefined ? {} : { tool_call_id: m.toolCallId }),
  }
}

/** A job's tool in OpenAI's (and the templates') shape. */
function toolDefinition(tool: JobTool): ToolDefinition {
  return {
    type: 'function',
    function: {
      name: tool.name,
      ...(tool.description === undefined ? {} : { description: tool.description }),
      ...(tool.parameters === undefined ? {} : { parameters: tool.parameters }),
    },
  }
}
