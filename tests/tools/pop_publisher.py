"""A runner's usage path at a PoP, as a process of its own for the distributed tests: usage
events at a steady rate, spooled by the runner's real outbox and published to the PoP's
own JetStream domain. Each event is written to `--out` once spooled (the ground truth);
`--stop` (a file) ends it, after the outbox has drained.

    python -m tests.tools.pop_publisher --nats URL --namespace NS --pop eu-west \\
        --tenant ten_x --spool DIR --out FILE --stop FILE [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from edgeinfer.services.runner.outbox import Outbox
from edgeinfer.shared.bus import connect, ensure_pop_streams
from edgeinfer.shared.events import UsageEvent, encode, new_id
from edgeinfer.shared.subjects import Subjects


async def main(args: argparse.Namespace) -> None:
    subjects = Subjects(args.namespace)
    nc = await connect(args.nats, f"publisher-{args.pop}")
    js = nc.jetstream()
    for _ in range(150):  # the PoP's JetStream may still be starting
        try:
            await ensure_pop_streams(js, subjects, args.pop)
            break
        except Exception:
            await asyncio.sleep(0.2)
    outbox = Outbox(Path(args.spool), js, subjects.usage(args.pop))
    drain = asyncio.create_task(outbox.run())
    rng = random.Random(args.pop)
    stop, interval = Path(args.stop), 1.0 / args.rate
    with open(args.out, "a") as out:
        while not stop.exists():
            now = datetime.now(UTC)
            us = rng.randint(1, 50_000)
            event = UsageEvent(id=new_id(), source="test", time=now, tenant_id=args.tenant,
                               request_id=new_id(), deployment_id="dep_" + args.tenant, model_version="1",
                               runner_id=f"r-{args.pop}", pop=args.pop, region=args.pop,
                               gpu_class="cpu", gpu_share=Decimal(1), busy_us=us, gpu_us=us,
                               started_at=now, ended_at=now)
            outbox.append(encode(event) + b"\n")
            out.write(f"{event.id} {us} {now.timestamp():.6f}\n")
            out.flush()
            await asyncio.sleep(interval)
    if not await outbox.flush(timeout=60):
        raise SystemExit(f"{outbox.pending_events} events still in the outbox")
    drain.cancel()
    outbox.close()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--nats", "--namespace", "--pop", "--tenant", "--spool", "--out", "--stop"):
        parser.add_argument(name, required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    asyncio.run(main(parser.parse_args()))
