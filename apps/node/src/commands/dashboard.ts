import { InvalidArgumentError, printFields, printJson } from '@meshnet/core'
import { dataDirLayout } from '@meshnet/identity'
import type { Command } from 'commander'
import { connectAgent } from '../agent/control-api.ts'
import type { CommandContext } from '../context.ts'

export function registerDashboard(program: Command, context: (cmd: Command) => CommandContext): void {
  program
    .command('dashboard')
    .description("print the link to the running agent's dashboard and chat page (with its token)")
    .action(async (_flags: unknown, cmd: Command) => {
      const ctx = context(cmd)
      const agent = await connectAgent(dataDirLayout(ctx.dataDir))
      const status = await agent.request<{ dashboard?: unknown }>('GET', '/status')
      if (status.dashboard === undefined) {
        throw new InvalidArgumentError('the agent serves no dashboard (it was started with --no-dashboard)', {
          hint: 'restart it without --no-dashboard',
        })
      }
      const { url, token } = await agent.request<{ url: string | null; token: string }>('GET', '/dashboard')
      if (url === null)
        throw new InvalidArgumentError('the dashboard is not listening yet; try again in a moment')
      const chat = url.replace('/#token=', '/chat#token=')
      if (ctx.json) return printJson(ctx.io, { url, chat, token })
      printFields(ctx.io, [
        ['Dashboard', url],
        ['Chat', chat],
      ])
      ctx.io.stdout.write(
        'The links carry the dashboard token: share them only with people who may use this node.\n',
      )
    })
}
