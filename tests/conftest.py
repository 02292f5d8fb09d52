"""Shared fixtures: the synthetic corpus, the packaged encoder, tiny random encoders, real data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

settings.register_profile("long", max_examples=2000)  # deeper fuzzing: pytest --hypothesis-profile=long


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (it lives in ../shared/data beside the project)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Run tiny models on one thread: faster for them, and far faster when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic DocRED-format corpus written by scripts/make_synthetic.py."""
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), "--out", str(out), "--seed", "0",
                    "--n_train", "40", "--n_dev", "16", "--n_test", "16"], check=True)
    return out


@pytest.fixture(scope="session")
def small_synthetic_dir(synthetic_dir, tmp_path_factory) -> Path:
    """8 training, 4 dev and 4 test documents of the synthetic corpus: enough for a run of a few steps."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("small-synthetic")
    shutil.copy(synthetic_dir / "rel_info.json", out)
    for name, n in (("train_annotated.json", 8), ("dev.json", 4), ("test.json", 4)):
        docs = json.loads((synthetic_dir / name).read_text(encoding="utf-8"))[:n]
        (out / name).write_text(json.dumps(docs), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged MiniLM encoder's folder."""
    from utils import default_encoder_path

    return default_encoder_path()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def _tiny_encoder_dir(tmp_path_factory, shape: str) -> str:
    from random_encoders import save_random_encoder

    return save_random_encoder(tmp_path_factory.mktemp(shape), shape, seed=0)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A folder with a tiny random BERT and its WordPiece tokenizer."""
    return _tiny_encoder_dir(tmp_path_factory, "tiny-bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> str:
    """A folder with a tiny random RoBERTa and its byte-level BPE tokenizer."""
    return _tiny_encoder_dir(tmp_path_factory, "tiny-roberta")


@pytest.fixture(scope="session")
def tiny_deberta_dir(tmp_path_factory) -> str:
    """A folder with a tiny random DeBERTa-v2 and its Unigram tokenizer."""
    return _tiny_encoder_dir(tmp_path_factory, "tiny-deberta")


@pytest.fixture(params=["tiny-bert", "tiny-roberta", "tiny-deberta"])
def tiny_encoder_dir(request) -> str:
    """Each tiny encoder folder in turn."""
    return request.getfixturevalue(request.param.replace("-", "_") + "_dir")
