"""Shared fixtures: the synthetic corpus, the packaged encoder, tiny random encoders, real data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (it lives in ../shared/data beside the project)")
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic DocRED-format corpus written by scripts/make_synthetic.py."""
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), "--out", str(out), "--seed", "0",
                    "--n_train", "40", "--n_dev", "16", "--n_test", "16"], check=True)
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
