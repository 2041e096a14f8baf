"""Latency of the service for one 1024x1024 PNG upload -> JSON, on loopback, with a bounded load generator.

Usage::

    python benchmarks/serve_latency.py --run runs/train/resnet18 --requests 500 --clients 1 8

For each backend (PyTorch eager, ONNX Runtime), with and without Grad-CAM, and each number of concurrent
clients, it starts ``pneumolab serve`` in its own process on 127.0.0.1, sends ``--requests`` requests
(split over the clients, each client sequential), and reports p50/p95/p99 latency, requests/s and the
server's resident memory before and after. Only loopback traffic; every loop is bounded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pneumolab.data import sample_root


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload() -> bytes:
    """A real sample X-ray upscaled to 1024x1024, as an 8-bit PNG."""
    src = sorted((sample_root() / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    buf = io.BytesIO()
    Image.open(src).convert("L").resize((1024, 1024), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of the server and its worker processes (``--workers N`` forks N children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(c) for c in children.read_text().split()] if children.is_file() else []
    return _rss_mb(pid) + sum(_tree_rss_mb(k) for k in kids)


def run_config(
    model: Path, backend: str, gradcam: bool, clients: int, requests: int, data: bytes, workers: int = 1
) -> dict:
    port = _port()
    cmd = [
        sys.executable,
        "-m",
        "pneumolab",
        "serve",
        str(model),
        "--port",
        str(port),
        "--backend",
        backend,
        "--workers",
        str(workers),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # up to 60 s to start
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        params = {"gradcam": "true"} if gradcam else {}
        with httpx.Client(timeout=60) as c:  # warm-up
            for _ in range(5):
                c.post(f"{url}/api/v1/predict", files={"file": ("x.png", data)}, params=params).raise_for_status()
        rss_before = _tree_rss_mb(server.pid)

        def client(n: int) -> list[float]:
            out = []
            with httpx.Client(timeout=60) as c:
                for _ in range(n):
                    t = time.perf_counter()
                    c.post(f"{url}/api/v1/predict", files={"file": ("x.png", data)}, params=params).raise_for_status()
                    out.append((time.perf_counter() - t) * 1e3)
            return out

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            lat = np.concatenate(list(pool.map(client, [requests // clients] * clients)))
        wall = time.perf_counter() - start
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {
            "backend": backend,
            "workers": workers,
            "gradcam": gradcam,
            "clients": clients,
            "requests": len(lat),
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "p99_ms": round(p99, 1),
            "req_per_s": round(len(lat) / wall, 1),
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_after": round(_tree_rss_mb(server.pid), 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="run folder with model.pt (and model.onnx for onnx)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--gradcam", choices=["both", "on", "off"], default="both")
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="server processes (pneumolab serve --workers)")
    args = ap.parse_args()
    data = _upload()
    for workers in args.workers:
        for backend in args.backends:
            for gradcam in {"both": (False, True), "on": (True,), "off": (False,)}[args.gradcam]:
                for clients in args.clients:
                    row = run_config(args.run, backend, gradcam, clients, args.requests, data, workers)
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
