"""Super-Natural-Instructions (Wang et al., 2022) in the Tk-Instruct format nanoT5 fine-tunes on: the task
definition and 2 positive examples, then the instance (``def_pos_2``); source 1024 / target 128 tokens, at most 100
instances per task, English tasks of the ``splits/default`` lists.

``data_dir`` is a clone of https://github.com/allenai/natural-instructions (``tasks/*.json``,
``splits/default/{train,test}_tasks.txt``). The prompt text follows Tk-Instruct's ``ni_collator.py`` exactly;
truncation to 1024 tokens happens in the fine-tuning collator. ``validation`` draws from the test tasks, as the
benchmark has no separate validation split.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from leanformer.errors import UserError
from leanformer.finetune_tasks.example import Example


def _end(text: str) -> str:
    return text if text and text[-1] in string.punctuation else text + "."


def format_source(task: dict, instance_input: str, num_pos: int = 2) -> str:
    """Tk-Instruct's ``def_pos_2`` prompt: definition, ``num_pos`` positive examples, then the input."""
    definition = task["Definition"][0] if isinstance(task["Definition"], list) else task["Definition"]
    out = "Definition: " + _end(definition.strip()) + "\n\n"
    for i, ex in enumerate(task.get("Positive Examples", [])[:num_pos]):
        out += _end(f" Positive Example {i + 1} -\nInput: {ex['input'].strip()}") + "\n"
        out += _end(f" Output: {ex['output'].strip()}") + "\n"
    return out + _end(f"Now complete the following example -\nInput: {instance_input.strip()}") + "\nOutput: "


def load_natural_instructions(data_dir: str, split: str, max_examples: int | None = None, seed: int = 0,
                              max_per_task: int = 100, num_pos: int = 2) -> list[Example]:
    root = Path(data_dir)
    list_file = root / "splits" / "default" / ("train_tasks.txt" if split == "train" else "test_tasks.txt")
    if not list_file.is_file():
        raise UserError(f"{list_file} not found; data_dir must be a clone of allenai/natural-instructions")
    rng = random.Random(seed)
    out: list[Example] = []
    for name in list_file.read_text().split():
        path = root / "tasks" / f"{name}.json"
        if not path.is_file():
            raise UserError(f"task file {path} listed in {list_file.name} is missing")
        task = json.loads(path.read_text(encoding="utf-8"))
        instances = task["Instances"]
        if split == "train":
            instances = rng.sample(instances, min(max_per_task, len(instances)))
        else:
            instances = instances[:max_per_task]
        out.extend(Example(format_source(task, ins["input"], num_pos), tuple(ins["output"])) for ins in instances)
    rng.shuffle(out)
    return out[:max_examples] if max_examples else out
