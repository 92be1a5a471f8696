'use strict'
/*
 * wrk-ai-inference bridge: Hyperswarm RPC <-> the Python worker, over stdio.
 *
 * Transport only. Every RPC method is answered by the Python core; this script
 * moves bytes, announces topics and keeps the DHT node alive.
 *
 * Frames, both directions: u32be total | u32be headerLength | header (JSON) | body (raw bytes)
 * (read by frames.js, which copies each frame once however it is chunked)
 * where total = 4 + headerLength + bodyLength.
 *
 * Python -> bridge headers:
 *   {t:'init', mode:'server'|'client', seed, dhtSeed, bootstrap:[host:port]|null, host,
 *    allow:[hex]|null, methods:[name], poolLinger, announceInterval, keepAlive,
 *    connectionTimeout}
 *   {t:'reply', id}                     + body: the reply to call `id`
 *   {t:'announce', id, topics:[str]}    start announcing (and re-announcing) topics
 *   {t:'unannounce', id, topics:[str]}  stop and withdraw
 *   {t:'lookup', id, topic}             -> result {peers:[hex]}
 *   {t:'request', id, key, method, timeout} + body -> result + body
 *   {t:'close'}                         withdraw everything, close, exit 0
 * Bridge -> Python headers:
 *   {t:'ready', publicKey, clientKey}
 *   {t:'call', id, method, peer}        + body: an incoming request
 *   {t:'result', id, ok, error?, ...}   + body
 *   {t:'refused', peer}                 a peer the firewall turned away
 *   {t:'log', level, msg, ...}
 * End of stdin means the worker is gone: the bridge closes and exits.
 *
 * Outgoing requests use a pool of our own rather than rpc.request(): a connection
 * lingers `poolLinger` ms after its last request ends (the library's pool starts
 * that timer when a request is sent, which kills long requests), and a connection
 * that hears nothing, not even keep-alives, for `connectionTimeout` ms is destroyed,
 * so calls to a worker that crashed fail in seconds instead of hanging.
 */

const DHT = require('hyperdht')
const RPC = require('@hyperswarm/rpc')
const { FrameReader } = require('./frames')

const EMPTY = Buffer.alloc(0)
const calls = new Map()
const announced = new Map()
const pool = new Map()
let nextCall = 1
let dht = null
let rpc = null
let server = null
let serverKeyPair = null
let settings = null
let closing = false

function send (header, body = EMPTY) {
  const head = Buffer.from(JSON.stringify(header))
  const prefix = Buffer.allocUnsafe(8)
  prefix.writeUInt32BE(4 + head.length + body.length, 0)
  prefix.writeUInt32BE(head.length, 4)
  process.stdout.write(Buffer.concat([prefix, head, body]))
}

function log (level, msg, extra = {}) {
  send({ t: 'log', level, msg, ...extra })
}

const hex = (buf) => Buffer.from(buf).toString('hex')
const topicHash = (topic) => DHT.hash(Buffer.from(topic, 'utf-8'))

async function init (opts) {
  settings = opts
  const bootstrap = opts.bootstrap === null ? undefined : opts.bootstrap
  const dhtKeyPair = opts.dhtSeed ? DHT.keyPair(Buffer.from(opts.dhtSeed, 'hex')) : undefined
  dht = new DHT({ keyPair: dhtKeyPair, bootstrap, host: opts.host,
    connectionKeepAlive: opts.keepAlive })
  const seed = opts.seed ? Buffer.from(opts.seed, 'hex') : undefined
  rpc = new RPC({ dht, seed, poolLinger: opts.poolLinger })
  serverKeyPair = rpc.defaultKeyPair
  await dht.ready()
  if (opts.mode === 'server') {
    const allow = opts.allow && opts.allow.length ? new Set(opts.allow.map(k => k.toLowerCase())) : null
    server = rpc.createServer({
      firewall (remotePublicKey) {
        if (allow === null || allow.has(hex(remotePublicKey))) return false
        send({ t: 'refused', peer: hex(remotePublicKey) })
        return true
      }
    })
    for (const method of opts.methods) {
      server.respond(method, (request, channel) => new Promise((resolve) => {
        const id = nextCall++
        calls.set(id, resolve)
        send({ t: 'call', id, method, peer: hex(channel.stream.remotePublicKey) }, request || EMPTY)
      }))
    }
    await server.listen(serverKeyPair)
  }
  send({
    t: 'ready',
    publicKey: opts.mode === 'server' ? hex(serverKeyPair.publicKey) : null,
    clientKey: hex(dht.defaultKeyPair.publicKey)
  })
}

async function announceOnce (topic) {
  await dht.announce(topicHash(topic), serverKeyPair).finished()
}

async function announce (topics) {
  await Promise.all(topics.filter(t => !announced.has(t)).map(async (topic) => {
    const timer = setInterval(() => {
      announceOnce(topic).catch(err => log('warning', 're-announce failed', { topic, error: err.message }))
    }, settings.announceInterval)
    announced.set(topic, timer)
    await announceOnce(topic)
  }))
}

async function unannounce (topics) {
  await Promise.all(topics.filter(t => announced.has(t)).map(async (topic) => {
    clearInterval(announced.get(topic))
    announced.delete(topic)
    await dht.unannounce(topicHash(topic), serverKeyPair)
  }))
}

async function lookup (topic) {
  const peers = new Set()
  for await (const data of dht.lookup(topicHash(topic))) {
    for (const peer of data.peers) peers.add(hex(peer.publicKey))
  }
  return [...peers]
}

function pooledClient (key) {
  let entry = pool.get(key)
  if (entry && !entry.client.closed) {
    clearTimeout(entry.linger)
    return entry
  }
  const client = rpc.connect(Buffer.from(key, 'hex'))
  if (settings.connectionTimeout) client.stream.setTimeout(settings.connectionTimeout)
  entry = { client, active: 0, linger: null }
  client.on('close', () => { if (pool.get(key) === entry) pool.delete(key) })
  pool.set(key, entry)
  return entry
}

async function request (key, method, body, timeout) {
  const entry = pooledClient(key)
  entry.active++
  try {
    return await entry.client.request(method, body, { timeout })
  } finally {
    if (--entry.active === 0) {
      entry.linger = setTimeout(() => entry.client.destroy(), settings.poolLinger)
      entry.linger.unref()
    }
  }
}

async function close () {
  if (closing) return
  closing = true
  try {
    if (dht) await unannounce([...announced.keys()]).catch(() => {})
    for (const entry of pool.values()) entry.client.destroy()
    if (server) await server.close().catch(() => {})
    if (rpc) await rpc.destroy().catch(() => {})
    if (dht) await dht.destroy().catch(() => {})
  } finally {
    process.exit(0)
  }
}

async function handle (header, body) {
  switch (header.t) {
    case 'init':
      await init(header)
      return
    case 'reply': {
      const resolve = calls.get(header.id)
      if (resolve) {
        calls.delete(header.id)
        resolve(body)
      }
      return
    }
    case 'close':
      await close()
      return
  }
  // Everything else answers with a result frame carrying the same id.
  try {
    switch (header.t) {
      case 'announce':
        await announce(header.topics)
        send({ t: 'result', id: header.id, ok: true })
        break
      case 'unannounce':
        await unannounce(header.topics)
        send({ t: 'result', id: header.id, ok: true })
        break
      case 'lookup':
        send({ t: 'result', id: header.id, ok: true, peers: await lookup(header.topic) })
        break
      case 'request': {
        const reply = await request(header.key, header.method, body, header.timeout)
        send({ t: 'result', id: header.id, ok: true }, reply || EMPTY)
        break
      }
      default:
        throw new Error(`unknown frame type ${header.t}`)
    }
  } catch (err) {
    send({ t: 'result', id: header.id, ok: false, error: err.code || err.message || String(err) })
  }
}

const reader = new FrameReader((header, body) => {
  handle(header, Buffer.from(body)).catch((err) => {
    log('error', 'bridge command failed', { command: header.t, error: err.stack || String(err) })
    if (header.t === 'init') process.exit(1)
  })
})
process.stdin.on('data', (chunk) => reader.push(chunk))
process.stdin.on('end', close)
process.on('SIGTERM', close)
process.on('SIGINT', () => {}) // the worker decides when we stop
process.on('uncaughtException', (err) => {
  log('error', 'bridge crashed', { error: err.stack || String(err) })
  process.exit(1)
})
