'use strict'
/*
 * RPC round-trip benchmark client: one long-lived Node process (start-up is not measured).
 * Starts a Node-only echo server on the same testnet as the baseline, then measures
 * closed-loop requests against it and against the worker.
 * Usage: node rpc_bench.js '{"bootstrap":[...],"workerKey":"hex","requests":N,
 *                            "concurrency":[1,32],"digits":[64 numbers]}'
 * Prints one JSON line: {results: [{target, method, concurrency, requests, rps, p50, p99}]}.
 * With "targets": ["worker"] and "methods": ["runInference"] it measures only those (the
 * worker-CPU bench, benchmarks/rpc_cpu.py, counts the worker's CPU around such a run).
 */
const RPC = require('@hyperswarm/rpc')
const DHT = require('hyperdht')

function percentile (sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

async function measure (rpc, key, method, body, requests, concurrency) {
  const latencies = []
  let next = 0
  const worker = async () => {
    while (next < requests) {
      next++
      const t0 = process.hrtime.bigint()
      const reply = await rpc.request(key, method, body, { timeout: 30000 })
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6)
      if (reply.toString().startsWith('"[HRPC_ERR]')) throw new Error(reply.toString())
    }
  }
  const started = process.hrtime.bigint()
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  latencies.sort((a, b) => a - b)
  return { rps: requests / seconds, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) }
}

async function main () {
  const plan = JSON.parse(process.argv[2])
  const serverDht = new DHT({ bootstrap: plan.bootstrap, host: '127.0.0.1' })
  const echo = new RPC({ dht: serverDht })
  const server = echo.createServer()
  server.respond('ping', (req) => req)
  server.respond('runInference', (req) => req) // transport cost only: echoes the request
  await server.listen()

  const dht = new DHT({ bootstrap: plan.bootstrap, host: '127.0.0.1' })
  const rpc = new RPC({ dht, poolLinger: 300000 })
  const targets = { 'node-echo': server.publicKey, worker: Buffer.from(plan.workerKey, 'hex') }
  const bodies = {
    ping: Buffer.from(JSON.stringify({ n: 1 })),
    runInference: Buffer.from(JSON.stringify({ modelId: 'digits', inputData: [plan.digits] }))
  }
  const results = []
  for (const [target, key] of Object.entries(targets)) {
    if (plan.targets && !plan.targets.includes(target)) continue
    for (const method of plan.methods || ['ping', 'runInference']) {
      await measure(rpc, key, method, bodies[method], 200, 8) // warm-up, connection set up
      for (const concurrency of plan.concurrency) {
        const r = await measure(rpc, key, method, bodies[method], plan.requests, concurrency)
        results.push({ target, method, concurrency, requests: plan.requests, ...r })
      }
    }
  }
  process.stdout.write(JSON.stringify({ results }) + '\n')
  await rpc.destroy()
  await dht.destroy()
  await echo.destroy()
  await serverDht.destroy()
}

main().catch((err) => { process.stderr.write(String(err.stack || err) + '\n'); process.exit(1) })
