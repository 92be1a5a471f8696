'use strict'
/*
 * Frame reader for the bridge's stdio channel: u32be total | u32be headerLength |
 * header JSON | body, where total = 4 + headerLength + bodyLength.
 *
 * Chunks are kept in a list until a whole frame is there, and only then joined, so
 * a multi-megabyte payload arriving in 64 KiB chunks is copied once, not once per
 * chunk (concatenating on every chunk is quadratic). `copied` counts the bytes
 * joined, so a test can check that.
 */

class FrameReader {
  constructor (onFrame) {
    this.onFrame = onFrame
    this.chunks = []
    this.length = 0
    this.copied = 0
  }

  push (chunk) {
    this.chunks.push(chunk)
    this.length += chunk.length
    while (this.length >= 4) {
      const total = this._peekTotal()
      if (this.length < 4 + total) return
      const frame = this._take(4 + total)
      const headLength = frame.readUInt32BE(4)
      const header = JSON.parse(frame.subarray(8, 8 + headLength).toString('utf-8'))
      this.onFrame(header, frame.subarray(8 + headLength))
    }
  }

  _peekTotal () {
    if (this.chunks[0].length < 4) this._merge(4)
    return this.chunks[0].readUInt32BE(0)
  }

  // the first `size` bytes as one buffer, leaving the rest queued
  _take (size) {
    this._merge(size)
    const first = this.chunks[0]
    const frame = first.subarray(0, size)
    if (first.length === size) this.chunks.shift()
    else this.chunks[0] = first.subarray(size)
    this.length -= size
    return frame
  }

  // join leading chunks until the first holds at least `size` bytes
  _merge (size) {
    if (this.chunks[0].length >= size) return
    let count = 0
    let have = 0
    while (have < size) have += this.chunks[count++].length
    const joined = Buffer.concat(this.chunks.slice(0, count), have)
    this.copied += have
    this.chunks.splice(0, count, joined)
  }
}

module.exports = { FrameReader }
