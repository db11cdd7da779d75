"""``jaxtar generate``: a reply from a decoder port (KV cache, greedy or sampled).

Example:
    $ jaxtar generate smollm2 "What is the capital of France?"
    $ jaxtar generate runs/tar/model "hello" --temperature 0.7 --top-p 0.9 --seed 1
"""

from __future__ import annotations

import argparse

from jaxtar.commands._registry import subcommand


def _configure_generate(p: argparse.ArgumentParser) -> None:
    from jaxtar.config.flags import add_plain_flags
    from jaxtar.config.tools import GenerateConfig

    p.add_argument("model", help="HF folder, Hub id, .gguf file, 'smollm2' (offline SmolLM2) or 'toy'")
    p.add_argument("prompt", help="user message (sent through the chat template when the tokenizer has one)")
    add_plain_flags(p, {"generation": GenerateConfig}, tag="gen")


@subcommand("generate", "generate a reply with a decoder port (KV cache, greedy or sampled)", _configure_generate)
def run_generate(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxtar.config.sections import settings_from_flags
    from jaxtar.config.tools import GenerateConfig
    from jaxtar.models import from_pretrained, load_tokenizer
    from jaxtar.models.generate import generate
    from jaxtar.toy.named_models import resolve_model

    config = settings_from_flags(args, {"generation": GenerateConfig}, "gen")["generation"]
    source = resolve_model(args.model)
    model, params = from_pretrained(source)
    tokenizer = load_tokenizer(source)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": args.prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(args.prompt)["input_ids"]
    ids = np.asarray(ids)[None]
    out = generate(model, params, ids, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                   top_p=config.top_p, key=jax.random.key(config.seed))  # fmt: skip
    print(tokenizer.decode(np.asarray(out)[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return 0
