"""Sampling throughput: `tether sample` (store and bookkeeping included) against a plain
`model.generate` loop, on the same model, prompts and settings, in one run.

    python bench/sample.py [--prompts 16 --k 4 --max-new-tokens 64 --batch-size 16 --repeats 3]

Both sides get the already loaded model (load time excluded on both). New tokens are counted the
same way on both sides: every generated token up to and including the first EOS. The runs alternate
(plain, tether, plain, tether, ...) so drift in machine speed hits both; the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

from tether import models  # noqa: E402
from tether.config import SampleConfig  # noqa: E402
from tether.data.io import import_prompts  # noqa: E402
from tether.recipes import sample as recipe  # noqa: E402
from tether.workspace import init_workspace  # noqa: E402


def plain_generate(model, tok, prompts, k, args) -> tuple[int, float]:
    """What a user writes without tether: chat template, left-padded batches, model.generate."""
    tok.padding_side = "left"
    cfg = GenerationConfig(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=None,
                           max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    per_batch = max(1, args.batch_size // k)  # prompts per batch; each returns k sequences
    new_tokens = 0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), per_batch):
            texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True) for p in prompts[i:i + per_batch]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, generation_config=cfg, num_return_sequences=k)
            gen = out[:, enc.input_ids.shape[1]:]
            for row in gen.tolist():
                end = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
                new_tokens += end
            _ = tok.batch_decode(gen, skip_special_tokens=True)
    return new_tokens, time.perf_counter() - t0


def tether_sample(model, tok, prompts, k, args, root: Path, rep: int) -> tuple[int, float]:
    """`tether sample` as the CLI runs it, into a fresh SQLite workspace."""
    ws = init_workspace(root / f"ws-{rep}", policy=args.model)
    (root / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    import_prompts(ws.store(), root / "p.jsonl")
    ws.config.threads = args.threads
    cfg = SampleConfig(k=k, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, seed=0)
    t0 = time.perf_counter()
    res = recipe.run(ws, cfg, model=model, tokenizer=tok, show_progress=False)
    return res.new_tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = [json.loads(r)["prompt"] for r in (files("tether") / "assets" / "prompts.jsonl").read_text().splitlines()]
    prompts = (rows * (args.prompts // len(rows) + 1))[:args.prompts]
    model, tok = models.load_policy(args.model)
    print(f"model={args.model} prompts={len(prompts)} k={args.k} max_new_tokens={args.max_new_tokens} "
          f"batch={args.batch_size} temperature={args.temperature} threads={args.threads} "
          f"torch={torch.__version__}", flush=True)
    plain_generate(model, tok, prompts[: max(1, args.batch_size // args.k)], args.k, args)  # warm-up
    results = {"plain": [], "tether": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for side in ("plain", "tether"):
                if side == "plain":
                    n, s = plain_generate(model, tok, prompts, args.k, args)
                else:
                    n, s = tether_sample(model, tok, prompts, args.k, args, Path(tmp), rep)
                results[side].append(n / s)
                print(f"  run {rep + 1} {side:>6}: {n} new tokens in {s:.1f} s = {n / s:.1f} tokens/s", flush=True)
    med = {side: statistics.median(v) for side, v in results.items()}
    ratio = med["tether"] / med["plain"]
    print(f"median tokens/s: tether {med['tether']:.1f}, plain generate {med['plain']:.1f}; "
          f"ratio tether/plain = {ratio:.2f} (goal >= 1.0)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "tokens_per_s": results,
                                         "median": med, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
