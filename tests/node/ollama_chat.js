// The Ollama JavaScript client, unchanged, against a worker: one chat, then the same
// chat streamed. Prints {"text", "streamed", "doneReason"} as one JSON line.
'use strict'
const { Ollama } = require('ollama')

async function main () {
  const host = process.argv[2]
  const client = new Ollama({ host })
  const messages = [{ role: 'user', content: 'Name the capital of France.' }]
  const options = { temperature: 0 }
  const answer = await client.chat({ model: 'smollm2', messages, options })
  let streamed = ''
  for await (const part of await client.chat({ model: 'smollm2', messages, options, stream: true })) {
    streamed += part.message.content
  }
  const listed = await client.list()
  process.stdout.write(JSON.stringify({
    text: answer.message.content,
    streamed,
    doneReason: answer.done_reason,
    models: listed.models.map((m) => m.name)
  }) + '\n')
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
