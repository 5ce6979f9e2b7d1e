"""The guides in ``docs/`` run: every fenced ```` ```python ```` block of a guide is executed, so an example that
no longer matches the code fails here instead of misleading a reader.

Conventions a guide follows:

- The blocks of one guide run in order in one namespace, like a notebook: a later block may use what an earlier one
  defined. Each guide starts from a fresh namespace.
- They run on the CPU in a fresh temporary directory that holds a link ``configs`` to the repository's
  ``configs/``, so a guide refers to presets as ``configs/...`` (as a reader at the repository root would) and
  whatever it writes stays out of the repository.
- A block whose first line is a comment starting with ``# not run`` (followed by the reason, e.g.
  ``# not run: needs a CUDA GPU``) is shown to readers but only compiled here, never executed: for examples that
  need a GPU, a download or minutes of work. Other languages (```` ```bash ````, ```` ```yaml ````) are not run.
- Examples stay tiny (CPU, a few seconds each), since the whole suite runs on 2 cores.

The sparse-attention guide also documents every parameter of every method with its default; a test below keeps
those tables equal to the methods' ``Params`` dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = "# not run"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```` ```python ```` block of a Markdown text."""
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in FENCE.finditer(text)]


def test_blocks_are_found_and_marked_ones_skipped():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\n# not run: GPU\ny = x\n```\n"
    blocks = python_blocks(text)
    assert [(n, code.splitlines()[0]) for n, code in blocks] == [(3, "x = 1"), (10, "# not run: GPU")]
    assert [code.startswith(NOT_RUN) for _, code in blocks] == [False, True]


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_guide_examples_run(doc, tmp_path, monkeypatch):
    blocks = python_blocks(doc.read_text())
    if not blocks:
        pytest.skip(f"{doc.name} has no python examples")
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{doc.stem.replace('-', '_')}"}
    for line, code in blocks:
        compiled = compile(code, f"{doc.relative_to(ROOT)}:{line}", "exec")
        if code.startswith(NOT_RUN):
            continue
        exec(compiled, namespace)  # noqa: S102 - the guide's own example, run as a reader would


def _documented_params(text: str, section: str, method: str) -> dict[str, str]:
    """``{parameter: default}`` from the table under ``### `method``` inside ``## section``."""
    part = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    body = part.split(f"\n### `{method}`", 1)[1].split("\n### ", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", body, re.M))


def _literal(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_sparse_guide_lists_every_parameter_with_its_default():
    from leanformer.sparse.registry import DECODE_METHODS, PREFILL_METHODS

    text = (ROOT / "docs" / "sparse-attention.md").read_text()
    for section, registry in (("Prefill methods", PREFILL_METHODS), ("Decode methods", DECODE_METHODS)):
        for name, method in registry.items():
            fields = {f.name: _literal(f.default) for f in dataclasses.fields(method.Params)}
            assert _documented_params(text, section, name) == fields, f"{section}: {name}"


def test_every_guide_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [d.name for d in DOCS if f"docs/{d.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


if __name__ == "__main__":  # print the blocks a guide would run
    for doc in DOCS:
        for line, code in python_blocks(doc.read_text()):
            print(f"--- {doc.name}:{line}{' (not run)' if code.startswith(NOT_RUN) else ''}\n{code}")
