"""The machinery every task shares, one concern per module; tasks (train.py, dialogre.py, goemotions.py) import the
modules they use, and `predict.py` only what loads a model (`engine.checkpoints`, `engine.inference`).

    engine.task         the Task contract (its lifecycle), Split, Outputs, the shared flags, the loss from flags
    engine.runner       run(task, argv): one run from flags to scores.json, start-up settings in one place
    engine.trainer      the Trainer: optimizer, schedule, accumulation, DDP, evaluations, best.pt, last.pt, resume
    engine.inference    batched, length-sorted prediction of a task's outputs, sharded over ranks
    engine.checkpoints  the encoder, checkpoints and the model folder (save_pretrained, load_pretrained)
    engine.rundir       the run directory: args.json, metrics.jsonl, train.log, curves.png
    engine.distributed  process group, ranks, barriers, gathering, RNG states
"""
