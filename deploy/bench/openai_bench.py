#!/usr/bin/env python3
"""Load for sbserve's OpenAI HTTP API with Python's standard library only (for machines without
node; deploy/bench/openai_bench.mjs is the same load in JavaScript): C concurrent clients, each
running streaming /v1/completions back to back until R requests are done, over one asyncio loop
with raw HTTP/1.1 connections (chunked transfer, server-sent events). Prints TTFT, ITL and TPOT
percentiles and output tokens/s, for comparison with the gRPC door (`sbctl bench`).

  python3 deploy/bench/openai_bench.py --url http://127.0.0.1:8000 --concurrency 64 --requests 256 \
      --prompt-tokens 512 --max-tokens 128 [--vocab-lo 100 --vocab-hi 1000] [--json out.json]

Prompts are exact token-id lists (`prompt: [ids]`), so both doors see the same lengths. TTFT:
request sent -> first chunk with a token (counted by its `logprobs.tokens`, requested with logprobs 0,
since a token's text can be held back until its UTF-8 sequence completes). ITL: gaps between those
chunks, spread evenly over the tokens they carry (usage.completion_tokens from stream_options.include_usage). TPOT: per request,
(last chunk - first chunk) / (tokens - 1).
"""
import argparse
import asyncio
import json
import random
import sys
import time
from urllib.parse import urlparse


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


async def one(host, port, path, body):
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode()
    writer.write((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    start = time.perf_counter()
    await writer.drain()
    status = (await reader.readline()).decode()
    if " 200 " not in status:
        rest = await reader.read()
        writer.close()
        raise RuntimeError(f"{status.strip()} {rest[-300:]!r}")
    chunked = False
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break
        if line.lower().startswith("transfer-encoding:") and "chunked" in line.lower():
            chunked = True
    times, usage, buf = [], None, b""

    def events(raw):
        nonlocal usage
        for ev in raw.split(b"\n\n")[:-1]:
            for ln in ev.split(b"\n"):
                if not ln.startswith(b"data: ") or ln == b"data: [DONE]":
                    continue
                obj = json.loads(ln[6:])
                if obj.get("usage"):
                    usage = obj["usage"]
                for ch in obj.get("choices", []):
                    # Tokens by their logprobs entries: a chunk can carry tokens whose text is
                    # still held back (an incomplete UTF-8 sequence), which text alone would hide.
                    lp = ch.get("logprobs") or {}
                    n = len(lp.get("tokens") or []) or (1 if ch.get("text") else 0)
                    if n:
                        times.append(time.perf_counter())

    while True:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            piece = await reader.readexactly(size)
            await reader.readline()
        else:
            piece = await reader.read(65536)
            if not piece:
                break
        buf += piece
        cut = buf.rfind(b"\n\n")
        if cut >= 0:
            events(buf[:cut + 2])
            buf = buf[cut + 2:]
    writer.close()
    tokens = usage["completion_tokens"] if usage else len(times)
    return start, times, tokens, usage["prompt_tokens"] if usage else 0


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--vocab-lo", type=int, default=100)
    ap.add_argument("--vocab-hi", type=int, default=1000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    requests = a.requests or a.concurrency * 8
    u = urlparse(a.url)
    rng = random.Random(a.seed)
    prompts = [[rng.randrange(a.vocab_lo, a.vocab_hi) for _ in range(a.prompt_tokens)] for _ in range(requests)]
    queue = list(range(requests))
    ttft, itl, tpot, prompt_tokens, failed = [], [], [], [], []
    total_tokens = 0

    async def client():
        nonlocal total_tokens
        while queue:
            i = queue.pop()
            body = {"prompt": prompts[i], "max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True,
                    "skip_special_tokens": False, "logprobs": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            if a.model:
                body["model"] = a.model
            try:
                start, times, tokens, ptok = await one(u.hostname, u.port or 80, "/v1/completions", body)
            except Exception as e:  # noqa: BLE001 - reported, counted
                failed.append(str(e))
                continue
            if not times:
                failed.append("no text")
                continue
            ttft.append((times[0] - start) * 1e3)
            per_gap = (tokens - 1) / max(1, len(times) - 1) if tokens > 1 else 1
            for x, y in zip(times, times[1:]):
                itl.extend([(y - x) * 1e3 / per_gap] * max(1, round(per_gap)))
            if tokens > 1:
                tpot.append((times[-1] - times[0]) * 1e3 / (tokens - 1))
            prompt_tokens.append(ptok)
            total_tokens += tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(a.concurrency)))
    wall = time.perf_counter() - t0
    res = {
        "requests": requests, "ok": len(ttft), "failed": len(failed), "concurrency": a.concurrency,
        "wall_s": wall, "output_tokens": total_tokens, "output_tokens_per_s": total_tokens / wall,
        "mean_prompt_tokens": sum(prompt_tokens) / max(1, len(prompt_tokens)),
        "ttft_ms": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99)},
        "itl_ms": {"p50": pct(itl, 50), "p90": pct(itl, 90), "p99": pct(itl, 99)},
        "tpot_ms": {"p50": pct(tpot, 50), "p99": pct(tpot, 99)},
        "first_error": failed[0] if failed else "",
        "ttft_each_ms": [round(x, 3) for x in ttft],  # in completion order
    }
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
