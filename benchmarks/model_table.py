"""The README's model table: every family with parameters per size, forward GFLOPs at 128^3 and its source.

    python benchmarks/model_table.py            # print the table
    python benchmarks/model_table.py --write    # replace the table between the README markers

Parameters come from the registry metadata (``tests/test_registry.py`` checks them against the built
models, ``tests/test_model_table.py`` checks the README against the metadata). FLOPs are counted with
torch's FlopCounterMode at batch 1 on 128^3 (2D models: 128^2), on the meta device where possible.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics.efficiency import count_flops  # noqa: E402
import engine.tasks  # noqa: E402,F401  (sets create_model's default out_channels per model kind)
from models import create_model, list_models, model_info  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
SIZES = ("xs", "s", "m", "l")
SIZE_RE = re.compile(r"^(?P<family>.+)_(?P<size>xs|s|m|l)$")


def families() -> "OrderedDict[str, dict[str, str]]":
    """family label -> {size or '-': registry name}, in registry order."""
    out: OrderedDict[str, dict[str, str]] = OrderedDict()
    for name in list_models():
        match = SIZE_RE.match(name)
        family, size = (match["family"], match["size"]) if match else (name, "-")
        out.setdefault(family, {})[size] = name
    return out


def format_params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def gflops_128(name: str) -> str:
    info = model_info(name)
    size = (128,) * info.spatial_dims
    kwargs = {"img_size": size} if info.needs_fixed_input else {}
    try:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
        flops = count_flops(model, (1, info.in_channels, *size), device="meta")["flops_torch"]
    except (RuntimeError, NotImplementedError):
        model = create_model(name, **kwargs)
        try:
            flops = count_flops(model.to("meta"), (1, info.in_channels, *size), device="meta")["flops_torch"]
        except (RuntimeError, NotImplementedError):  # data-dependent control flow (DetSeg3D: RoIs per scan)
            return "data-dependent"
    return f"{flops / 1e9:,.0f}"


def render(with_flops: bool = True) -> str:
    lines = ["| family | xs | s | m | l | single size | GFLOPs at 128^3 (xs / s / m / l) | source |",
             "|---|---|---|---|---|---|---|---|"]
    for family, members in families().items():
        params = [format_params(model_info(members[s]).num_params) if s in members else "" for s in SIZES]
        single = format_params(model_info(members["-"]).num_params) if "-" in members else ""
        ordered = [members[s] for s in (*SIZES, "-") if s in members]
        flops = " / ".join(gflops_128(n) for n in ordered) if with_flops else ""
        paper = model_info(next(iter(members.values()))).paper.replace("|", "/")
        lines.append(f"| `{family}` | " + " | ".join(params) + f" | {single} | {flops} | {paper} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    table = render()
    if not args.write:
        print(table)
        return 0
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{README} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
