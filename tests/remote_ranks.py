"""Some ranks of one run, as the trainers on one host of a multi-node job would be: one `Emitter` per
rank, sending known predictions over CURVE to a monitor on another host (tests/test_several_hosts.py
runs it inside a network namespace of its own).

    python tests/remote_ranks.py --endpoint tcp://10.231.1.1:5555 --server-key keys/server.key \
        --client-secret keys/host-a.key_secret --run job --world 4 --ranks 0 1 --spool DIR

Prints one JSON line per rank with its delivery report. Without `--client-secret` each rank makes
a key pair of its own, as a trainer given only the server's key would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_side.emitter import Emitter  # noqa: E402

CLASS_NAMES = ["ant", "bee", "cicada", "dragonfly", "earwig"]
SAMPLES_PER_RANK = 300


def rank_predictions(rank: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The (preds, labels) a rank validates at an epoch: the same for the sender and the test."""
    rng = np.random.default_rng(1000 * rank + epoch)
    labels = rng.integers(0, len(CLASS_NAMES), SAMPLES_PER_RANK, dtype=np.uint8)
    wrong = rng.random(SAMPLES_PER_RANK) < 0.3
    preds = np.where(wrong, rng.integers(0, len(CLASS_NAMES), SAMPLES_PER_RANK), labels).astype(np.uint8)
    return preds, labels


def send_ranks(endpoint: str, server_key: bytes, client_keys: tuple[bytes, bytes] | None, run: str, world: int,
               ranks: list[int], epochs: int, spool: Path, linger_ms: int) -> list[dict]:
    emitters = [Emitter(endpoint, run=run, rank=rank, world_size=world, server_key=server_key,
                        client_keys=client_keys, spool=str(spool), linger_ms=linger_ms) for rank in ranks]
    for emitter in emitters:
        emitter.run_start(CLASS_NAMES)
    for epoch in range(epochs):
        for emitter in emitters:
            preds, labels = rank_predictions(emitter.rank, epoch)
            emitter.preds(epoch, preds=preds, labels=labels)
            emitter.metrics(epoch, "val", {"val/acc_top1": float((preds == labels).mean())})
            emitter.epoch_end(epoch)
    reports = []
    for emitter in emitters:
        emitter.run_end("completed")
        report = emitter.close()
        reports.append({"rank": emitter.rank, "messages": report.messages, "dropped": report.dropped,
                        "confirmed": report.confirmed, "refusal": report.refusal})
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the monitor's data socket, tcp://HOST:PORT")
    parser.add_argument("--server-key", type=Path, required=True, help="the monitor's public key file")
    parser.add_argument("--client-secret", type=Path, help="this host's key pair (a .key_secret file)")
    parser.add_argument("--run", required=True, help="run id")
    parser.add_argument("--world", type=int, required=True, help="ranks in the whole run")
    parser.add_argument("--ranks", type=int, nargs="+", required=True, help="the ranks this host sends")
    parser.add_argument("--epochs", type=int, default=2, help="validation epochs")
    parser.add_argument("--spool", type=Path, required=True, help="the ranks' spool folder")
    parser.add_argument("--linger-ms", type=int, default=10000, help="the longest close waits for receipts")
    args = parser.parse_args()
    server_key, _ = zmq.auth.load_certificate(str(args.server_key))
    client_keys = zmq.auth.load_certificate(str(args.client_secret)) if args.client_secret else None
    for report in send_ranks(args.endpoint, server_key, client_keys, args.run, args.world, args.ranks, args.epochs,
                             args.spool, args.linger_ms):
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
