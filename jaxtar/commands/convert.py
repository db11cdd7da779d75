"""``jaxtar convert``: load any supported checkpoint (HF folder, Hub id, GGUF) and write it as a plain HF folder.

Example:
    $ jaxtar convert model.gguf runs/model-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys

from jaxtar.commands._registry import subcommand


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="HF folder, Hub id or .gguf file")
    p.add_argument("out", help="new folder for the Hugging Face checkpoint (must not exist or be empty)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert weights holding NaN / inf (warns)")


@subcommand(
    "convert", "load any supported checkpoint into jaxtar and write it as a plain HF folder", _configure_convert
)
def run_convert(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxtar.models import from_pretrained, load_tokenizer, save_pretrained
    from jaxtar.models.hf_checks import check_export_dir

    check_export_dir(args.out)  # a bad OUT fails before a long load
    model, params = from_pretrained(args.source, dtype=getattr(jnp, args.dtype), allow_nonfinite=args.allow_nonfinite)
    try:
        tokenizer = load_tokenizer(args.source)
    except Exception as err:  # noqa: BLE001 - a checkpoint without a tokenizer still converts
        print(f"note: no tokenizer written ({type(err).__name__})", file=sys.stderr)
        tokenizer = None
    out = save_pretrained(model, params, args.out, tokenizer=tokenizer)
    print(f"wrote {out}")
    return 0
