"""The file names a run, a checkpoint and a dataset are made of.

Kept apart from the modules that write them (checkpoint.py loads torch) so that the CLI can
recognise these files, e.g. to refuse an output path that would overwrite one, without paying
for torch at start-up.
"""

import re

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
HISTORY_CSV = "history.csv"
BEST_DIR = "best"
BEST_POINTER = "best.json"
# Written by Ray Train beside the checkpoints: which of them Ray restores on a restart.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
LOCK_FILE = "run.lock"
# A run's checkpoint folders: checkpoint_epoch_NNNN, numbered by the epochs they finished.
CHECKPOINT_RE = re.compile(r"^checkpoint_epoch_(\d+)$")
MANIFEST_FILE = "manifest.json"
# A run's TensorBoard event files, copied there after every epoch.
TENSORBOARD_DIR = "tensorboard"

# What a checkpoint or run folder holds at its top level, and a dataset at its own.
RUN_FILES = (STATE_FILE, CONFIG_FILE, HISTORY_FILE, HISTORY_CSV, BEST_POINTER, RAY_SNAPSHOT,
             LOCK_FILE)
DATASET_FILES = (MANIFEST_FILE,)
