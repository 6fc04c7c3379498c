"""The README's Python snippet runs as written."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_python_snippet_runs_as_written():
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert snippets, "the README has no Python snippet"
    namespace: dict = {}
    exec(compile(snippets[0], "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 4, 256)
    assert [len(t) for t in namespace["new_tokens"]] == [16, 16]
    assert namespace["result"].tokens == namespace["new_tokens"]  # greedy: the same tokens twice
