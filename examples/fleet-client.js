'use strict'
/*
 * A fleet client for Node in one page, on @hyperswarm/rpc and hyperdht only: the rules
 * of docs/fleet.md (find workers by topic, power of two choices on checkCapacity, a
 * requestId per request, fail over on a refusal, and after a lost channel only when
 * checkRequest says the worker has no answer for it).
 *
 *   const fleet = new Fleet({ bootstrap: ['127.0.0.1:49737'] })
 *   const result = await fleet.runInference('digits', [[0, 0, ...]], { timeout: 30000 })
 *   result.worker   // the public key that answered
 *
 * As a script it runs a load (`requests` at most, for `seconds` at most, until stdin
 * ends) and prints one JSON line per request, then the counts:
 *   NODE_PATH=src/wrk_ai_inference/p2p/node/node_modules node examples/fleet-client.js \
 *     '{"bootstrap":["127.0.0.1:49737"],"modelId":"digits","inputData":[[0,...]],
 *       "requests":1000,"concurrency":8}'
 */

const RPC = require('@hyperswarm/rpc')
const DHT = require('hyperdht')
const { randomUUID } = require('crypto')

const DID_NOT_RUN = new Set(['ERR_CAPACITY_EXCEEDED', 'ERR_NOT_READY', 'ERR_MODEL_NOT_AVAILABLE'])
const PREFIX = '[HRPC_ERR]='
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

class Fleet {
  constructor ({ bootstrap, host = '127.0.0.1', lookupTtl = 2000, capacityMaxAge = 1000, probeTimeout = 1000 }) {
    this.dht = new DHT({ bootstrap, host, connectionKeepAlive: 1000 })
    this.rpc = new RPC({ dht: this.dht, poolLinger: 300000 }) // not the 10 s default
    this.opts = { lookupTtl, capacityMaxAge, probeTimeout }
    this.clients = new Map() // key -> a connection we keep
    this.views = new Map() // key -> what we know of that worker
    this.topics = new Map() // topic -> { keys, at }
  }

  view (key) {
    if (!this.views.has(key)) this.views.set(key, { key, cap: null, at: 0, inFlight: 0, down: false, sent: 0, answered: 0, refused: 0, failedOver: 0 })
    return this.views.get(key)
  }

  connection (key) {
    let client = this.clients.get(key)
    if (client && !client.closed) return client
    client = this.rpc.connect(Buffer.from(key, 'hex'))
    client.stream.setTimeout(4000) // a worker silent this long (keep-alives too) is gone
    client.opened = false // no byte of a request leaves before the stream opens
    client.stream.opened.then((ok) => { client.opened = ok !== false }, () => {})
    client.on('close', () => { if (this.clients.get(key) === client) this.clients.delete(key) })
    this.clients.set(key, client)
    return client
  }

  // the worker's answer, or throws {reply: true, code} for its error, or a transport error
  async call (key, method, payload, timeout) {
    const client = this.connection(key)
    let raw
    try {
      raw = await client.request(method, Buffer.from(JSON.stringify(payload)), { timeout })
    } catch (err) {
      throw Object.assign(err, { sent: client.opened })
    }
    const value = JSON.parse(raw.toString())
    if (typeof value === 'string' && value.startsWith(PREFIX)) {
      const [code, ...rest] = value.slice(PREFIX.length).split(': ')
      throw Object.assign(new Error(rest.join(': ') || code), { reply: true, code })
    }
    return value
  }

  async workers (topic) {
    const known = this.topics.get(topic)
    if (known && Date.now() - known.at < this.opts.lookupTtl) return known.keys
    const keys = new Set()
    for await (const data of this.dht.lookup(DHT.hash(Buffer.from(topic)))) {
      for (const peer of data.peers) keys.add(peer.publicKey.toString('hex'))
    }
    this.topics.set(topic, { keys: [...keys], at: Date.now() })
    return [...keys]
  }

  async probe (view, modelId) {
    try {
      view.cap = await this.call(view.key, 'checkCapacity', { modelId }, this.opts.probeTimeout)
      view.at = Date.now()
      view.base = view.inFlight
      view.down = false
    } catch {
      view.down = true
      view.at = Date.now()
    }
  }

  load (view) { // requests per slot, corrected for what we sent and got back since
    const cap = view.cap
    return Math.max(0, cap.currentLoad + cap.queued + view.inFlight - view.base) / Math.max(1, cap.maxConcurrent)
  }

  async choose (modelId, excluded) {
    let pool = (await this.workers(`ai-inference:${modelId}`)).filter((k) => !excluded.has(k)).map((k) => this.view(k))
    while (pool.length) {
      const pair = pool.sort(() => Math.random() - 0.5).slice(0, 2)
      pool = pool.slice(2)
      await Promise.all(pair.filter((v) => Date.now() - v.at > this.opts.capacityMaxAge).map((v) => this.probe(v, modelId)))
      const usable = pair.filter((v) => !v.down && v.cap && v.cap.available && v.cap.modelAvailable !== false)
      if (usable.length) return usable.sort((a, b) => this.load(a) - this.load(b))[0]
    }
    return null
  }

  async runInference (modelId, inputData, { options = {}, timeout = 30000, requestId = randomUUID() } = {}) {
    const deadline = Date.now() + timeout
    const tried = []
    const excluded = new Set()
    const fail = (code, why) => Object.assign(new Error(`${modelId} (requestId ${requestId}): ${why}; tried ${tried.map((t) => `${t.worker.slice(0, 12)}: ${t.outcome}`).join('; ') || 'none'}`), { code, tried })
    let view = null // set: a worker that holds the call, asked again
    while (true) {
      const remaining = deadline - Date.now()
      if (remaining <= 0) throw fail('ERR_INFERENCE_TIMEOUT', `no answer within ${timeout} ms`)
      if (!view) view = await this.choose(modelId, excluded)
      if (!view) throw fail(tried.length ? 'ERR_CAPACITY_EXCEEDED' : 'ERR_MODEL_NOT_AVAILABLE', 'no worker can take it')
      const payload = { modelId, inputData, requestId, options: { ...options, timeout: Math.max(1, Math.floor(remaining - Math.min(250, remaining / 10))) } }
      const target = view
      target.sent++
      target.inFlight++
      try {
        const result = await this.call(view.key, 'runInference', payload, remaining)
        view.answered++
        return { ...result, worker: view.key }
      } catch (err) {
        if (err.reply && !DID_NOT_RUN.has(err.code)) { view.answered++; throw Object.assign(err, { worker: view.key }) }
        if (err.reply) { // refused: it did not run, so another worker may take it
          view.refused++
          view.failedOver++
          view.at = 0
          tried.push({ worker: view.key, outcome: `refused (${err.code})` })
        } else if (!err.sent) { // never reached the worker
          view.down = true
          view.failedOver++
          tried.push({ worker: view.key, outcome: 'unreachable, not sent' })
        } else { // the call may have run: only that worker can say
          view.down = true
          const state = await this.confirm(view.key, requestId, deadline)
          if (state === null) {
            tried.push({ worker: view.key, outcome: `${err.code || err.message}, and it could not be asked whether it ran it: not resent elsewhere` })
            throw fail('ERR_RPC_UNAVAILABLE', 'a worker that may have run the request is unreachable')
          }
          view.down = false
          if (state === 'running' || state === 'done') {
            tried.push({ worker: view.key, outcome: `${err.code}; it holds the call (${state}): asked again` })
            continue // same worker, same requestId: it joins or replays
          }
          view.failedOver++
          tried.push({ worker: view.key, outcome: `${err.code}; it had no answer (${state})` })
        }
        excluded.add(view.key)
        view = null
      } finally {
        target.inFlight--
      }
    }
  }

  async confirm (key, requestId, deadline) { // checkRequest until answered or the deadline
    for (let pause = 100; Date.now() < deadline; pause = Math.min(pause * 2, 1000)) {
      try {
        return (await this.call(key, 'checkRequest', { requestId }, Math.min(this.opts.probeTimeout, deadline - Date.now()))).state
      } catch {
        await sleep(Math.min(pause, Math.max(0, deadline - Date.now())))
      }
    }
    return null
  }

  stats () {
    const out = {}
    for (const v of this.views.values()) out[v.key] = { sent: v.sent, answered: v.answered, refused: v.refused, failedOver: v.failedOver }
    return out
  }

  async destroy () {
    for (const client of this.clients.values()) client.destroy()
    await this.rpc.destroy()
    await this.dht.destroy()
  }
}

module.exports = { Fleet }

async function main () {
  const plan = JSON.parse(process.argv[2])
  const fleet = new Fleet({ bootstrap: plan.bootstrap, host: plan.host })
  const t0 = Date.now()
  const until = t0 + (plan.seconds || 600) * 1000
  let next = 0
  let stop = false
  process.stdin.on('end', () => { stop = true }).resume() // end of stdin: finish and report
  const worker = async (lane) => {
    while (next < plan.requests && !stop && Date.now() < until) {
      const requestId = `${plan.prefix || 'node'}-${next++}`
      const started = Date.now()
      try {
        const result = await fleet.runInference(plan.modelId, plan.inputData, { requestId, timeout: plan.timeout || 30000 })
        console.log(JSON.stringify({ requestId, worker: result.worker, at: started - t0, ms: Date.now() - started }))
      } catch (err) {
        console.log(JSON.stringify({ requestId, error: `${err.code}: ${err.message}`, at: started - t0, ms: Date.now() - started }))
      }
    }
  }
  await Promise.all(Array.from({ length: plan.concurrency || 8 }, (_, i) => worker(i)))
  console.log(JSON.stringify({ stats: fleet.stats() }))
  // closing a connection still trying to reach a dead worker can take a while: do not wait
  await Promise.race([fleet.destroy(), sleep(2000)])
  process.exit(0)
}

if (require.main === module) main().catch((err) => { console.error(err); process.exit(1) })
