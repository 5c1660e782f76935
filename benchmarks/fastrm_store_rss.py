"""Peak RSS of ``xbench fastrm train`` on a small and a ten-times larger label store.

Two synthetic stores (random bf16 states, random maps; ``--hidden`` 1024, ``--image-tokens``
64 and one answer token per sample: 133 kB a sample, 2.7 GB at 20,000) are written through
the labeller's own store writer (:class:`xbench.fastrm.store.ShardWriter`); then
``xbench fastrm train --store DIR`` runs on each as a subprocess, with the same steps, batch
size and shuffle buffer, and its peak resident set size is measured: the kernel's high-water
mark ``VmHWM`` the child reads from ``/proc/self/status`` as it exits (peak RSS since exec;
``ru_maxrss`` would not do: it counts the pages the child shared with this parent between fork
and exec), cross-checked by polling ``/proc/<pid>/status`` every 50 ms. Acceptance: the two
peaks differ by at most 10%.

The step count covers every row of the larger store at least once, so both runs stream
their whole store (the small one many times); the shuffle buffer (``--buffer-mb``) is smaller
than the small store, so neither fits in it.

    python benchmarks/fastrm_store_rss.py                  # -> results/fastrm/store_rss.json
    python benchmarks/fastrm_store_rss.py --sizes 200,2000 --out /tmp/x   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_store(directory: Path, n: int, hidden: int, image_tokens: int, seed: int = 0) -> dict:
    """A store of ``n`` synthetic samples written with the labeller's :class:`ShardWriter`."""
    import numpy as np
    import torch

    from xbench.fastrm.store import Row, ShardWriter

    side = int(image_tokens**0.5)
    shape = (side, side) if side * side == image_tokens else (image_tokens,)
    directory.mkdir(parents=True, exist_ok=True)
    model = {"id": "synthetic", "hidden_size": hidden, "config_hash": "synthetic", "model_hash": "synthetic"}
    (directory / "spec.json").write_text(json.dumps({"synthetic": True, "store_dtype": "bfloat16", "model": model}))
    g = torch.Generator().manual_seed(seed)
    writer = ShardWriter(directory, torch.bfloat16, 0, 0)
    for i in range(n):
        states = torch.randn(image_tokens + 1, hidden, generator=g).to(torch.bfloat16)
        cells = torch.rand(image_tokens, generator=g).numpy().astype(np.float32)
        row = Row(f"synthetic-{i}", i, states[:image_tokens], states[image_tokens:], cells, shape, float(i % 2),
                  {"kind": "synthetic"})  # fmt: skip
        writer.add([row], [], i + 1)
    writer.close()
    return {"samples": n, "bytes": sum(p.stat().st_size for p in directory.iterdir())}


def _poll_hwm(pid: int, out: dict, stop: threading.Event) -> None:
    """Keep the largest ``VmHWM`` read from ``/proc/<pid>/status`` until ``stop``."""
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out["vmhwm_kib"] = max(out.get("vmhwm_kib", 0), int(line.split()[1]))
        except OSError:
            return
        stop.wait(0.05)


#: the child: ``xbench`` itself, printing its own ``VmHWM`` (the kernel's peak RSS of this
#: program since exec) from ``/proc/self/status`` as it exits
_CHILD = (
    "import atexit, sys\n"
    "def hwm():\n"
    "    line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
    "    print('VMHWM_KIB', line.split()[1], flush=True)\n"
    "atexit.register(hwm)\n"
    "from xbench.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def train_rss(store: Path, out: Path, steps: int, batch_size: int, buffer_mb: float) -> dict:
    """Run ``xbench fastrm train --store`` as a child; its peak RSS (KiB) and wall time."""
    cmd = [sys.executable, "-c", _CHILD, "fastrm", "train", "--store", str(store), "--out", str(out),
           "--steps", str(steps), "--batch-size", str(batch_size), "--eval-every", str(steps),
           "--shuffle-buffer-mb", str(buffer_mb), "--ema", "0", "--threads", "1", "--device", "cpu",
           "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=False)
    polled: dict = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_hwm, args=(child.pid, polled, stop), daemon=True)
    poller.start()
    output = child.stdout.read().decode(errors="replace")
    code = child.wait()
    stop.set()
    poller.join()
    reported = [int(x.split()[1]) for x in output.splitlines() if x.startswith("VMHWM_KIB ")]
    if code != 0 or not reported:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{output[-3000:]}")
    return {"peak_rss_kib": reported[-1], "polled_vmhwm_kib": polled.get("vmhwm_kib"),
            "seconds": time.perf_counter() - started, "command": "xbench " + " ".join(cmd[3:]),
            "output_tail": output[-400:]}  # fmt: skip


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("Model name")), "")
    except (OSError, subprocess.CalledProcessError):
        model = ""
    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPUs, {platform.platform()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,20000", help="sample counts of the stores (default 2000,20000)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--image-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, help="default: enough to read the largest store once (+25%%)")
    p.add_argument("--buffer-mb", type=float, default=128.0, help="shuffle buffer (default 128 MiB)")
    p.add_argument("--workdir", type=Path, help="where the stores go (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "fastrm")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from xbench import provenance
    from xbench.fastrm.labelset import open_store, store_figures

    sizes = [int(x) for x in args.sizes.split(",")]
    steps = args.steps or int(1.25 * max(sizes) / args.batch_size) + 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fastrm-rss-"))
    runs = []
    try:
        for n in sizes:
            store = work / f"store-{n}"
            t0 = time.perf_counter()
            written = write_store(store, n, args.hidden, args.image_tokens)
            figures = store_figures(open_store(store))
            run = train_rss(store, work / f"proxy-{n}", steps, args.batch_size, args.buffer_mb)
            runs.append({**written, "write_seconds": time.perf_counter() - t0, "store": figures, **run})
            print(f"{n} samples: {written['bytes'] / 1e9:.2f} GB stored, peak RSS {run['peak_rss_kib'] / 2**10:.0f} MiB "
                  f"(polled {run['polled_vmhwm_kib'] and run['polled_vmhwm_kib'] / 2**10:.0f} MiB), {run['seconds']:.0f} s")  # fmt: skip
            shutil.rmtree(store)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    peaks = [r["peak_rss_kib"] for r in runs]
    ratio = max(peaks) / min(peaks)
    report = {
        "what": "peak RSS of `xbench fastrm train --store` on synthetic bf16 stores of different sizes",
        "machine": machine(),
        "hidden_size": args.hidden, "image_tokens": args.image_tokens, "answer_tokens": 1, "dtype": "bfloat16",
        "steps": steps, "batch_size": args.batch_size, "shuffle_buffer_mb": args.buffer_mb,
        "runs": runs, "peak_ratio": ratio, "acceptance": "peaks differ by <= 10%", "met": ratio <= 1.10,
        "environment": provenance.environment("cpu"), "finished": provenance.now(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store_rss.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"peak RSS ratio {ratio:.3f} (acceptance <= 1.10: {'met' if report['met'] else 'NOT met'}); "
          f"wrote {args.out / 'store_rss.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
