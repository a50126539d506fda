"""Stop strings: one criterion on every local path, memory independent of their length.

transformers' ``stop_strings`` builds per-token tables that grow with the strings: one streaming
request with a 900,000-character stop OOM-killed the server (a 20,000-character one added ~626
MB). Both ``LocalModel.generate`` and ``stream_local`` now use our ``StopStrings``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from llmapps.models.local import GenerationParams, load_local_model
    lm = load_local_model(sys.argv[1])
    stop = ["q" * int(sys.argv[2])]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    text = "".join(lm.stream("The news today", GenerationParams(max_new_tokens=4, stop=stop)))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kb": after - before, "text": text}))
    """
)


def _stream_rss(model: str, stop_chars: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(stop_chars)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_long_stop_string_costs_no_memory_when_streaming(tiny_instruct: str) -> None:
    long = _stream_rss(tiny_instruct, 200_000)
    # with transformers' stop_strings, 20,000 characters alone grew the process by ~626 MB
    assert long["grew_kb"] < 100 * 1024, long


def test_streaming_and_generate_cut_at_the_same_stop(tiny_instruct: str) -> None:
    from llmapps.models.local import GenerationParams, load_local_model

    lm = load_local_model(tiny_instruct)
    free = lm.generate(["The news today"], GenerationParams(max_new_tokens=24))[0].text
    words = free.split()
    if len(words) < 3:
        pytest.skip(f"the tiny model wrote too little to cut: {free!r}")
    stop = [words[2]]
    params = GenerationParams(max_new_tokens=24, stop=stop)
    cut = lm.generate(["The news today"], params)[0].text
    streamed = "".join(lm.stream("The news today", params))
    assert stop[0] not in cut and cut == streamed
