"""``wrk-ai-inference publish`` and ``seed``: a process that serves model drives.

``publish DIR…`` puts each model folder under ``/<folder name>`` of the store's own
drive (unchanged files are kept), prints one JSON line ``{"key", "version",
"models", "files": [{"path", "size", "blocks"}]}`` once it is seeding, and seeds until
SIGTERM; ``--block-size`` sets the bytes per block of the files it writes. ``seed``
serves the store's own drive and the drives named with ``--key`` without changing them.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson

from ..errors import InferenceError
from ..logs import get_logger
from .drives import Drives
from .netconfig import NetConfig
from .sidecar import Sidecar

log = get_logger("p2p.publish")

#: Bounds each wait for a peer or the DHT while seeding a drive (its own store holds it).
_SEED_WAIT_S = 60.0


async def _serve(net: NetConfig, folders: list[Path], keys: list[str],
                 block_size: int | None) -> None:
    sidecar = Sidecar(net.sidecar_init(net.corestore()))
    drives = Drives(sidecar)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        published = await drives.publish(folders, block_size)
        for key in keys:
            await drives.seed(key.lower(), _SEED_WAIT_S)
        line = {"key": published["key"], "version": published["version"],
                "models": published["models"], "files": published["files"]}
        if keys:
            line["seeding"] = [k.lower() for k in keys]
        sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
        sys.stdout.flush()
        log.info("seeding", extra=line)
        await stop.wait()
    finally:
        await sidecar.close()


def run_publisher(net: NetConfig, folders: list[str], keys: list[str],
                  block_size: int | None = None) -> int:
    paths = [Path(f) for f in folders]
    missing = [str(p) for p in paths if not (p / "model.json").is_file()]
    if missing:
        log.error("not model folders (no model.json)", extra={"folders": missing})
        return 2
    try:
        asyncio.run(_serve(net, paths, keys, block_size))
    except InferenceError as exc:
        log.error("publishing failed", extra={"error": exc.message})
        return 1
    return 0
