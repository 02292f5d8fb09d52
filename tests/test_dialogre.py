"""DialogRE: BERT_s inputs, the reference F1 and F1c on hand-built dialogues, decision rules, end-to-end runs."""
import collections
import json
import re
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

import dialogre
import losses
from baselines import dialogre_baselines
from conftest import shared_file
from model import ClsClassifier
from utils import UserError

TURNS = ["Speaker 1: Hi Joey!",
         "Speaker 2: Hey. This is my sister Mary.",
         "Speaker 1: Nice to meet you, Mary.",
         "Speaker 2: We are roommates now."]
INSTANCES = [  # A: two relations, one without a trigger; B: the trigger appears only in the last turn; C: none
    {"x": "Speaker 2", "y": "Mary", "rid": [5, 7], "r": ["a", "b"], "t": ["sister", ""], "x_type": "PER",
     "y_type": "PER"},
    {"x": "Speaker 1", "y": "Speaker 2", "rid": [9], "r": ["c"], "t": ["roommates"], "x_type": "PER",
     "y_type": "PER"},
    {"x": "Speaker 1", "y": "Joey", "rid": [37], "r": ["unanswerable"], "t": [""], "x_type": "PER",
     "y_type": "PER"},
]
# predicted relation ids of each instance at prefixes 1..4
PREFIX_PREDS = [[[5], [5, 7], [12], [5, 7]],
                [[9], [9], [37], [9, 3]],
                [[37], [4], [37], [37]]]


def multi_hot(rows):
    out = np.zeros((len(rows), dialogre.NUM_CLASS), dtype=bool)
    for i, rids in enumerate(rows):
        out[i, [dialogre.RID2COL[r] for r in rids]] = True
    return out


def write_dialogre(path, dialogues):
    path.write_text(json.dumps(dialogues))
    return str(path)


# ----------------------------------------------------------------------------- metrics
def test_f1_leaves_unanswerable_out_of_predictions_and_gold():
    gold = multi_hot([[1, 2], [37], [3]])
    scores = dialogre.f1_score(multi_hot([[1], [5], [37]]), gold)
    assert scores["precision"] == pytest.approx(50.0)  # 1 of the predictions {1, 5} is right
    assert scores["recall"] == pytest.approx(100 / 3)  # 1 of the gold {1, 2, 3} is found
    assert scores["f1"] == pytest.approx(40.0)
    nothing = dialogre.f1_score(multi_hot([[37], [37], [37]]), gold)
    assert (nothing["precision"], nothing["recall"], nothing["f1"]) == (100.0, 0.0, 0.0)


def test_visibility_needs_both_arguments_and_the_gold_trigger():
    vis = [dialogre.visibility(TURNS, inst) for inst in INSTANCES]
    assert vis[0][:, 5].tolist() == [False, True, True, True]  # trigger "sister" with Mary in turn 2
    assert vis[0][:, 7].tolist() == [False, False, False, True]  # no trigger: only at the last turn
    assert vis[0][:, 12].tolist() == [False, True, True, True]  # not gold: once both arguments appeared
    assert vis[1][:, 9].tolist() == [False, False, False, True]  # trigger "roommates" only in the last turn
    assert vis[1][:, 4].tolist() == [False, True, True, True]
    assert vis[2][:, 4].tolist() == [True, True, True, True]  # "joey" and "speaker 1" are in turn 1
    assert not any(v[:, 0].any() for v in vis)  # unanswerable never counts


def test_f1c_on_hand_built_dialogue():
    visible = np.concatenate([dialogre.visibility(TURNS, inst) for inst in INSTANCES])
    pred = multi_hot([p for preds in PREFIX_PREDS for p in preds])
    instance = np.repeat(np.arange(3), len(TURNS))
    scores = dialogre.f1c_score(pred, multi_hot([i["rid"] for i in INSTANCES]), instance, visible)
    # A: correct 3, predicted 4, gold 4; B: 1, 2, 1; C: 0, 1, 0 -> P = (3/4 + 1/2 + 0)/3, R = (3/4 + 1 + 0)/3
    p, r = (0.75 + 0.5) / 3, 1.75 / 3
    assert scores["precision"] == pytest.approx(100 * p)
    assert scores["recall"] == pytest.approx(100 * r)
    assert scores["f1"] == pytest.approx(100 * 2 * p * r / (p + r))  # 48.61
    last = dialogre.f1_score(multi_hot([preds[-1] for preds in PREFIX_PREDS]), multi_hot([i["rid"] for i in INSTANCES]))
    assert last["f1"] == pytest.approx(100 * 2 * 0.75 / 1.75)  # plain F1 of the full dialogues: P 3/4, R 1


def test_reference_rule_and_its_tuning():
    probs = torch.zeros(3, 36)
    probs[0, [0, 1]] = torch.tensor([0.6, 0.7])  # two above t1
    probs[1, [0, 1]] = torch.tensor([0.3, 0.45])  # none above t1, arg-max above t2
    probs[2, [0, 1, 2]] = torch.tensor([0.2, 0.3, 0.35])  # arg-max below t2: unanswerable
    pred = dialogre.dialogre_rule(probs, 0.5, 0.4)
    assert dialogre.rids_of(pred) == [[1, 2], [2], [37]]
    assert pred[2, 0] == 1 and pred[0, 0] == 0

    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((40, 36)) ** 4).float()
    gold = multi_hot([[int(rng.integers(1, 38))] for _ in range(40)])
    t1, t2, f1 = dialogre.tune_dialogre_rule(probs, gold, losses.THRESHOLD_GRID)
    brute = {(a, b): dialogre.f1_score(dialogre.dialogre_rule(probs, a, b).numpy(), gold)["f1"]
             for a in losses.THRESHOLD_GRID for b in dialogre.T2_GRID}
    assert f1 == pytest.approx(max(brute.values()))
    assert brute[(t1, t2)] == pytest.approx(f1)


# ----------------------------------------------------------------------------- inputs
def test_speakers_become_markers_and_arguments_survive_truncation(minilm_tokenizer):
    markers, added = dialogre.speaker_marker_ids(minilm_tokenizer)
    assert not added and minilm_tokenizer.convert_ids_to_tokens(list(markers)) == ["[unused1]", "[unused2]"]
    enc = dialogre.DialogREEncoder(minilm_tokenizer, markers, max_seq_length=512)
    turns = ["Speaker 1: Hi", "Speaker 2, Speaker 10: yo Speaker 1"]
    inst = {"x": "Speaker 1", "y": "Speaker 10", "rid": [37], "x_type": "PER", "y_type": "PER"}
    roles = dialogre.speaker_roles(inst["x"], inst["y"])
    dialogue = np.concatenate(enc.turn_ids(enc.dialogue_pieces(turns), roles))
    x, y = enc.argument_ids(inst, roles)
    feat = enc.assemble(dialogue, x, y, "test")
    tokens = minilm_tokenizer.convert_ids_to_tokens(feat["input_ids"].tolist())
    assert " ".join(tokens) == ("[CLS] [unused1] : hi speaker 2 , [unused2] : yo [unused1] [SEP] "
                                "[unused1] per [SEP] [unused2] per [SEP]")
    assert feat["n_first"] == tokens.index("[SEP]") + 1

    short = dialogre.DialogREEncoder(minilm_tokenizer, markers, max_seq_length=10, entity_types=False)
    feat = short.assemble(dialogue, *short.argument_ids(inst, roles), "test")
    tokens = minilm_tokenizer.convert_ids_to_tokens(feat["input_ids"].tolist())
    assert tokens == ["[CLS]", "[unused1]", ":", "hi", "speaker", "[SEP]", "[unused1]", "[SEP]", "[unused2]", "[SEP]"]
    assert feat["n_truncated"] == len(dialogue) - 4
    with pytest.raises(ValueError, match="do not fit"):
        dialogre.DialogREEncoder(minilm_tokenizer, markers, max_seq_length=5).assemble(dialogue, x, y, "doc 0")


def test_other_tokenizers_get_added_marker_tokens(tiny_roberta_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    size = len(tok)
    markers, added = dialogre.speaker_marker_ids(tok)
    assert added and min(markers) >= size and tok.convert_ids_to_tokens(list(markers)) == ["[S1]", "[S2]"]
    assert dialogre.speaker_marker_ids(tok) == (markers, False)  # idempotent
    assert tok.tokenize("[S1] : hi")[0] == "[S1]"
    encoder = AutoModel.from_pretrained(tiny_roberta_dir)
    encoder.resize_token_embeddings(len(tok))
    model = ClsClassifier(encoder, dialogre.NUM_CLASS, 0.1)  # the task's head
    ids = torch.tensor([[tok.cls_token_id, markers[0], markers[1], tok.sep_token_id]])
    assert model(ids, torch.ones_like(ids), torch.zeros_like(ids)).shape == (1, 37)


def test_collate_puts_unanswerable_in_column_zero_and_arguments_in_segment_one(tmp_path, minilm_tokenizer):
    path = write_dialogre(tmp_path / "d.json", [[TURNS, INSTANCES]])
    enc = dialogre.DialogREEncoder(minilm_tokenizer, dialogre.speaker_marker_ids(minilm_tokenizer)[0])
    split = dialogre.build_split(path, enc, with_prefixes=True)
    batch = dialogre.DialogRECollator()(split.features)
    assert batch["labels"].shape == (3, 37)
    assert batch["labels"][0].nonzero().flatten().tolist() == [5, 7]
    assert batch["labels"][2].nonzero().flatten().tolist() == [0]
    assert (batch["labels"].numpy() > 0).tolist() == split.gold.tolist()
    assert batch["attention_mask"].sum(1).tolist() == [len(f["input_ids"]) for f in split.features]
    n_args = (batch["token_type_ids"] == 1).sum(1)
    assert n_args.tolist() == [len(f["input_ids"]) - f["n_first"] for f in split.features]
    pre = split.prefixes
    assert len(pre.source) == 3 * len(TURNS) and pre.instance.tolist() == np.repeat(np.arange(3), 4).tolist()
    assert pre.features[pre.source[-1]]["input_ids"].tolist() == split.features[-1]["input_ids"].tolist()


def test_prefixes_past_the_truncation_point_share_one_input(tmp_path, minilm_tokenizer):
    path = write_dialogre(tmp_path / "d.json", [[TURNS, INSTANCES[:1]]])
    enc = dialogre.DialogREEncoder(minilm_tokenizer, dialogre.speaker_marker_ids(minilm_tokenizer)[0],
                                   max_seq_length=30)
    pre = dialogre.build_split(path, enc, with_prefixes=True).prefixes
    # turns of 6, 10, 10, 7 tokens and room for 30 - 4 - 4 = 22: the budget is filled from turn 3 on
    assert pre.source.tolist() == [0, 1, 2, 2]
    assert [len(f["input_ids"]) for f in pre.features] == [14, 24, 30]


def test_bad_input_names_file_dialogue_and_field(tmp_path):
    bad = [[TURNS, [dict(INSTANCES[0], rid=[5, 37])]]]
    with pytest.raises(ValueError, match=r"d\.json: dialogue 0 .*instance 0: field 'rid' mixes"):
        dialogre.load_dialogre(write_dialogre(tmp_path / "d.json", bad))
    bad = [[TURNS, [dict(INSTANCES[0], t=["sister"])]]]
    with pytest.raises(ValueError, match="field 't'"):
        dialogre.load_dialogre(write_dialogre(tmp_path / "d.json", bad))
    with pytest.raises(ValueError, match="field 'rid'"):
        dialogre.load_dialogre(write_dialogre(tmp_path / "d.json", [[TURNS, [dict(INSTANCES[0], rid=[38])]]]))


@pytest.mark.parametrize("key, value, found", [
    ("x", 5, "int 5"), ("y", "", "str ''"), ("x_type", 5, "int 5"), ("y_type", ["PER"], "list ['PER']"),
    ("x_type", None, "nothing"), ("r", "per:sibling", "str 'per:sibling'"), ("r", ["a", 3], "int 3 (item 1)"),
    ("t", [7], "int 7 (item 0)"), ("t", "sister", "str 'sister'"), ("rid", [True], "bool True (item 0)"),
    ("rid", [9.0], "float 9.0 (item 0)"), ("rid", 9, "int 9"),
])
def test_wrong_field_types_name_file_dialogue_instance_field_and_type(tmp_path, key, value, found):
    bad = [[TURNS, INSTANCES[1:]], [TURNS, [INSTANCES[1], dict(INSTANCES[1], **{key: value})]]]
    with pytest.raises(UserError) as err:
        dialogre.load_dialogre(write_dialogre(tmp_path / "d.json", bad))
    assert re.fullmatch(rf".*d\.json: dialogue 1 \(.*\), instance 1: field '{key}' must be .*, got {re.escape(found)}",
                        str(err.value))


# ----------------------------------------------------------------------------- end to end
def small_corpus(tmp_path):
    """Hand-built train/dev/test files (the same dialogues, which is enough for a smoke run)."""
    dialogues = [[TURNS, INSTANCES], [TURNS[:2], INSTANCES[2:]]]
    for name in ("train", "dev", "test"):
        write_dialogre(tmp_path / f"{name}.json", dialogues)
    return tmp_path


def run_args(data_dir, model_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--output_dir", str(out),
            "--max_seq_length", "64", "--train_batch_size", "2", "--no_progress", "--logging_steps", "1",
            *map(str, extra)]


def test_run_writes_predictions_and_test_mode_reproduces_them(tmp_path, tiny_bert_dir):
    data = small_corpus(tmp_path)
    out = tmp_path / "run"
    scores = dialogre.main(run_args(data, tiny_bert_dir, out, "--loss", "bce", "--max_steps", "2"))
    assert {"dev_f1", "dev_f1c", "test_f1", "test_f1c"} <= set(scores)
    assert json.loads((out / "scores.json").read_text()) == scores
    dev_pred = json.loads((out / "dev_pred.json").read_text())
    assert len(dev_pred) == 4 and all(p and all(1 <= r <= 37 for r in p) for p in dev_pred)
    f1c = json.loads((out / "dev_pred_f1c.json").read_text())
    assert [len(p) for p in f1c] == [4, 4, 4, 2]  # one prediction per dialogue prefix
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["rid2col"][37] == 0 and ckpt["meta"]["rid2col"][5] == 5
    assert set(ckpt["decision"]["params"]) == {"t1", "t2"}

    again = tmp_path / "test-mode"  # without --max_seq_length: the model's 64 (the default 512 was read)
    argv = [a for a in run_args(data, tiny_bert_dir, again, "--loss", "bce", "--load_path", out / "best.pt")
            if a not in ("--max_seq_length", "64")]
    assert dialogre.main(argv) == pytest.approx(scores)
    assert json.loads((again / "args.json").read_text())["max_seq_length"] == 64
    assert json.loads((again / "test_pred_f1c.json").read_text()) == json.loads((out / "test_pred_f1c.json").read_text())

    # every instance at sigma = 0.6 for column 1, 0.8 for column 2, 0.3 elsewhere, and the rule saved at
    # (t1, t2) = (0.7, 0.75): test mode must predict column 2 alone (the default (0.5, 0.4) or the global
    # threshold 0.5 would add column 1)
    bias = torch.full_like(ckpt["model"]["classifier.bias"], float(torch.logit(torch.tensor(0.3))))
    bias[1], bias[2] = torch.logit(torch.tensor(0.6)), torch.logit(torch.tensor(0.8))
    ckpt["model"]["classifier.weight"].zero_()
    ckpt["model"]["classifier.bias"] = bias
    ckpt["decision"].update(threshold=0.5, params={"t1": 0.7, "t2": 0.75})
    torch.save(ckpt, out / "best.pt")
    fixed = tmp_path / "fixed"
    scores = dialogre.main(run_args(data, tiny_bert_dir, fixed, "--load_path", out / "best.pt"))
    assert (scores["t1"], scores["t2"]) == (0.7, 0.75)
    only = [dialogre.COL2RID[2]]
    assert json.loads((fixed / "dev_pred.json").read_text()) == [only] * 4
    assert json.loads((fixed / "test_pred_f1c.json").read_text()) == [[only] * 4] * 3 + [[only] * 2]


def test_prior_start_sets_the_classifier_bias_to_the_training_relation_rates(tmp_path, tiny_bert_dir):
    data = small_corpus(tmp_path)
    out = tmp_path / "prior"
    dialogre.main(run_args(data, tiny_bert_dir, out, "--loss", "bce", "--max_steps", "1", "--no_f1c",
                           "--learning_rate", "0", "--classifier_lr", "0", "--init_none_prior"))
    gold = torch.from_numpy(dialogre.gold_matrix(dialogre.load_dialogre(str(data / "train.json"))))  # [4, 37]
    rates = losses.positive_rates(gold.sum(0), len(gold))
    bias = torch.load(out / "best.pt", map_location="cpu", weights_only=False)["model"]["classifier.bias"]
    assert bias[0] == 0 and torch.allclose(bias[1:], torch.logit(rates[1:]).float(), atol=1e-6)  # lr 0: unchanged
    assert bias[5] > bias[1]  # relation 5 is in the training gold, relation 1 is not


def test_checkpoint_of_another_encoder_is_refused(tmp_path, tiny_bert_dir, tiny_roberta_dir):
    data = small_corpus(tmp_path)
    dialogre.main(run_args(data, tiny_bert_dir, tmp_path / "run", "--max_steps", "1", "--no_f1c"))
    with pytest.raises(UserError, match="encoder"):
        dialogre.main(run_args(data, tiny_roberta_dir, tmp_path / "x", "--load_path", tmp_path / "run" / "best.pt"))


EMPTY = {"no dialogues": [], "no instances": [[TURNS, []], [TURNS[:2], []]]}


@pytest.mark.parametrize("split", ["train", "dev", "test"])
@pytest.mark.parametrize("content", EMPTY)
def test_split_without_instances_is_refused_before_the_run_directory(tmp_path, tiny_bert_dir, split, content):
    data = small_corpus(tmp_path)
    write_dialogre(data / f"{split}.json", EMPTY[content])
    purpose = "to train on" if split == "train" else "to score"
    with pytest.raises(UserError, match=rf"^--{split}_file .*{split}\.json: no instances {purpose}$"):
        dialogre.main(run_args(data, tiny_bert_dir, tmp_path / "run", "--max_steps", "1"))
    assert not (tmp_path / "run").exists()


def test_test_mode_refuses_an_empty_split(tmp_path, tiny_bert_dir):
    data = small_corpus(tmp_path)
    dialogre.main(run_args(data, tiny_bert_dir, tmp_path / "run", "--max_steps", "1", "--no_f1c"))
    write_dialogre(data / "test.json", EMPTY["no instances"])
    with pytest.raises(UserError, match=r"test\.json: no instances to score"):
        dialogre.main(run_args(data, tiny_bert_dir, tmp_path / "x", "--load_path", tmp_path / "run" / "best.pt"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match=r"test\.json: no instances to score in its first 1 dialogues \(--test_limit\)"):
        dialogre.main(run_args(data, tiny_bert_dir, tmp_path / "x", "--load_path", tmp_path / "run" / "best.pt",
                               "--test_limit", "1"))


# ----------------------------------------------------------------------------- real data
def test_real_dialogue_speaker_substitution(minilm_tokenizer):
    data = dialogre.load_dialogre(str(shared_file("dialogre", "dev.json")), limit=20)
    markers = dialogre.speaker_marker_ids(minilm_tokenizer)[0]
    turns, inst = next((t, i) for t, ins in data for i in ins
                       if dialogre.speaker_number(i["x"]) and dialogre.speaker_number(i["y"]))
    nx, ny = dialogre.speaker_number(inst["x"]), dialogre.speaker_number(inst["y"])
    mentions = collections.Counter(int(n) for t in turns for n in re.findall(r"Speaker (\d+)", t))
    for length in (4096, 64):  # the first keeps the whole dialogue (no encoder runs here)
        enc = dialogre.DialogREEncoder(minilm_tokenizer, markers, max_seq_length=length)
        roles = dialogre.speaker_roles(inst["x"], inst["y"])
        feat = enc.assemble(np.concatenate(enc.turn_ids(enc.dialogue_pieces(turns), roles)),
                            *enc.argument_ids(inst, roles), "dev")
        ids = feat["input_ids"].tolist()
        assert len(ids) <= length
        assert ids[feat["n_first"] - 1:] == [enc.sep, markers[0], *enc.tokenize(["PER"])[0], enc.sep, markers[1],
                                             *enc.tokenize(["PER"])[0], enc.sep]  # the arguments always fit
        if length == 4096:
            assert feat["n_truncated"] == 0
            dialogue = ids[1:feat["n_first"] - 1]
            assert dialogue.count(markers[0]) == mentions[nx] and dialogue.count(markers[1]) == mentions[ny]
            text = minilm_tokenizer.decode(dialogue)
            assert not re.search(rf"speaker {nx}\b|speaker {ny}\b", text)
    assert feat["n_truncated"] > 0


# BCE from the prior start (--init_none_prior), 2 epochs on 160 training dialogues at 128 tokens, scored on 120 dev
# and 120 test dialogues (on 30, too few, seed 0's test F1 was 27.0 against the type-pair majority's 27.6; 32.4
# against 25.8 on 120). It must beat every baseline that reads only the argument types (global and per-(x type,
# y type): majority relation, and frequency prior at its best threshold on the split; 30.69 dev / 27.61 test).
# Measured dev / test F1 (seeds 0 / 1 / 2): 37.84 / 33.75, 39.75 / 33.27, 40.14 / 34.39; 344-510 s per run at load
# 7-10 on the 2 shared cores. The same run with every word of the dialogue replaced by "the" and each non-speaker
# argument by its type (speakers, turn lengths and types kept): 35.31 / 28.64, under both bars (35.69 / 31.11).
# Not beaten: the baselines that also know whether x and y are speakers, which the input's speaker markers show
# without any word (type_pair_speakers_*: 38.01 dev / 33.73 test); the model only matches them at this budget.
LEARNING_BAR = {"dev": 5.0, "test": 3.5}  # over the best type-only baseline
LEARNING_LIMITS = {"train": 160, "dev": 120, "test": 120}
TYPE_ONLY = ("global_majority", "global_prior", "type_pair_majority", "type_pair_prior")


def learning_baselines(data: Path) -> Dict[str, Dict[str, float]]:
    """Text-blind baselines (tests/baselines.py) fitted on the training subset, per held-out split."""
    train = dialogre.load_dialogre(str(data / "train.json"), LEARNING_LIMITS["train"])
    held_out = {split: dialogre.load_dialogre(str(data / f"{split}.json"), LEARNING_LIMITS[split])
                for split in ("dev", "test")}
    return {split: dialogre_baselines(train, dialogues) for split, dialogues in held_out.items()}


def test_minilm_learns_beyond_the_argument_type_baselines(minilm_path, tmp_path):
    """Two epochs of BCE on 160 real training dialogues beat relations guessed from the argument types."""
    data = shared_file("dialogre", "train.json").parent
    limits = [f"--{split}_limit={n}" for split, n in LEARNING_LIMITS.items()]
    scores = dialogre.main(["--data_dir", str(data), "--model_name_or_path", minilm_path,
                            "--output_dir", str(tmp_path / "run"), "--loss", "bce", "--max_seq_length", "128",
                            *limits, "--no_f1c", "--num_train_epochs", "2", "--train_batch_size", "8",
                            "--learning_rate", "1e-4", "--classifier_lr", "1e-3", "--warmup_ratio", "0.1",
                            "--init_none_prior", "--seed", "0", "--no_progress"])
    for split, baselines in learning_baselines(data).items():
        bar = max(baselines[name] for name in TYPE_ONLY) + LEARNING_BAR[split]
        assert scores[f"{split}_f1"] > bar, (split, scores, baselines)
