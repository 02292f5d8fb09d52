"""The encoder of a trained DocRED model folder as a plain transformers folder, to start another task from it.

python studies/cdr-sample/docred_encoder.py --model RUN/model --out /tmp/cdr-sample/docred-encoder
"""
import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

PREFIX = "encoder."  # the model's encoder submodule; every other tensor is the relation head's


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model folder (model.safetensors, config.json, tokenizer)")
    p.add_argument("--out", required=True, help="the folder to write (config.json, model.safetensors, tokenizer)")
    a = p.parse_args()
    src, out = Path(a.model), Path(a.out)
    config = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    encoder = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    if not encoder:
        raise SystemExit(f"{src / 'model.safetensors'}: no tensor named {PREFIX}*")
    out.mkdir(parents=True, exist_ok=True)
    save_file(encoder, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config["encoder"]["config"], indent=1) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    print(f"{out}: {len(encoder)} encoder tensors of {len(tensors)}")


if __name__ == "__main__":
    main()
