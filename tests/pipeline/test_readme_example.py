"""The README's embedding example runs as written (on the session's tiny system)."""

from __future__ import annotations

import re

import pipeline


def test_readme_embedding_example_runs(repo_root, tiny_config, monkeypatch, capsys):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- embed-example:start -->\s*```python\n(.*?)```\s*<!-- embed-example:end -->", readme, re.S)
    assert block, "README lost its marked embedding example"
    code = block.group(1)
    assert 'load_config("tiny")' in code and "build_query_engine" in code
    # the example names the tiny profile; here it gets the session's tiny system instead
    monkeypatch.setattr(pipeline, "load_config", lambda *args, **kwargs: tiny_config)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[1] ") for line in out)
    assert "'retrieve'" in out[-1] and "'total'" in out[-1]
