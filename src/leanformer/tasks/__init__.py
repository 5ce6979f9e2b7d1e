"""The long-context task suite: seeded generators with a target token length, and scorers.

``TASKS`` maps each task name to its class; ``TASKS[name]()`` builds it with default parameters (keyword
arguments change them). ``task.generate(tokenizer, length, seed)`` returns a :class:`Sample` whose prompt holds
95-100% of ``length`` tokens of ``tokenizer`` (any object with ``encode``/``decode``), with the question before and
after the context; ``task.score(prediction, sample)`` is in [0, 1] (an empty or unparsable answer scores 0).
Answers are requested as ``<answer>...</answer>``; see :mod:`leanformer.tasks.base` for the parser.
"""

from leanformer.tasks.base import Sample, Task
from leanformer.tasks.common_words import CommonWords
from leanformer.tasks.niah import NIAH
from leanformer.tasks.qa import QA
from leanformer.tasks.story_filtering import StoryFiltering
from leanformer.tasks.story_multihop import StoryMultihop
from leanformer.tasks.story_retrieval import StoryRetrieval
from leanformer.tasks.variable_tracking import VariableTracking

TASKS: dict[str, type[Task]] = {
    "niah": NIAH,
    "variable_tracking": VariableTracking,
    "common_words": CommonWords,
    "qa": QA,
    "story_retrieval": StoryRetrieval,
    "story_multihop": StoryMultihop,
    "story_filtering": StoryFiltering,
}


def get_task(name: str, **params) -> Task:
    """Build task ``name`` with ``params``; a clear error for an unknown name."""
    from leanformer.errors import UserError

    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    try:
        return TASKS[name](**params)
    except TypeError as e:
        raise UserError(f"task {name!r}: bad parameters {params}: {e}") from None


__all__ = ["TASKS", "Task", "Sample", "get_task", "NIAH", "VariableTracking", "CommonWords", "QA",
           "StoryRetrieval", "StoryMultihop", "StoryFiltering"]
