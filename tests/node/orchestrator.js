'use strict'
/*
 * A stand-in for an existing Node orchestrator: only @hyperswarm/rpc and hyperdht,
 * with hp-svc-facs-net's conventions (JSON request buffers, JSON replies, errors as
 * the JSON string "[HRPC_ERR]=..."), and no code of wrk-ai-inference.
 *
 * Usage: node orchestrator.js '<plan JSON>'; plan = {bootstrap, key?, seed?, timeout?,
 *   steps: [{call, payload?} | {call, raw} | {lookup} | {sleep: ms} | {repeat, call, payload?} |
 *           {fresh: n, call, payload?} |
 *           {together: [{call, payload?, after?: ms, until?: {model, cellsOver}}, ...]}]}
 * Prints one JSON line per step: {ok, result} | {ok:false, hrpcError} | {ok:false, error}.
 */
const RPC = require('@hyperswarm/rpc')
const DHT = require('hyperdht')

async function main () {
  const plan = JSON.parse(process.argv[2])
  const keyPair = plan.seed ? DHT.keyPair(Buffer.from(plan.seed, 'hex')) : undefined
  const dht = new DHT({ bootstrap: plan.bootstrap, host: '127.0.0.1', keyPair })
  const rpc = new RPC({ dht, poolLinger: 300000 })
  const opts = { timeout: plan.timeout || 30000 }
  const out = (line) => process.stdout.write(JSON.stringify(line) + '\n')

  async function call (key, method, buf) {
    try {
      const reply = JSON.parse((await rpc.request(Buffer.from(key, 'hex'), method, buf, opts)).toString())
      if (typeof reply === 'string' && reply.startsWith('[HRPC_ERR]=')) return { ok: false, hrpcError: reply }
      return { ok: true, result: reply }
    } catch (err) {
      return { ok: false, error: err.code || err.message }
    }
  }

  const encode = (step) => step.raw !== undefined ? Buffer.from(step.raw) : Buffer.from(JSON.stringify(step.payload ?? {}))

  for (const step of plan.steps) {
    if (step.sleep) {
      await new Promise((resolve) => setTimeout(resolve, step.sleep))
      out({ ok: true })
    } else if (step.lookup) {
      const peers = new Set()
      for await (const data of dht.lookup(DHT.hash(Buffer.from(step.lookup)))) {
        for (const peer of data.peers) peers.add(peer.publicKey.toString('hex'))
      }
      out({ ok: true, result: [...peers] })
    } else if (step.fresh) {
      // fresh connections: a new RPC instance (new DHT node, new key) per call
      let good = 0
      for (let i = 0; i < step.fresh; i++) {
        const d = new DHT({ bootstrap: plan.bootstrap, host: '127.0.0.1' })
        const r = new RPC({ dht: d })
        try {
          const reply = await r.request(Buffer.from(plan.key, 'hex'), step.call, encode(step), opts)
          if (JSON.parse(reply.toString()) !== undefined) good++
        } catch (err) {}
        await r.destroy()
        await d.destroy()
      }
      out({ ok: good === step.fresh, result: good })
    } else if (step.together) {
      // calls at once, each started `after` ms from the step's start (and, with `until`,
      // once the worker's capacity answer shows more than `cellsOver` KV cells in use on
      // `model`): one line, all results, each with `at` (ms from the step's start)
      const begun = process.hrtime.bigint()
      const since = (t) => Number(process.hrtime.bigint() - t) / 1e6
      const results = await Promise.all(step.together.map(async (sub) => {
        await new Promise((resolve) => setTimeout(resolve, sub.after || 0))
        while (sub.until && since(begun) < 60000) {
          const capacity = await call(plan.key, 'checkCapacity', Buffer.from('{}'))
          const seqs = capacity.ok && capacity.result.sequences && capacity.result.sequences[sub.until.model]
          if (seqs && seqs.kvCacheUse * seqs.contextLength * seqs.slots > sub.until.cellsOver) break
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
        const at = since(begun)
        const started = process.hrtime.bigint()
        const reply = await call(plan.key, sub.call, encode(sub))
        return { ...reply, at, ms: since(started) }
      }))
      out({ ok: true, result: results })
    } else if (step.repeat) {
      const started = process.hrtime.bigint()
      const results = await Promise.all(Array.from({ length: step.repeat },
        () => call(plan.key, step.call, encode(step))))
      const ms = Number(process.hrtime.bigint() - started) / 1e6
      out({ ok: true, result: results, ms })
    } else {
      out(await call(plan.key, step.call, encode(step)))
    }
  }
  out({ clientKey: dht.defaultKeyPair.publicKey.toString('hex') })
  await rpc.destroy()
  await dht.destroy()
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
