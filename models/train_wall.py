"""The Wall recipe of `train_wm.py` (kept so models/wall/README.md's commands reproduce the shipped
model): the same trainer with Wall's default work folder, data/train_wall."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_wm import main  # noqa: E402

if __name__ == "__main__":
    main(default_work="data/train_wall")
