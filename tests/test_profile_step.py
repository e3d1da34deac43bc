"""experiments/profile_step.py: the steady-step window, and a smoke run on the CPU."""

import json

from experiments import profile_step


def test_steady_step_is_one_step_of_launches_rotated_at_most_by_the_loop_exit():
    # prefill p0 p1 p2, ten steps of a b c, loop exit x0 x1; the shorter run has four steps
    step, steps = ["a", "b", "c"], 10
    ordered = ["p0", "p1", "p2"] + step * steps + ["x0", "x1"]
    outside = (3 + 4 * 3 + 2) - 4 * 3  # the shorter run's launches minus its steps'
    window = profile_step.steady_step(ordered, outside, steps, len(step))
    assert sorted(window) == sorted(step)
    assert window == ["c", "a", "b"]  # two exit kernels: rotated by two
    assert profile_step.steady_step(ordered, 3, steps, 3) == step  # no exit kernels


def test_smoke_run_writes_the_profile_and_the_optimised_hlo(tmp_path):
    profile_step.main(["--smoke", "--new", "8", "--prompt-len", "16", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "small_b1.json").read_text())
    assert result["steps"][0] > result["steps"][1] > 0
    # a CPU wall-clock difference of a few steps can come out either sign: no timing asserted
    assert isinstance(result["device_ms_per_step"], float) and result["method"] in ("wall", "cupti")
    assert "while" in (tmp_path / "small_b1_hlo.txt").read_text()


HLO = """\
%fused_reduce.7 (param_0: f32[8]) -> f32[] {
  %reduce.1 = f32[] reduce(%param_0, %c), metadata={op_name="jit(f)/while/body/verify_forward/layer_0/reduce_sum"}
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %input_reduce_fusion.7 = f32[] fusion(%x), kind=kInput, calls=%fused_reduce.7, metadata={scheduling_name="input_reduce_fusion.7"}
  %loop_add_fusion.2 = f32[8] fusion(%x), kind=kLoop, calls=%fused_add.2, metadata={op_name="jit(f)/while/body/commit/add"}
  %wrapped_not = pred[] fusion(%y), kind=kLoop, calls=%wrapped_not_computation, metadata={op_name="jit(f)/while/body/not"}
}
"""  # noqa: E501


def test_kernels_are_attributed_to_the_loop_phase_their_hlo_names():
    phases = profile_step.instruction_phases(HLO)
    # own metadata; metadata found inside the called computation; a scope outside PHASES
    assert phases["loop_add_fusion_2"] == "commit"
    assert phases["input_reduce_fusion_7"] == "verify_forward"
    assert phases["wrapped_not"] == "other"
    step = [("input_reduce_fusion_7", 2.0), ("loop_add_fusion_2", 1.0), ("entry_mosaic", 5.0),
            ("input_reduce_fusion_7", 2.5)]  # fmt: skip
    assert profile_step.by_phase(step, phases) == {
        "entry_mosaic": {"kernels": 1, "us": 5.0},  # no instruction of that name: its own
        "verify_forward": {"kernels": 2, "us": 4.5},
        "commit": {"kernels": 1, "us": 1.0},
    }


def test_a_speculative_smoke_profile_names_the_draft_phase(tmp_path):
    args = ["--smoke", "--drafter", "self", "--depth", "2", "--new", "8", "--prompt-len", "16"]
    profile_step.main([*args, "--out", str(tmp_path)])
    hlo = (tmp_path / "small_b1_self_chain2_hlo.txt").read_text()
    phases = set(profile_step.instruction_phases(hlo).values())
    assert {"draft", "verify_forward", "commit"} <= phases


def test_phase_means_use_every_launch_of_both_runs():
    phases = {"a": "draft", "b": "commit"}
    full = [("p", 9.0)] + [("a", 2.0)] * 6 + [("b", 4.0)]  # one flush-like kernel in 6 steps
    half = [("p", 9.0)] + [("a", 2.0)] * 2
    means = profile_step.mean_by_phase(full, half, 4, phases)
    assert means == {"draft": {"kernels": 1.0, "us": 2.0}, "commit": {"kernels": 0.25, "us": 1.0}}


def test_a_quantspec_profile_without_cupti_records_its_mode_and_tokens(tmp_path):
    args = ["--smoke", "--wall", "--kv-cache", "int8-hierarchical", "--drafter", "quantspec"]
    args += ["--depth", "3", "--new", "8", "--prompt-len", "16", "--out", str(tmp_path)]
    profile_step.main(args)
    result = json.loads((tmp_path / "small_b1_quantspec_chain3_int8kv.json").read_text())
    assert result["method"] == "wall" and result["kv_cache"] == "int8-hierarchical"
    digests = result["history_sha256"]
    assert len(digests) == 2 and all(len(d) == 16 for d in digests)
