// Sends calls through @segment/analytics-node to a collector and prints, as JSON, each call's messageId
// and whether it was delivered: node send_node.mjs URL WRITE_KEY < calls.json
// calls.json: [{"method": "track"|"identify"|"page"|..., "params": {...}}, ...]
import { Analytics } from '@segment/analytics-node'

const [url, writeKey] = process.argv.slice(2)
const calls = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))
const analytics = new Analytics({ writeKey, host: url, flushAt: 20, flushInterval: 100, maxRetries: 5 })
const results = []
await Promise.all(calls.map(({ method, params }) => new Promise((resolve) => {
  analytics[method](params, (err, ctx) => {
    results.push({ messageId: ctx?.event?.messageId, error: err ? String(err.reason ?? err) : null })
    resolve()
  })
})))
await analytics.closeAndFlush({ timeout: 20000 })
process.stdout.write(JSON.stringify(results))
