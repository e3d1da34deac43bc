"""`make demo` end to end (fewer timing repetitions): what it promises a new user, it prints."""

import experiments.demo as demo


def test_demo_states_expectations_chat_continuations_and_median_speedups(capsys, monkeypatch):
    monkeypatch.setattr(demo, "REPEATS", 2)
    demo.main()
    out = capsys.readouterr().out
    assert "held-out perplexity" in out and "What to expect" in out
    assert "through the chat template" in out and "greedy        -> " in out
    assert "medians of 2 runs" in out
    # speculative greedy rows agree with plain greedy, and every row reports tau and a speedup
    assert out.count("output == plain greedy") == 2
    assert out.count("speedup") >= 5
