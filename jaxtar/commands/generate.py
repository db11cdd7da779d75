"""``jaxtar generate``: a reply from a decoder port (KV cache, greedy or sampled).

Example:
    $ jaxtar generate smollm2 "What is the capital of France?"
    $ jaxtar generate runs/tar/model "hello" --temperature 0.7 --top-p 0.9 --seed 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxtar.commands._registry import subcommand


def _smollm2_path() -> Path:
    from jaxtar.models.offline import smollm2_gguf

    return smollm2_gguf()


def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="HF folder, Hub id, or .gguf file ('smollm2' = the offline SmolLM2 checkpoint)")
    p.add_argument("prompt", help="user message (sent through the chat template when the tokenizer has one)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


@subcommand("generate", "generate a reply with a decoder port (KV cache, greedy or sampled)", _configure_generate)
def run_generate(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxtar.models import from_pretrained, load_tokenizer
    from jaxtar.models.generate import generate

    source = _smollm2_path() if args.model == "smollm2" else args.model
    model, params = from_pretrained(source)
    tokenizer = load_tokenizer(source)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": args.prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(args.prompt)["input_ids"]
    ids = np.asarray(ids)[None]
    out = generate(model, params, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, key=jax.random.key(args.seed))  # fmt: skip
    print(tokenizer.decode(np.asarray(out)[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return 0
