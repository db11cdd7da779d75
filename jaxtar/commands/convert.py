"""``jaxtar convert``: load any supported checkpoint (HF folder, Hub id, GGUF) and write it as a plain HF folder.

Example:
    $ jaxtar convert model.gguf runs/model-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys

from jaxtar.commands._registry import subcommand


def _configure_convert(p: argparse.ArgumentParser) -> None:
    from jaxtar.config.flags import add_plain_flags
    from jaxtar.config.tools import ConvertConfig

    p.add_argument("source", help="HF folder, Hub id, .gguf file, 'smollm2' (offline SmolLM2) or 'toy'")
    p.add_argument("out", help="new folder for the Hugging Face checkpoint (must not exist or be empty)")
    add_plain_flags(p, {"conversion": ConvertConfig}, tag="convert")


@subcommand(
    "convert", "load any supported checkpoint into jaxtar and write it as a plain HF folder", _configure_convert
)
def run_convert(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxtar.config.sections import settings_from_flags
    from jaxtar.config.tools import ConvertConfig
    from jaxtar.models import from_pretrained, load_tokenizer, save_pretrained
    from jaxtar.models.hf_checks import check_export_dir
    from jaxtar.toy.named_models import resolve_model

    config = settings_from_flags(args, {"conversion": ConvertConfig}, "convert")["conversion"]
    check_export_dir(args.out)  # a bad OUT fails before a long load
    source = resolve_model(args.source)
    model, params = from_pretrained(source, dtype=getattr(jnp, config.dtype), allow_nonfinite=config.allow_nonfinite)
    try:
        tokenizer = load_tokenizer(source)
    except Exception as err:  # noqa: BLE001 - a checkpoint without a tokenizer still converts
        print(f"note: no tokenizer written ({type(err).__name__})", file=sys.stderr)
        tokenizer = None
    out = save_pretrained(model, params, args.out, tokenizer=tokenizer)
    print(f"wrote {out}")
    return 0
