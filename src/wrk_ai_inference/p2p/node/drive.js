'use strict'
/*
 * Model drives: Hyperdrive over Hyperswarm, kept in the Corestore at init's storeDir
 * (opened on first use). Commands:
 *   drive.publish {dirs:[{name, path}], blockSize?} -> {key, version, models,
 *     files:[{path, size, blocks}]}
 *     put each folder's files under /<name> of this store's own drive in blocks of
 *     blockSize bytes (default 1 MiB; drives published before it have 64 KiB blocks and
 *     fetch the same way; a file whose sha256 has not changed is kept as it is), delete
 *     what is gone, and seed the drive
 *   drive.fetch {key, version|null, folder, skip:[name], expect:{name: sha256}, dest,
 *     timeout} -> {version, files:[{name, size}], bytesTotal, bytesResumed, bytesNetwork}
 *     stream each file directly under `folder` (as of `version`; not those in `skip`) into
 *     <dest>/<name>.part, appending to what a part file already holds (resume), with
 *     progress frames {bytesDone, bytesTotal}. A file of `expect` whose entry carries
 *     another sha256 (publish signs one into each entry's metadata) is refused before a
 *     byte of it moves: ERR_SHA256_MISMATCH. Where every expected file's entry vouches
 *     for the expected sha256, the fetcher serves the blocks it has to the other
 *     fetchers while it fetches (a fleet then pulls a model from each other, not all
 *     from the publisher); otherwise it joins as a client only, and serves nothing
 *     until drive.seed, after the worker checked the bytes itself
 *   drive.list {key, version|null, timeout} -> {version, folders:[{name, files:[{name,
 *     size, sha256|null}]}]}: the top-level folders that hold a model.json
 *   drive.read {key, version|null, path, timeout} -> body: a small file (1 MiB at most)
 *   drive.seed {key, timeout}   serve the drive to peers (the worker verified it); a
 *     drive this store never synced needs a peer first: ERR_NO_PEERS past `timeout`
 *   drive.forget {key, folder, timeout, keepServing}  delete the blobs under folder (those
 *     of one failed verification) and, unless keepServing, stop serving the drive
 *   drive.stats {key} -> {uploaded, downloaded}: blob bytes sent and received
 * Files are streamed, never held whole in memory (drive.get would hold them).
 */

const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const { pipeline } = require('stream/promises')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')
const Hyperswarm = require('hyperswarm')

const PROGRESS_EVERY_MS = 250
// a blob's block is one chunk of the stream that writes it: publish writes files in
// blocks of this size rather than the read stream's 64 KiB, since much of a fetch's
// work is per block (requests, proofs, storage writes)
const BLOCK_SIZE = 1 << 20
const MIN_BLOCK = 4096
const MAX_BLOCK = 8 << 20

function withTimeout (promise, ms, message) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function sha256 (file) {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256')
    fs.createReadStream(file).on('data', (c) => hash.update(c)).on('error', reject)
      .on('end', () => resolve(hash.digest('hex')))
  })
}

function sizeOf (file) {
  try {
    return fs.statSync(file).size
  } catch {
    return 0
  }
}

module.exports = function drive (ctx) {
  let store = null
  let swarm = null
  const drives = new Map() // key hex -> {drive, blobs, sessions, serving, uploaded, downloaded}
  const opening = new Map() // key hex -> the promise of its entry (concurrent commands share it)

  function open () {
    if (store) return
    if (!ctx.settings.storeDir) throw new Error('drives need a store: start the worker with --store-dir')
    store = new Corestore(ctx.settings.storeDir)
    swarm = new Hyperswarm({ dht: ctx.dht })
    swarm.on('connection', (conn) => store.replicate(conn))
  }

  async function track (drive) {
    await drive.ready()
    const key = ctx.hex(drive.key)
    let d = drives.get(key)
    if (!d) {
      d = { key, drive, blobs: null, sessions: [], serving: false, uploaded: 0, downloaded: 0 }
      drives.set(key, d)
    }
    return d
  }

  function remote (key) {
    open()
    if (!opening.has(key)) opening.set(key, track(new Hyperdrive(store, Buffer.from(key, 'hex'))))
    return opening.get(key)
  }

  // count blob bytes both ways, once the blobs core is known (after the first sync)
  function counted (d) {
    if (!d.blobs) {
      d.blobs = d.drive.getBlobs().then((blobs) => {
        blobs.core.on('upload', (index, bytes) => { d.uploaded += bytes })
        blobs.core.on('download', (index, bytes) => { d.downloaded += bytes })
        return blobs
      })
    }
    return d.blobs
  }

  // one client session per drive, and one server session once it serves
  async function join (d, server) {
    if (server ? d.serving : d.sessions.length > 0) return
    const session = swarm.join(d.drive.discoveryKey, { server, client: true })
    d.sessions.push(session)
    d.serving = d.serving || server
    if (server) await session.flushed()
  }

  // a drive that never synced answers entry() with null at once: wait for a peer and
  // its length first; one already in the store with the wanted version needs neither
  async function synced (d, version, timeout) {
    const core = d.drive.core
    if (core.length > 0 && version && d.drive.version >= version) return
    if (core.peers.length === 0) {
      await withTimeout(new Promise((resolve) => core.once('peer-add', resolve)), timeout,
        'ERR_NO_PEERS: no peer holding this drive was found')
    }
    await withTimeout(d.drive.update({ wait: true }), timeout, 'ERR_NO_PEERS: the drive did not sync')
    if (version && d.drive.version < version) {
      throw new Error(`ERR_NO_VERSION: the drive is at version ${d.drive.version}, not ${version}`)
    }
  }

  // the whole file tree (the metadata core; small) and the small files the worker skips
  // (its model.json): a worker that serves the drive then serves all of the folder
  async function complete (d, snapshot, folder, skip, timeout) {
    const tree = d.drive.core.download({ start: 0, end: d.drive.core.length })
    await withTimeout(tree.done(), timeout, 'ERR_NO_PEERS: the drive\'s file tree did not sync')
    for (const name of skip) {
      const entry = await snapshot.entry(`${folder}/${name}`, { timeout })
      if (entry && entry.value.blob && entry.value.blob.byteLength <= (1 << 20)) {
        await snapshot.get(`${folder}/${name}`, { timeout })
      }
    }
  }

  async function files (snapshot, folder, skip, timeout) {
    const found = []
    for await (const name of snapshot.readdir(folder)) {
      if (skip.includes(name)) continue
      const entry = await snapshot.entry(`${folder}/${name}`, { timeout })
      if (entry && entry.value.blob) found.push({ name, entry })
    }
    if (found.length === 0) throw new Error(`ERR_NOT_IN_DRIVE: no files under ${folder}`)
    return found
  }

  // whether the signed entries vouch for every expected sha256; throws on a mismatch
  function vouched (wanted, expect) {
    let all = true
    for (const [name, digest] of Object.entries(expect)) {
      const file = wanted.find((f) => f.name === name)
      const claimed = file && file.entry.value.metadata && file.entry.value.metadata.sha256
      if (claimed && claimed.toLowerCase() !== digest.toLowerCase()) {
        throw Object.assign(new Error(`the drive's entry for ${name} says sha256 ${claimed}`), { code: 'ERR_SHA256_MISMATCH' })
      }
      if (!claimed) all = false
    }
    return all
  }

  async function fetch ({ key, version, folder, skip = [], expect = {}, dest, timeout }, body, progress) {
    const d = await remote(key)
    await join(d, false)
    await synced(d, version, timeout)
    const blobs = await withTimeout(counted(d), timeout, 'ERR_NO_PEERS: the drive\'s blobs did not sync')
    const snapshot = version ? d.drive.checkout(version) : d.drive
    await complete(d, snapshot, folder, skip, timeout)
    const wanted = await files(snapshot, folder, skip, timeout)
    if (vouched(wanted, expect)) await join(d, true)
    const bytesTotal = wanted.reduce((n, f) => n + f.entry.value.blob.byteLength, 0)
    const networkBefore = d.downloaded
    let bytesDone = 0
    let bytesResumed = 0
    let reported = 0
    const report = (force) => {
      const now = Date.now()
      if (force || now - reported >= PROGRESS_EVERY_MS) {
        reported = now
        progress({ bytesDone, bytesTotal })
      }
    }
    fs.mkdirSync(dest, { recursive: true })
    for (const { name, entry } of wanted) {
      const size = entry.value.blob.byteLength
      const part = path.join(dest, `${name}.part`)
      let have = sizeOf(part)
      if (have > size) {
        fs.truncateSync(part, 0)
        have = 0
      }
      bytesResumed += have
      bytesDone += have
      if (have === size) {
        fs.closeSync(fs.openSync(part, 'a'))
        continue
      }
      // blocks in random order, as BitTorrent does rarest-first: fetchers that start
      // together then hold different blocks and serve each other, instead of all
      // asking the publisher for the same next block; the stream writes them in order
      // (from the block the part file ends in: what it holds is never asked for again)
      const { blockOffset, blockLength, byteOffset } = entry.value.blob
      const [first] = have ? await blobs.core.seek(byteOffset + have, { timeout }) : [blockOffset]
      const spread = blobs.core.download({ start: first, end: blockOffset + blockLength, linear: false })
      const source = snapshot.createReadStream(`${folder}/${name}`, { start: have, timeout })
      source.on('data', (chunk) => { bytesDone += chunk.length; report(false) })
      try {
        await pipeline(source, fs.createWriteStream(part, { flags: 'a' }))
      } finally {
        spread.destroy()
      }
    }
    report(true)
    return {
      version: snapshot.version,
      files: wanted.map((f) => ({ name: f.name, size: f.entry.value.blob.byteLength })),
      bytesTotal,
      bytesResumed,
      bytesNetwork: d.downloaded - networkBefore
    }
  }

  async function opened (key, version, timeout) {
    const d = await remote(key)
    await join(d, d.serving)
    await synced(d, version, timeout)
    return version ? d.drive.checkout(version) : d.drive
  }

  async function list ({ key, version, timeout }) {
    const snapshot = await opened(key, version, timeout)
    const folders = []
    for await (const name of snapshot.readdir('/')) {
      if (!(await snapshot.entry(`/${name}/model.json`, { timeout }))) continue
      const files = []
      for await (const file of snapshot.readdir(`/${name}`)) {
        const entry = await snapshot.entry(`/${name}/${file}`, { timeout })
        if (!entry || !entry.value.blob) continue
        const meta = entry.value.metadata
        files.push({ name: file, size: entry.value.blob.byteLength, sha256: (meta && meta.sha256) || null })
      }
      folders.push({ name, files })
    }
    return { version: snapshot.version, folders }
  }

  async function read ({ key, version, path: file, timeout }) {
    const snapshot = await opened(key, version, timeout)
    const entry = await snapshot.entry(file, { timeout })
    if (!entry || !entry.value.blob) throw new Error(`ERR_NOT_IN_DRIVE: no file ${file}`)
    if (entry.value.blob.byteLength > (1 << 20)) throw new Error(`ERR_TOO_LARGE: ${file} is over 1 MiB`)
    return { body: await snapshot.get(file, { timeout }) }
  }

  async function seed ({ key, timeout }) {
    const d = await remote(key)
    await join(d, false) // a drive this store never synced learns its blobs from a peer
    await withTimeout(counted(d), timeout, 'ERR_NO_PEERS: no peer holding this drive was found')
    await withTimeout(join(d, true), timeout, 'ERR_NOT_ANNOUNCED: the DHT did not take the announcement')
    return { version: d.drive.version }
  }

  async function forget ({ key, folder, timeout, keepServing }) {
    const d = drives.get(key)
    if (!d) return {}
    if (!keepServing) {
      for (const session of d.sessions.splice(0)) await session.destroy().catch(() => {})
      d.serving = false
    }
    let cleared = 0
    const clearing = (async () => {
      for await (const entry of d.drive.list(folder, { recursive: false, wait: false })) {
        if (entry.value.blob) {
          await d.drive.clear(entry.key)
          cleared++
        }
      }
    })()
    await withTimeout(clearing, timeout, 'ERR_NO_PEERS: the drive\'s file tree is not in this store')
    return { cleared }
  }

  async function publish ({ dirs, blockSize = BLOCK_SIZE }) {
    if (!Number.isInteger(blockSize) || blockSize < MIN_BLOCK || blockSize > MAX_BLOCK) {
      throw new Error(`ERR_INVALID_REQUEST: blockSize must be ${MIN_BLOCK} to ${MAX_BLOCK} bytes`)
    }
    open()
    const d = await track(new Hyperdrive(store.namespace('publish')))
    const { drive } = d
    for (const { name, path: dir } of dirs) {
      const folder = `/${name}`
      const present = new Set()
      for (const name of fs.readdirSync(dir)) {
        const file = path.join(dir, name) // links are followed: stat, not the dirent
        if (!fs.statSync(file).isFile() || name.endsWith('.part')) continue
        const target = `${folder}/${name}`
        present.add(target)
        const digest = await sha256(file)
        const old = await drive.entry(target)
        if (old && old.value.metadata && old.value.metadata.sha256 === digest) continue
        await pipeline(fs.createReadStream(file, { highWaterMark: blockSize }),
          drive.createWriteStream(target, { metadata: { sha256: digest } }))
      }
      for await (const entry of drive.list(folder, { recursive: false })) {
        if (!present.has(entry.key)) await drive.del(entry.key)
      }
    }
    const files = []
    for (const { name } of dirs) {
      for await (const entry of drive.list(`/${name}`, { recursive: false })) {
        const blob = entry.value.blob
        if (blob) files.push({ path: entry.key, size: blob.byteLength, blocks: blob.blockLength })
      }
    }
    await counted(d)
    await join(d, true)
    return { key: d.key, version: drive.version, models: dirs.map((x) => x.name), files }
  }

  function stats ({ key }) {
    const d = drives.get(key)
    return { uploaded: d ? d.uploaded : 0, downloaded: d ? d.downloaded : 0 }
  }

  async function close () {
    if (swarm) await swarm.destroy().catch(() => {}) // also destroys the shared DHT node
    if (store) await store.close().catch(() => {})
  }

  return {
    commands: {
      'drive.publish': publish,
      'drive.fetch': fetch,
      'drive.list': list,
      'drive.read': read,
      'drive.seed': seed,
      'drive.forget': forget,
      'drive.stats': stats
    },
    close
  }
}
